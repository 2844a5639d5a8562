"""Optimizers and schedules: SGD, LARS, Adam or AdamW over two parameter groups; warm-up then cosine or steps for the
learning rate, and optionally a cosine weight-decay schedule (DINO's)."""

from __future__ import annotations

import math

import torch

from selfsup.config import OptimConfig
from selfsup.errors import SelfSupError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017), as SimCLR uses for large batches.

    Parameter groups with `lars=False` (biases, norm layers) take plain SGD steps.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if group["lars"]:
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d.mul_(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """SGD, LARS, Adam or AdamW; biases and norm-layer weights (1-d tensors) skip weight decay and LARS when
    configured."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if o.exclude_bias_norm and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay, "decayed": True},
              {"params": plain, "weight_decay": 0.0, "lars": False, "decayed": False}]
    groups = [g for g in groups if g["params"]]
    if o.name == "lars":
        return LARS(groups, lr=o.lr, momentum=o.momentum, eta=o.lars_eta)
    for g in groups:
        g.pop("lars", None)
    if o.name == "sgd":
        if o.nesterov and o.momentum <= 0:
            raise SelfSupError(f"optim.nesterov needs optim.momentum > 0, got {o.momentum}")
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=o.betas)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
    raise SelfSupError(f"unknown optimizer {o.name!r}; use sgd, lars, adam or adamw")


def lr_at(step: int, total: int, warmup: int, base: float, min_lr: float = 0.0,
          milestones: list[int] | None = None, gamma: float = 0.1) -> float:
    """Linear warm-up over `warmup` steps, then cosine from base to min_lr at `total`, or, given milestones
    (steps), base times gamma for every milestone passed."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if milestones is not None:
        return base * gamma ** sum(step >= m for m in milestones)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine(step: int, total: int, start: float, end: float) -> float:
    """start at step 0 to end at step `total` along a half cosine (momentum and weight-decay schedules)."""
    progress = min(1.0, step / max(1, total))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


class Schedule:
    """The run's learning rate at every step: optim's warm-up and cosine (or step) schedule over the whole run; and
    the weight decay, constant or (optim.weight_decay_end set) along a cosine over the whole run."""

    def __init__(self, o: OptimConfig, epochs: int, steps_per_epoch: int):
        if o.schedule not in ("cosine", "step"):
            raise SelfSupError(f"optim.schedule must be cosine or step, got {o.schedule!r}")
        self.o = o
        self.total = epochs * steps_per_epoch
        self.warmup = round(o.warmup_epochs * steps_per_epoch)
        self.milestones = [round(e * steps_per_epoch) for e in o.step_epochs] if o.schedule == "step" else None

    def __call__(self, step: int) -> float:
        return lr_at(step, self.total, self.warmup, self.o.lr, self.o.min_lr, self.milestones, self.o.gamma)

    def weight_decay(self, step: int) -> float:
        """The weight decay of the decayed parameter group at `step`."""
        o = self.o
        return o.weight_decay if o.weight_decay_end is None else cosine(step, self.total, o.weight_decay,
                                                                        o.weight_decay_end)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's lr (and the decayed group's weight decay) for `step`; returns the lr."""
        lr = self(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
            if self.o.weight_decay_end is not None and g.get("decayed", g["weight_decay"] > 0):
                g["weight_decay"] = self.weight_decay(step)
        return lr


__all__ = ["LARS", "build_optimizer", "lr_at", "cosine", "Schedule"]

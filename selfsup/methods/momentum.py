"""Momentum teachers: a copy of a network that follows the trained one as an exponential moving average (EMA).

DINO's teacher (and BYOL's target, MoCo's key encoder) is never trained by gradients: after every optimizer step its
weights move a fraction 1 - m of the way to the student's, with m raised along a cosine from its base value to 1
over the run (DINO: 0.996 -> 1). The teacher is a submodule of its method, so its weights are in the method's
state_dict: checkpoints keep it and `--resume` continues it exactly. Under DDP every process applies the same update
to the same all-reduced student weights, so the teachers stay equal without communication. Only parameters follow
the student: the teacher's batch-norm statistics are its own, from its own forward passes (as in the authors' code).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from selfsup.engine.optim import cosine

__all__ = ["momentum_teacher", "ema_update_", "momentum_at"]


def momentum_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of `student` (same weights, no gradients) to be moved by ema_update_."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter, in place."""
    t = list(teacher.parameters())
    s = [p.detach() for p in student.parameters()]
    if len(t) != len(s):
        raise ValueError(f"teacher has {len(t)} parameters, student {len(s)}: not a copy of it")
    # The authors' two operations (mul, then add (1 - m) * student), batched over all parameters.
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)


def momentum_at(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """The EMA momentum at optimizer step `step` of `total_steps`: base at the start, along a cosine to final."""
    return cosine(step, total_steps, base, final)

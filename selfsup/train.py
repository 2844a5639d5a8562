"""The one training loop for every method: single process or DDP under torchrun.

Data flows one way: dataset indices -> uint8 batch on the device -> method.training_step (augment,
backbone, head, loss) -> optimizer. The whole training split lives on the device as uint8, so there are
no DataLoader workers. Randomness is re-seeded from (seed, epoch, rank) at every epoch start, which is
what makes `--resume` continue a run exactly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from selfsup.augment import synthesize
from selfsup.config import Config, config_to_dict, save_config
from selfsup.data import ImageArray, imbalanced, load_source, subset
from selfsup.distributed import DistInfo, init_distributed
from selfsup.errors import SelfSupError
from selfsup.eval import eval_splits, run_knn
from selfsup.exemplar import load_seeds, sample_seeds, save_seeds
from selfsup.methods import LABELLING, METHODS, Batch, EpochContext, Method, build_method
from selfsup.methods.supervised import read_labels_csv

CHECKPOINT = "checkpoint.pt"
SEEDS = "seeds.npz"  # exemplar runs: the seed patches, sampled once and reused on --resume


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
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
                    d.mul_(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD, LARS or Adam; biases and norm-layer weights (1-d tensors) skip weight decay and LARS when configured."""
    o = cfg.optim
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if o.exclude_bias_norm and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": plain, "weight_decay": 0.0, "lars": False}]
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
    raise SelfSupError(f"unknown optimizer {o.name!r}; use sgd, lars or adam")


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


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(run_dir: Path) -> dict:
    """The run's last checkpoint, with a clear error when there is none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise SelfSupError(f"no checkpoint in {run_dir}; give the directory of a pretraining run")
    return torch.load(path, map_location="cpu", weights_only=True)


def prepare_run_dir(out: Path, resume: bool, force: bool, create: bool = True) -> None:
    """Refuse to overwrite an existing run unless --force; --resume needs a checkpoint to continue from.

    Every process checks (so all raise the same error); only the one with `create` touches the disk.
    """
    has_run = out.exists() and any(out.iterdir())
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise SelfSupError(f"cannot resume: no {CHECKPOINT} in {out}")
        return
    if has_run and not force:
        raise SelfSupError(f"run directory {out} already exists; pass --resume to continue it or --force to overwrite it")
    if not create:
        return
    if has_run:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 9_973 + rank * 7_919) % (2**63)


def _targets(cfg: Config, data) -> torch.Tensor:
    """What `supervised` learns: an exported labels file (label transfer), else the source's own labels."""
    if cfg.data.labels_file:
        return read_labels_csv(cfg.data.labels_file, len(data))
    if data.labels is None:
        raise SelfSupError(f"method supervised needs labels: {cfg.data.source} has none; set data.labels_file=labels.csv")
    return torch.from_numpy(np.asarray(data.labels))[None]


def source_images(cfg: Config) -> ImageArray:
    """The training source's split, made imbalanced or cut to data.num_images when asked (nothing synthesised yet)."""
    d = cfg.data
    data = load_source(d.source, d.split, d.root, d.download, d.size)
    if d.imbalance:
        data = imbalanced(data, d.imbalance, cfg.seed)
    if d.num_images:
        data = subset(data, d.num_images, cfg.seed)
    return data


def training_data(cfg: Config) -> tuple[ImageArray, bool]:
    """What a run trains on, and whether every batch is synthesised afresh from it.

    The source split, made imbalanced or cut to data.num_images when asked. A source with fewer images than
    a batch (one photograph) is augmented into new images: fresh ones at every step, except for methods that
    keep something per training sample, which need the same images every epoch; for them
    data.samples_per_epoch images are synthesised once, deterministically under the seed.
    """
    d = cfg.data
    data = source_images(cfg)
    synth = d.synthesize if d.synthesize is not None else len(data) < cfg.batch_size
    if synth and not d.samples_per_epoch:
        raise SelfSupError(f"{d.source} holds {len(data)} image(s), fewer than a batch; set data.samples_per_epoch "
                           "(e.g. 50000) to say how many synthesised images make an epoch")
    if cfg.method not in LABELLING:
        return data, synth
    if not synth:
        if d.samples_per_epoch:
            raise SelfSupError(f"{cfg.method} keeps one label per training image; it cannot resample real images "
                               "(unset data.samples_per_epoch)")
        return data, False
    images = torch.from_numpy(np.array(data.images))
    gen = torch.Generator().manual_seed(cfg.seed)
    made = [synthesize(images, d.single_image, gen, min(4096, d.samples_per_epoch - i))
            for i in range(0, d.samples_per_epoch, 4096)]
    return ImageArray(f"{data.name}[{d.samples_per_epoch} synthesised]", torch.cat(made).numpy(), None, []), False


def seed_data(data: ImageArray, cfg: Config, path: Path, resume: bool, save: bool) -> ImageArray:
    """Exemplar-CNN's training images: the context windows of the run's seed patches (sampled, or read on resume)."""
    e = cfg.exemplar
    if resume:
        seeds = load_seeds(path)
    else:
        size = e.image_size or max(64, *data.images.shape[1:3])  # CIFAR is upsampled to 64; STL-10 stays at 96
        seeds = sample_seeds(data.images, e.num_seeds, e.patch, size, cfg.seed)
        if save:
            save_seeds(seeds, path)
    return ImageArray(f"{data.name}-seeds", seeds.context, None, [])


def _unwrap(model: torch.nn.Module) -> Method:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def pretrain(cfg: Config, out: str | Path, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Pretrain `cfg.method` into run directory `out`; returns the last epoch's metrics."""
    out = Path(out)
    info = init_distributed(cfg.device)
    if cfg.batch_size % info.world_size:
        raise SelfSupError(f"batch_size {cfg.batch_size} must divide evenly over {info.world_size} processes")
    if cfg.optim.schedule not in ("cosine", "step"):
        raise SelfSupError(f"optim.schedule must be cosine or step, got {cfg.optim.schedule!r}")
    if cfg.epochs < 1:
        raise SelfSupError(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.method == "exemplar" and cfg.exemplar.patch != cfg.model.input_size:
        raise SelfSupError(f"exemplar.patch ({cfg.exemplar.patch}) must equal model.input_size ({cfg.model.input_size})")
    if cfg.method not in ("exemplar", "instance") and cfg.augment.size != cfg.model.input_size:
        raise SelfSupError(f"augment.size ({cfg.augment.size}) must equal model.input_size ({cfg.model.input_size})")
    if cfg.sync_bn and info.device.type != "cuda":
        raise SelfSupError("sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); unset it for gloo runs")
    prepare_run_dir(out, resume, force, create=info.is_main)
    if info.enabled:
        dist.barrier()
    device = info.device
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda)
    channels_last = cfg.channels_last in ("auto", "true")  # measured faster for every backbone on CPU too

    data, synth = training_data(cfg)
    if cfg.method == "exemplar":  # the seed patches (with their context) become the training images, one class each
        data = seed_data(data, cfg, out / SEEDS, resume, info.is_main)
    images = torch.from_numpy(np.array(data.images)).to(device)  # read the memory map into (device) memory once
    n_data = len(data)

    torch.manual_seed(cfg.seed)
    method = build_method(cfg, n_data, _targets(cfg, data) if cfg.method == "supervised" else None).to(device)
    resample = bool(cfg.data.samples_per_epoch) and cfg.method not in LABELLING  # draw with replacement
    per_epoch = cfg.data.samples_per_epoch if resample else n_data * method.passes_per_epoch
    steps_per_epoch = per_epoch // cfg.batch_size
    if steps_per_epoch == 0:
        raise SelfSupError(f"batch_size {cfg.batch_size} is larger than the {per_epoch} samples per epoch; lower it or set data.samples_per_epoch")
    if not resume:
        method.on_train_start(images)
    method.channels_last = channels_last
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg)
    start_epoch = 0
    if resume:
        ckpt = load_checkpoint(out)
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"]
    if cfg.compile:
        method.backbone = torch.compile(method.backbone)
    model: torch.nn.Module = method
    if cfg.sync_bn and info.enabled:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if info.enabled:
        # No buffer broadcast: per-sample buffers (labels, memory bank) are kept equal on every rank by the methods
        # themselves, and sending them from rank 0 on every step would cost a bank-sized copy per step.
        model = torch.nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if cuda else None,
                                                          broadcast_buffers=False)

    writer = None
    if info.is_main:
        save_config(cfg, out / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
    # An eval source the user named must load; the training source is only used when it has labelled splits.
    splits = eval_splits(cfg, required=cfg.eval.source is not None)

    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.optim.warmup_epochs * steps_per_epoch)
    milestones = [round(e * steps_per_epoch) for e in cfg.optim.step_epochs] if cfg.optim.schedule == "step" else None
    local_bs = cfg.batch_size // info.world_size
    t_start = time.time()
    last: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        _unwrap(model).on_epoch_start(EpochContext(epoch, cfg.epochs, images, device, optimizer, cfg.seed))
        order_gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        order = _unwrap(model).epoch_order(per_epoch, order_gen)
        if order is None:
            order = (torch.randint(n_data, (per_epoch,), generator=order_gen) if resample
                     else torch.cat([torch.randperm(n_data, generator=order_gen) for _ in range(per_epoch // n_data)]))
        order = order.to(device)
        aug_gen = torch.Generator(device=device).manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))
        loss_sum = torch.zeros((), device=device)
        bad = torch.zeros((), dtype=torch.bool, device=device)
        t0 = time.time()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and info.is_main),
                   leave=False, dynamic_ncols=True)
        for step in range(steps_per_epoch):
            gstep = epoch * steps_per_epoch + step
            lr = lr_at(gstep, total_steps, warmup, cfg.optim.lr, cfg.optim.min_lr, milestones, cfg.optim.gamma)
            for g in optimizer.param_groups:
                g["lr"] = lr
            start = step * cfg.batch_size + info.rank * local_bs
            idx = order[start:start + local_bs]
            batch_images = synthesize(images, cfg.data.single_image, aug_gen, local_bs) if synth else images.index_select(0, idx)
            batch = Batch(batch_images, idx, aug_gen)
            with torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext():
                outputs = model(batch)
            loss = outputs["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            detached = loss.detach().float()
            loss_sum += detached
            bad |= ~torch.isfinite(detached)
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps_per_epoch:
                if info.enabled:  # every rank must stop together, whichever saw the NaN
                    flag = bad.float()
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    bad = flag.bool()
                if bad.item():
                    raise SelfSupError(
                        f"loss became {detached.item()} at epoch {epoch + 1}, step {step + 1}; stopped, and the last good "
                        f"checkpoint (epoch {epoch}) is kept in {out} — lower optim.lr or check the data")
                if writer:
                    for key, value in outputs.items():
                        writer.add_scalar(f"train/{key}", float(value.detach()), gstep)
                    writer.add_scalar("train/lr", lr, gstep)
                bar.set_postfix(loss=f"{detached.item():.4f}", lr=f"{lr:.3g}")
            bar.update(1)
        bar.close()
        if info.enabled:
            dist.all_reduce(loss_sum)
            loss_sum /= info.world_size
        seconds = time.time() - t0
        last = {"epoch": epoch + 1, "loss": loss_sum.item() / steps_per_epoch, "lr": lr, "epoch_seconds": round(seconds, 3),
                "images_per_second": round(steps_per_epoch * cfg.batch_size / seconds, 1)}
        budget_hit = cfg.max_minutes is not None and (time.time() - t_start) / 60 >= cfg.max_minutes
        if info.enabled:  # rank 0's clock decides, so all ranks stop after the same epoch
            flag = torch.tensor(float(budget_hit), device=device)
            dist.broadcast(flag, 0)
            budget_hit = bool(flag.item())
        final = epoch + 1 == cfg.epochs or budget_hit
        if info.is_main and splits and ((cfg.eval.knn_every and (epoch + 1) % cfg.eval.knn_every == 0) or final):
            last["knn_top1"] = round(run_knn(_unwrap(model).backbone, cfg, device, splits), 2)
        if info.is_main:
            save_atomic({"epoch": epoch + 1, "method": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                         "config": config_to_dict(cfg)}, out / CHECKPOINT)
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(last) + "\n")
            for key, value in last.items():
                if key != "epoch":
                    writer.add_scalar(f"epoch/{key}", value, epoch + 1)
            writer.flush()
            msg = " ".join(f"{k}={v}" for k, v in last.items())
            tqdm.write(msg) if progress else None
        if info.enabled:
            dist.barrier()
        if budget_hit and epoch + 1 < cfg.epochs:
            if info.is_main and progress:
                tqdm.write(f"stopping after epoch {epoch + 1}: max_minutes={cfg.max_minutes} reached (resume with --resume)")
            break
    if info.is_main:  # a picture of what the method learnt to do, on the first few training images
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        shown = synthesize(images, cfg.data.single_image, gen, 8) if synth else images[:8]
        grid = _unwrap(model).sample_grid(shown, gen)
        if grid is not None:
            Image.fromarray(grid).save(out / "samples.png")
    if writer:
        writer.close()
    return last


def load_backbone(run_dir: str | Path, device: torch.device | str = "cpu", random_init: bool = False) -> tuple[Method, Config]:
    """Rebuild a run's method from its checkpoint (for evaluation and export).

    With random_init, the same architecture at the initialisation the run started from (a baseline).
    """
    from selfsup.config import load_config

    ckpt = load_checkpoint(Path(run_dir))
    cfg = load_config(overrides=ckpt["config"])
    state = ckpt["method"]
    torch.manual_seed(cfg.seed)  # as in pretrain, so random_init is the run's own starting point
    method = build_method(cfg, METHODS[cfg.method].num_samples_in(state), state.get("labels"))
    if not random_init:
        method.load_state_dict(ckpt["method"])
    return method.to(device).eval(), cfg


__all__ = ["pretrain", "load_backbone", "load_checkpoint", "build_optimizer", "lr_at", "LARS", "save_atomic", "DistInfo"]

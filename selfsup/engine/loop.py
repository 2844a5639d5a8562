"""`selfsup.fit`: the one training loop for every method, single process or DDP under torchrun.

Data flows one way: dataset indices -> uint8 batch on the device -> method.training_step (augment, backbone,
head, loss) -> optimizer. A training split that fits data.device_budget_gb lives on the device as uint8; a larger
one is streamed from the decode cache a few batches ahead by a background thread (selfsup.data.stream), with the
same batches, so there are no DataLoader workers either way. Randomness is re-seeded from (seed, epoch, rank) at
every epoch start, which is what makes a resumed run continue exactly.

The loop in named steps: open the run (checks, processes, the run directory), prepare the data and the method,
set up the model (device, memory format, optimizer, resumed state, DDP), then per epoch `train_one_epoch` and
`end_of_epoch` (kNN monitor, checkpoint, metrics, time budget), and `finish` (the run's picture).
"""

from __future__ import annotations

import copy
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from selfsup.augmentation import synthesize
from selfsup.config import Config, check_config, config_to_dict, load_run_config, save_config
from selfsup.data.stream import Images, Prefetcher, device_budget, placed
from selfsup.distributed import DistInfo, init_distributed
from selfsup.engine.checkpoint import (
    CHECKPOINT,
    CLUSTERS,
    CONFIG,
    CURVES,
    append_metrics,
    check_run_dir,
    foreign_files,
    keep_checkpoint,
    load_checkpoint,
    move_aside,
    read_metrics,
    require_checkpoint,
    restore_aside,
    save_checkpoint,
    write_metrics,
)
from selfsup.engine.data import source_images, training_data
from selfsup.engine.lock import RunLock
from selfsup.engine.logs import Loggers, check_loggers, open_loggers
from selfsup.engine.optim import Schedule, build_optimizer
from selfsup.errors import SelfSupError, warn
from selfsup.eval import eval_splits, run_knn
from selfsup.methods.base import Batch, EpochContext, Method, RunInfo
from selfsup.methods.registry import build_method, get_method
from selfsup.nets import model_config_of
from selfsup.progress import Progress, say, set_interval, shown


@dataclass
class Run:
    """Where and how a run trains: its config, directory (None: nothing written), processes and options."""

    cfg: Config
    out: Path | None
    info: DistInfo
    resume: bool
    progress: bool
    logs: Loggers | None = None  # TensorBoard / W&B (rank 0 of a run with a directory)
    started: float = field(default_factory=time.time)
    lock: RunLock | None = None  # held by the process that writes the run directory
    aside: Path | None = None  # the old run --force moved aside, deleted once this run has a checkpoint
    saved_epoch: int | None = None  # the epoch of the newest checkpoint of this run (None: none written)
    history: list[dict] = field(default_factory=list)  # every epoch's metrics line, kept in the checkpoint too
    step_rows: list[dict] = field(default_factory=list)  # this epoch's per-step rows (log_steps), written with it
    config_saved: bool = False  # config.yaml written (on resume: only after an epoch succeeded with the config)
    damaged_last: bool = False  # resumed from checkpoint.prev.pt because checkpoint.pt was damaged or missing

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0 of a run with a directory)."""
        return self.info.is_main and self.out is not None

    @property
    def bf16(self) -> bool:
        p = self.cfg.precision
        return p == "bf16" or (p == "auto" and self.device.type == "cuda")

    def kept(self) -> str:
        """What a stopped run leaves to resume from (for the stop message)."""
        if self.out is None:
            return "nothing was saved (no run directory)"
        if self.saved_epoch:
            return f"the last good checkpoint (epoch {self.saved_epoch}) is kept in {self.out}"
        return "no checkpoint was written"

    def note(self, message: str) -> None:
        """A line for the user on stderr (rank 0, when progress is shown)."""
        if self.progress:
            say(message)


@dataclass
class TrainData:
    """The training images (on the device, or streamed to it) and how an epoch walks them."""

    images: Images  # uint8 (N,H,W,3)
    synthesize: bool  # every batch made afresh from `images` by the single-image augmentation
    resample: bool  # indices drawn with replacement (samples_per_epoch of them)
    per_epoch: int
    steps_per_epoch: int

    def local_indices(self, cfg: Config, order: torch.Tensor, step: int, info: DistInfo) -> torch.Tensor:
        """This process's slice of the step's global batch of dataset indices."""
        local = cfg.batch_size // info.world_size
        start = step * cfg.batch_size + info.rank * local
        return order[start:start + local]

    def batches(self, cfg: Config, order: torch.Tensor, generator: torch.Generator, info: DistInfo,
                device: torch.device) -> Iterator[Batch]:
        """The epoch's batches in step order (this process's slice of each): gathered on the device, or read from the
        host ahead of time by a background thread when the images are streamed (only this process's rows)."""
        steps = range(self.steps_per_epoch)
        on_device = order.to(device)
        if self.synthesize:
            for step in steps:
                idx = self.local_indices(cfg, on_device, step, info)
                yield Batch(synthesize(self.images.tensor, cfg.data.single_image, generator, len(idx)), idx, generator)
        elif self.images.resident:
            for step in steps:
                idx = self.local_indices(cfg, on_device, step, info)
                yield Batch(self.images.gather(idx), idx, generator)
        else:
            host = order.cpu()
            rows = Prefetcher(self.images, [self.local_indices(cfg, host, step, info) for step in steps])
            try:
                for step, images in zip(steps, rows):
                    yield Batch(images, self.local_indices(cfg, on_device, step, info), generator)
            finally:
                rows.close()


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 9_973 + rank * 7_919) % (2**63)


def unwrap(model: torch.nn.Module) -> Method:
    """The method inside a DistributedDataParallel wrapper (or the method itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------ open the run


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, (list, tuple)):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def _data_paths(cfg: Config) -> list[Path]:
    """Every existing local file or folder the config names (data and eval sources and roots, a labels file, an
    imported module...): what --force must never delete. Any string value, or its part after `kind:`, counts."""
    paths = []
    for text in _strings(config_to_dict(cfg)):
        for candidate in {text, text.partition(":")[2]}:
            if candidate and ("/" in candidate or "." in candidate) and Path(candidate).expanduser().exists():
                paths.append(Path(candidate).expanduser())
    return paths


def _take_lock(out: Path, info: DistInfo) -> RunLock | None:
    """Rank 0 takes the run's lock; under torchrun every rank learns whether it did, so all stop together."""
    lock, error = None, None
    if info.is_main:
        try:
            lock = RunLock(out).acquire()
        except SelfSupError as e:
            error = e
    if info.enabled:
        flag = torch.tensor(float(error is not None), device=info.device)
        dist.broadcast(flag, 0)
        if flag.item() and error is None:
            raise SelfSupError(f"rank 0 could not take the lock of run directory {out} (its error says why)")
    if error is not None:
        raise error
    return lock


def _drop_lock(lock: RunLock | None) -> None:
    """Free the lock, and remove the directory it made when nothing else was written into it."""
    if lock is None:
        return
    lock.release()
    if lock.created_dir and lock.dir.is_dir() and not any(lock.dir.iterdir()):
        lock.dir.rmdir()


def open_run(cfg: Config, out: str | Path | None, resume: bool, force: bool, progress: bool) -> Run:
    """Check the config and the run directory, join the processes under torchrun, and take the run's lock (nothing
    but the lock is written yet)."""
    out = Path(out) if out is not None else None
    check_config(cfg)
    if resume and out is None:
        raise SelfSupError("resume needs the run directory (out=...) to continue from")
    Schedule(cfg.optim, cfg.epochs, 1)  # checks optim.schedule
    check_loggers(cfg.logger)
    info = init_distributed(cfg.device)
    if cfg.batch_size % info.world_size:
        raise SelfSupError(f"batch_size {cfg.batch_size} must divide evenly over {info.world_size} processes")
    if cfg.sync_bn and info.device.type != "cuda":
        raise SelfSupError("sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); unset it for gloo runs")
    lock = _take_lock(out, info) if out is not None else None
    if out is not None:
        try:
            check_run_dir(out, resume, force, _data_paths(cfg))  # every process checks, so all raise the same error
        except BaseException:
            _drop_lock(lock)
            raise
    if not resume and cfg.optim.warmup_epochs >= cfg.epochs:
        warn(f"optim.warmup_epochs ({cfg.optim.warmup_epochs:g}) >= epochs ({cfg.epochs}): the whole run warms up and "
             f"never reaches optim.lr; lower optim.warmup_epochs")
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return Run(cfg, out, info, resume, progress and info.is_main, lock=lock)


# ---------------------------------------------------------------------------------- prepare the data and method


def _record(cfg: Config, method: Method) -> None:
    """Make the run's config say what a given method object is (its section, augmentation, input size, backbone)."""
    cls = type(method)
    # A subclass that was not registered itself is not the method it derives from: a config cannot rebuild it (and
    # load_run needs it passed as method=), so its section is not written either.
    cfg.method = cls.__dict__.get("name") or cls.__qualname__
    if cls.__dict__.get("name"):
        cfg.method_sections[cfg.method] = method.cfg
    cfg.augment = method.aug
    cfg.model = model_config_of(method.backbone)
    cfg.model.input_size = method.data.input_size


def _record_import(cfg: Config, cls: type) -> None:
    """Add the module of a method registered outside selfsup to cfg.imports, so another process can rebuild it."""
    module = cls.__module__
    loaded = {Path(m).stem for m in cfg.imports if m.endswith(".py")} | set(cfg.imports)
    if cls.__dict__.get("name") and not module.startswith("selfsup.") and module != "__main__" and module not in loaded:
        cfg.imports.append(module)


def _samples(method: Method, count: int) -> int:
    """How many training samples the method was built for (its per-sample state), else `count`."""
    return (type(method).num_samples_in(method.state_dict()) or count) if method.per_sample_state else count


def prepare(method: Method | None, data, run: Run) -> tuple[Method, TrainData]:
    """The method (built from the config unless given) and its training data on the device. The run directory is
    created after the config, data and method checks, and before prepare_data (which may save into it)."""
    cfg = run.cfg
    if method is not None:
        _record(cfg, method)
    cls = type(method) if method is not None else get_method(cfg.method)
    _record_import(cfg, cls)
    arr = source_images(cfg, data)
    arr, synth = training_data(cfg, arr, cls.per_sample_state)
    if method is None:
        torch.manual_seed(cfg.seed)  # the run's initialisation (load_run(random_init=True) rebuilds it)
        method = build_method(cfg, cls.data_info(cfg, arr))
    resample = bool(cfg.data.samples_per_epoch) and not cls.per_sample_state  # draw with replacement
    expected = _samples(method, len(arr))  # Exemplar-CNN: its seeds, made by prepare_data below
    per_epoch = cfg.data.samples_per_epoch if resample else expected * method.passes_per_epoch
    if per_epoch < cfg.batch_size:
        raise SelfSupError(f"batch_size {cfg.batch_size} is larger than the {per_epoch} samples per epoch; lower it or "
                           "set data.samples_per_epoch")
    if run.writes and not run.resume:
        run.aside = move_aside(run.out)  # --force: the old run stays until this one has written a checkpoint
        if run.aside is not None:
            run.note(f"selfsup: the old run in {run.out} is moved into {run.aside} until this run has written its "
                     "first checkpoint")
    if run.info.enabled:
        dist.barrier()
    arr = method.prepare_data(arr, RunInfo(run.out, run.resume, run.info.is_main, cfg.seed))
    if method.per_sample_state and len(arr) != expected:
        raise SelfSupError(f"{type(method).__name__} was built for {expected} training samples but the data has "
                           f"{len(arr)}; build it with DataInfo(num_samples={len(arr)})")
    return method.to(run.device), TrainData(_placed(arr.images, synth, run), synth, resample, per_epoch,
                                            per_epoch // cfg.batch_size)


def _placed(host, synth: bool, run: Run) -> Images:
    """The training images on the device when they fit data.device_budget_gb (a source made into new images at
    every step always does: it is a handful), else left in the cache to be streamed batch by batch."""
    if synth:
        return Images(host, run.device, resident=True)
    images = placed(host, run.device, run.cfg.data.device_budget_gb)
    if not images.resident:
        budget = device_budget(run.cfg.data.device_budget_gb, run.device)
        run.note(f"selfsup: the training images ({host.nbytes / 2**30:.2f} GB) exceed the device budget of "
                 f"{budget / 2**30:.2f} GB (data.device_budget_gb); streaming them from "
                 f"{'the decode cache' if getattr(host, 'filename', None) else 'host memory'} a few batches ahead")
    return images


def setup_model(method: Method, run: Run, data: TrainData) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
    """The model to step (DDP-wrapped under torchrun), its optimizer, and the first epoch (after a resumed one)."""
    cfg = run.cfg
    if not run.resume:
        method.on_train_start(data.images)
    method.channels_last = cfg.channels_last in ("auto", "true")  # measured faster for every backbone on CPU too
    if method.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg.optim)
    start_epoch = 0
    if run.resume:
        ckpt = load_checkpoint(run.out)
        try:
            method.load_state_dict(ckpt["method"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise SelfSupError(f"the checkpoint in {run.out} does not fit the model this config builds "
                               f"({_first_detail(e)}); resume with the run's own model and method settings") from None
        start_epoch = run.saved_epoch = ckpt["epoch"]
        run.damaged_last = ckpt["file"] != CHECKPOINT  # then the next save must not keep it as the previous one
        # The history in the checkpoint rewrites metrics.jsonl: a line lost to a kill between checkpoint and metrics
        # comes back, a partial one goes, and lines of epochs after a fallen-back-to checkpoint go too.
        run.history = ckpt.get("history") or [m for m in read_metrics(run.out) if m.get("epoch", 0) <= start_epoch]
        if run.writes:
            write_metrics(run.out, run.history)
    if cfg.compile:
        method.backbone.compile()  # in place: the checkpoint keeps the backbone's own key names
    model: torch.nn.Module = method
    if cfg.sync_bn and run.info.enabled:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if run.info.enabled:
        # No buffer broadcast: per-sample buffers (labels, memory bank) are kept equal on every rank by the methods
        # themselves, and sending them from rank 0 on every step would cost a bank-sized copy per step.
        cuda = run.device.type == "cuda"
        model = torch.nn.parallel.DistributedDataParallel(method, device_ids=[run.device.index] if cuda else None,
                                                          broadcast_buffers=False)
    return model, optimizer, start_epoch


def _first_detail(error: Exception) -> str:
    """The informative line of a load_state_dict error (its first line only names the module)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__)[:300]


def start_logs(run: Run, method: Method, data: TrainData) -> None:
    """The run's first line (what trains on what, where), the resolved config.yaml (a resumed run's only after an
    epoch succeeded with it) and the loggers with the config (rank 0 of a run with a directory)."""
    cfg, info = run.cfg, run.info
    images = data.images
    size = f"{images.shape[1]}x{images.shape[2]}" if images.dim() == 4 else "?"
    where = f"run {run.out} (config {run.out / CONFIG})" if run.out is not None else "run without a directory"
    run.note(f"selfsup: {'resuming' if run.resume else 'starting'} {cfg.method} {where} on {run.device}, "
             f"{info.world_size} process{'es' if info.world_size > 1 else ''}; {len(images):,} training "
             f"image{'s' if len(images) != 1 else ''} of "
             f"{size} ({cfg.data.source}{'' if images.resident else ', streamed'}), {data.per_epoch:,} samples per "
             f"epoch in {data.steps_per_epoch} steps of {cfg.batch_size}, {cfg.epochs} epochs")
    # The loggers first (W&B may refuse to start: then nothing of this run is written), rank 0 only; under torchrun
    # every rank learns whether they opened, so all stop together.
    error = None
    if run.writes:
        try:
            run.logs = open_loggers(cfg.logger, run.out, config_to_dict(cfg), cfg.wandb, run.resume)
        except SelfSupError as e:
            error = e
    if info.enabled and run.out is not None:
        flag = torch.tensor(float(error is not None), device=run.device)
        dist.broadcast(flag, 0)
        if flag.item() and error is None:
            raise SelfSupError("rank 0 could not open the run's loggers (its error says why)")
    if error is not None:
        raise error
    if not run.writes:
        return
    if not run.resume:
        save_config(cfg, run.out / CONFIG)
        run.config_saved = True
        run.logs.config(config_to_dict(cfg))
        views = _views_grid(method, data, cfg)
        if views is not None:
            run.logs.image("train/augmented_views", views, 0)


def _views_grid(method: Method, data: TrainData, cfg: Config, count: int = 8):
    """Eight training images (first row) and two draws of the method's augmentation of each (a picture to check
    the augmentation by eye), from a generator of its own so that the run's random stream is untouched."""
    from selfsup.augmentation import augment_unit, resize, to_float
    from selfsup.report import image_rows

    gen = torch.Generator(device=data.images.device).manual_seed(cfg.seed)
    shown = (synthesize(data.images.tensor, cfg.data.single_image, gen, count) if data.synthesize
             else data.images[:count])
    if shown.dim() != 4 or shown.shape[-1] != 3:
        return None
    first = resize(to_float(shown), method.aug.size)
    return image_rows([first, *[augment_unit(shown, method.aug, gen) for _ in range(2)]])


# ---------------------------------------------------------------------------------------------------- an epoch


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, data: TrainData,
                    run: Run, epoch: int) -> dict:
    """One epoch of training steps; returns the epoch's metrics (mean loss over all processes, lr, speed)."""
    cfg, device, info = run.cfg, run.device, run.info
    method = unwrap(model)
    model.train()
    # Whatever an epoch draws from the global RNG is the same on resume as in one go: the hook's draws (the same on
    # every process too), then the steps' (dropout masks, per process).
    torch.manual_seed(_epoch_seed(cfg.seed, epoch))
    method.on_epoch_start(EpochContext(epoch, cfg.epochs, data.images, device, optimizer, cfg.seed))
    order_gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    order = method.epoch_order(data.per_epoch, order_gen)
    if order is None:
        n = len(data.images)
        order = (torch.randint(n, (data.per_epoch,), generator=order_gen) if data.resample
                 else torch.cat([torch.randperm(n, generator=order_gen) for _ in range(data.per_epoch // n)]))
    aug_gen = torch.Generator(device=device).manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))
    torch.manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))
    loss_sum = torch.zeros((), device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    t0 = time.time()
    steps = data.steps_per_epoch
    bar = Progress(steps, f"epoch {epoch + 1}/{cfg.epochs}", unit="img", per_step=cfg.batch_size,
                   enabled=run.progress)
    batches = data.batches(cfg, order, aug_gen, info, device)
    try:
        for step in range(steps):
            gstep = epoch * steps + step
            lr = schedule.apply(optimizer, gstep)
            batch = next(batches)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.bf16):
                outputs = model(batch)
            loss = outputs["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.on_before_step(gstep, schedule.total)
            optimizer.step()
            method.on_step_end(gstep, schedule.total)
            detached = loss.detach().float()
            loss_sum += detached
            bad |= ~torch.isfinite(detached)
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                if info.enabled:  # every rank must stop together, whichever saw the NaN
                    flag = bad.float()
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    bad = flag.bool()
                if bad.item():
                    bar.close(failed=True)  # the error starts its own line
                    raise SelfSupError(f"loss became {detached.item()} at epoch {epoch + 1}, step {step + 1}; stopped, "
                                       f"and {run.kept()} — lower optim.lr or check the data")
                if run.logs or (cfg.log_steps and run.writes):
                    values = {key: float(value.detach()) for key, value in outputs.items() if value.numel() == 1}
                    if run.logs:
                        run.logs.scalars("train", {**values, "lr": lr}, gstep)
                    if cfg.log_steps and run.writes:
                        run.step_rows.append({"epoch": epoch + 1, "step": gstep + 1, **values, "lr": lr,
                                              "wall_time": round(time.time(), 3)})
                bar.set(loss=f"{detached.item():.4f}", lr=f"{lr:.3g}")
            bar.update(1)
    finally:
        batches.close()  # stops a streaming thread, also when a step fails
    bar.close()
    if info.enabled:
        dist.all_reduce(loss_sum)
        loss_sum /= info.world_size
    seconds = time.time() - t0
    return {"epoch": epoch + 1, "loss": loss_sum.item() / steps, "lr": lr, "epoch_seconds": round(seconds, 3),
            "images_per_second": round(steps * cfg.batch_size / seconds, 1), "wall_time": round(time.time(), 3)}


def _nonfinite(method: Method, run: Run) -> str | None:
    """The first parameter or floating buffer that holds NaN or inf (under torchrun: on any rank), else None."""
    tensors = [(n, t) for n, t in [*method.named_parameters(), *method.named_buffers()] if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors]).all() if tensors else None
    flag = torch.zeros((), device=run.device) if finite is None else (~finite).float()
    if run.info.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return None
    return next((n for n, t in tensors if not torch.isfinite(t.detach()).all()),
                "a parameter or buffer on another process")


def _drop_aside(run: Run) -> None:
    """The run --force replaced, once this run has its first checkpoint: deleted, unless it holds files selfsup
    did not write (then it is kept, and the user told where)."""
    kept = foreign_files(run.aside)
    if kept:
        run.note(f"selfsup: the replaced run held files selfsup did not write ({', '.join(kept[:5])}); it is kept in "
                 f"{run.aside}")
    else:
        shutil.rmtree(run.aside, ignore_errors=True)
    run.aside = None


def end_of_epoch(method: Method, optimizer: torch.optim.Optimizer, run: Run, metrics: dict, splits) -> bool:
    """kNN monitor, checkpoint and metrics line after an epoch; True when the time budget says stop here."""
    cfg, epoch = run.cfg, metrics["epoch"]
    # A finite loss does not make finite weights (lr 1e5: inf batch-norm variances, weights of 1e32): a checkpoint
    # that is kept as "good" must be checked itself.
    bad = _nonfinite(method, run)
    if bad is not None:
        raise SelfSupError(f"{bad} became NaN or inf in epoch {epoch} (loss {metrics['loss']:.4g}); stopped without "
                           f"saving it, and {run.kept()} — lower optim.lr or check the data")
    budget_hit = cfg.max_minutes is not None and (time.time() - run.started) / 60 >= cfg.max_minutes
    if run.info.enabled:  # rank 0's clock decides, so all ranks stop after the same epoch
        flag = torch.tensor(float(budget_hit), device=run.device)
        dist.broadcast(flag, 0)
        budget_hit = bool(flag.item())
    final = epoch == cfg.epochs or budget_hit
    if run.info.is_main and splits and ((cfg.eval.knn_every and epoch % cfg.eval.knn_every == 0) or final):
        metrics["knn_top1"] = round(run_knn(method.eval_backbone, cfg, run.device, splits, method.input_transform), 2)
    if run.writes:
        rows, run.step_rows = [*run.step_rows, metrics], []
        run.history.extend(rows)
        # The checkpoint first, with the history: a kill before the metrics line below loses nothing (resume
        # rewrites metrics.jsonl from it).
        save_checkpoint(run.out, {"epoch": epoch, "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                                  "config": config_to_dict(cfg), "history": run.history},
                        replace_damaged=run.damaged_last)
        run.damaged_last = False
        if cfg.checkpoint.save_every and epoch % cfg.checkpoint.save_every == 0:
            keep_checkpoint(run.out, epoch)
        if run.aside is not None:
            _drop_aside(run)
        try:
            if not run.config_saved:
                save_config(cfg, run.out / CONFIG)
                run.config_saved = True
            for row in rows:
                append_metrics(run.out, row)
        except OSError as e:
            raise SelfSupError(f"cannot write in run directory {run.out} ({e.strerror or e}); epoch {epoch}'s "
                               "checkpoint is saved (resume with --resume)") from None
        run.logs.scalars("epoch", {k: v for k, v in metrics.items() if k not in ("epoch", "wall_time")}, epoch)
        run.logs.flush()
    if run.out is not None:
        run.saved_epoch = epoch  # on every rank: each may have to say which checkpoint a later stop keeps
    run.note(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                      if k != "wall_time"))
    if run.info.enabled:
        dist.barrier()
    stop = budget_hit and epoch < cfg.epochs
    if stop:
        run.note(f"stopping after epoch {epoch}: max_minutes={cfg.max_minutes} reached (resume with --resume)")
    return stop


def finish(method: Method, run: Run, data: TrainData) -> None:
    """The run's pictures: what the method learnt to do (samples.png, on its first few training images), how it
    groups them (clusters.png) and its curves (curves.png: loss, learning rate and kNN against epochs). A picture
    that fails costs a warning: the trained run is saved by then."""
    try:
        _pictures(method, run, data)
    except (SelfSupError, RuntimeError, ValueError, OSError) as e:
        warn(f"the run finished and its checkpoint is saved, but its end-of-run pictures failed "
             f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]})")
    if run.logs:
        run.logs.close()


def _pictures(method: Method, run: Run, data: TrainData) -> None:
    from PIL import Image

    if run.writes:
        gen = torch.Generator(device=run.device).manual_seed(run.cfg.seed)
        shown = (synthesize(data.images.tensor, run.cfg.data.single_image, gen, 8) if data.synthesize
                 else data.images[:8])
        grid = method.sample_grid(shown, gen)
        if grid is not None:
            Image.fromarray(grid).save(run.out / "samples.png")
            run.logs.image("samples", grid, run.saved_epoch or 0)
        clusters = method.cluster_grid(data.images)
        if clusters is not None:
            Image.fromarray(clusters).save(run.out / CLUSTERS)
            run.logs.image("clusters", clusters, run.saved_epoch or 0)
        if run.history:
            from selfsup.report import plot_runs

            plot_runs([run.out], run.out / CURVES)


# ------------------------------------------------------------------------------------------------------- fit


def fit(method: Method | None = None, data=None, cfg: Config | None = None, out: str | Path | None = None, *,
        resume: bool = False, force: bool = False, progress: bool = True, eval_data=None) -> Method:
    """Train a method: the loop the command line's `pretrain` runs, for Python.

    Args:
        method: a Method (e.g. SimCLR(wrap(torchvision.models.resnet18()))), or None to build cfg.method.
        data: uint8 images (N,H,W,3) or (N,3,H,W) as a tensor or array, an ImageArray, a source spec such as
            "digits" or "folder:PATH", or None for cfg.data.source.
        cfg: the run's config (epochs, batch size, optim, eval ...; default Config()). Not modified.
        out: the run directory (config.yaml, checkpoint.pt, metrics.jsonl, tb/); None writes nothing.
        resume: continue the run in `out` from its last checkpoint, exactly (give the same method and data).
        force: replace an existing run in `out`.
        progress: show progress bars and a line per epoch.
        eval_data: (train, test) labelled ImageArrays for the kNN monitor (default: eval.source, or the training
            source when it has labelled splits).

    Returns:
        The trained method (unwrapped from DDP), with `run_config` (the resolved config) and `last_metrics` set.

    Example:
        >>> method = selfsup.SimCLR(selfsup.wrap(torchvision.models.resnet18(), input_size=32))
        >>> selfsup.fit(method, images, selfsup.load_config(overrides={"epochs": 10}), out="runs/mine")
    """
    if cfg is None:
        cfg = resume_config(out) if resume and out is not None else Config()
    cfg = copy.deepcopy(cfg)
    if isinstance(data, str):  # a source spec is part of the config (and checked by --force like one)
        cfg.data.source, data = data, None
    before = set_interval(cfg.log_seconds)
    try:
        with shown(progress):
            return _fit(method, data, cfg, out, resume, force, progress, eval_data)
    finally:
        set_interval(before)


def _fit(method, data, cfg: Config, out, resume: bool, force: bool, progress: bool, eval_data) -> Method:
    run = open_run(cfg, out, resume, force, progress)
    try:
        method, train = prepare(method, data, run)
        model, optimizer, start_epoch = setup_model(method, run, train)
        method = unwrap(model)
        schedule = Schedule(cfg.optim, cfg.epochs, train.steps_per_epoch)
        # An eval source the user named must load; the training source is only used when it has labelled splits.
        splits = eval_data or eval_splits(cfg, required=cfg.eval.source is not None)
        start_logs(run, method, train)
        method.run_config, method.last_metrics = cfg, {}
        run.started = time.time()
        for epoch in range(start_epoch, cfg.epochs):
            method.last_metrics = train_one_epoch(model, optimizer, schedule, train, run, epoch)
            if end_of_epoch(method, optimizer, run, method.last_metrics, splits):
                break
        finish(method, run, train)
    except BaseException:
        abort(run)
        raise
    _drop_lock(run.lock)
    return method


def abort(run: Run) -> None:
    """After a failure: a run moved aside by --force comes back when the new one wrote no checkpoint; a directory
    this run made and left empty goes; the lock is freed."""
    if run.logs:
        run.logs.close()
    if run.aside is not None:
        try:
            restore_aside(run.out, run.aside)
            print(f"selfsup: the new run stopped before its first checkpoint; the old run is back in {run.out}",
                  file=sys.stderr)
        except OSError as e:  # never hide the error that stopped the run behind this one
            print(f"selfsup: the new run stopped before its first checkpoint, and the old run could not be put back "
                  f"({e.strerror or e}); its files are in {run.aside}", file=sys.stderr)
        run.aside = None
    _drop_lock(run.lock)


def resume_config(out: str | Path) -> Config:
    """The config to resume run `out` with: the one saved in its last good checkpoint. config.yaml is the readable
    copy; when it is damaged or was edited it is reported and left out (changes go in as key=value overrides)."""
    out = Path(out)
    require_checkpoint(out)
    cfg = load_run_config(load_checkpoint(out)["config"])
    try:
        same = config_to_dict(load_run_config(out / CONFIG)) == config_to_dict(cfg)
        problem = "differs from the config saved in the checkpoint (edited, or damaged)"
    except SelfSupError as e:
        same, problem = False, f"cannot be used ({e})"
    if not same:
        warn(f"{out / CONFIG} {problem}; resuming with the checkpoint's config (give changes as key=value overrides)")
    return cfg


def pretrain(cfg: Config, out: str | Path, resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Pretrain cfg.method on cfg.data into run directory `out` (selfsup pretrain); returns the last epoch's metrics."""
    return fit(None, None, cfg, out, resume=resume, force=force, progress=progress).last_metrics


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", random_init: bool = False,
             method: Method | None = None) -> Method:
    """A run's method, rebuilt from its checkpoint, in eval mode, with `run_config` and `run_epoch` (the epoch of
    the checkpoint read) set, for evaluation and export.

    With random_init, the same architecture at the initialisation the run started from (a baseline). A run whose
    method or backbone a config cannot rebuild (a module given to fit) needs it built again and passed as `method`.
    """
    ckpt = load_checkpoint(Path(run_dir))
    cfg = load_run_config(ckpt["config"])
    state = ckpt["method"]
    if method is None:
        cls = get_method(cfg.method)
        torch.manual_seed(cfg.seed)  # as fit does before building the method: random_init is the run's own start
        method = build_method(cfg, cls.state_info(state, cfg))
    if not random_init:
        try:
            method.load_state_dict(state)
        except RuntimeError as e:
            raise SelfSupError(f"the checkpoint in {run_dir} does not fit the model its config builds "
                               f"({_first_detail(e)})") from None
    method.run_config, method.run_epoch = cfg, ckpt["epoch"]
    return method.to(device).eval()


__all__ = ["fit", "pretrain", "load_run", "train_one_epoch", "end_of_epoch", "open_run", "prepare", "setup_model",
           "finish", "abort", "resume_config", "Run", "TrainData", "unwrap"]

"""The Method contract: an nn.Module that owns its backbone and heads and turns a batch into a loss.

A method says what it needs through class flags and hooks, never through its name: the engine (selfsup.fit)
reads only these. A new method is one file: a config dataclass, a Method subclass registered with
`@register_method(name, config=...)`, and its hooks.

Flags (class attributes):
    per_sample_state  keeps something per training sample (pseudo-labels, a memory bank, a class per seed): the
                      samples must stay fixed, so images are never resampled and synthesised ones are made once.
    needs_targets     learns given labels (data_info supplies them as DataInfo.targets).
    uses_augment      draws its views with the run's `augment` section (so augment.size must be the input size).

Hooks (all optional), in the order the engine calls them:
    upgrade_config(saved)     (classmethod) a run config saved by an earlier selfsup, in today's form
    data_info(cfg, data)      (classmethod) what the constructor needs to know about the data
    prepare_data(data, run)   the images to train on (Exemplar-CNN: its seed patches), once per run
    on_train_start(images)    once, at the start of a fresh run (statistics of the data)
    on_epoch_start(ctx)       each epoch (relabelling, re-clustering)
    epoch_order(count, gen)   the epoch's sample indices, when the method samples its own way
    training_step(batch)      -> {"loss": ..., anything else worth logging}
    on_before_step(step, total) between backward and the optimizer step (freezing or clipping gradients)
    on_step_end(step, total)  after each optimizer step (momentum teachers)
    sample_grid(images, gen)  a picture of what it learnt to do, at the end of a run
    input_transform(x)        RGB in [0,1] -> what the backbone sees, in training and evaluation alike

Property:
    eval_backbone             the backbone that evaluation, the kNN monitor and export use (a momentum teacher's
                              for DINO; the trained one by default)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from selfsup.augmentation import AugmentConfig, augment_unit, normalize, to_input
from selfsup.data.stream import Images, chunks, host_buffer
from selfsup.distributed import all_gather_nograd, rank, world_size
from selfsup.errors import SelfSupError
from selfsup.nets import Backbone, as_backbone, eval_mode
from selfsup.progress import Progress

__all__ = ["Method", "Batch", "EpochContext", "DataInfo", "RunInfo", "NoConfig", "Tape", "dataset_pass",
           "gather_shards", "shard_range", "call_frozen", "eval_mode", "run_crops", "check_local_crops"]


@dataclass
class NoConfig:
    """The config section of a method that has no settings of its own."""


@dataclass
class DataInfo:
    """What a method's constructor may need to know about its training data.

    num_samples: how many training samples (methods with per-sample state size their buffers by it).
    input_size: the side of the images the backbone sees (None: the augmentation's size, else 32).
    targets: (heads, N) int64 labels, for methods that learn given labels (-1: no label).
    """

    num_samples: int | None = None
    input_size: int | None = None
    targets: torch.Tensor | None = None


@dataclass
class RunInfo:
    """Where prepare_data runs: the run directory (None when fit writes nothing), whether it resumes, whether this
    process writes files (rank 0), and the run's seed."""

    out: Path | None = None
    resume: bool = False
    is_main: bool = True
    seed: int = 0


@dataclass
class Batch:
    """Dataset images (uint8, B,H,W,3, on the device), their dataset indices, and the augmentation RNG."""

    images: torch.Tensor
    index: torch.Tensor
    generator: torch.Generator


@dataclass
class EpochContext:
    """What on_epoch_start hooks may use: the epoch, the training images, and the optimizer.

    `images` is a selfsup.data.stream.Images: on the device, or streamed from the decode cache when the split is
    larger than data.device_budget_gb. Indexing it (a slice, an int, an index tensor) gives rows on the device;
    walk the whole split with `dataset_pass` or `chunks`, never by copying all of it to the device."""

    epoch: int
    epochs: int
    images: Images
    device: torch.device
    optimizer: torch.optim.Optimizer | None = None
    seed: int = 0


def shard_range(n: int) -> tuple[int, int]:
    """This rank's contiguous slice [start, stop) of n items (all of them without torch.distributed)."""
    world, r = world_size(), rank()
    per = -(-n // world)
    return min(n, r * per), min(n, (r + 1) * per)


def gather_shards(x: torch.Tensor, n: int) -> torch.Tensor:
    """Join every rank's shard (from shard_range) back into all n rows, on every rank."""
    if world_size() == 1:
        return x
    per = -(-n // world_size())
    padded = torch.zeros((per, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    return all_gather_nograd(padded)[:n]


@torch.no_grad()
def dataset_pass(fn: Callable[[torch.Tensor], torch.Tensor], images: Images | torch.Tensor, size: int,
                 batch_size: int = 1024, transform: Callable[[torch.Tensor], torch.Tensor] = normalize,
                 what: str = "pass", on_host: bool = False) -> torch.Tensor:
    """fn applied to this rank's shard of the un-augmented training images (resized, then `transform`), in fp32.

    The images go through in chunks of `batch_size` (read ahead from the cache when streamed); only fn's outputs are
    kept: on the device, or with `on_host` on the host in fp16 (in a cache file when larger than RAM allows), for
    outputs too large for the device (SeLa's 10 x 3,000 log-probabilities per ImageNet image)."""
    start, stop = shard_range(len(images))
    outs, kept, row = [], None, 0
    with Progress(-(-(stop - start) // batch_size), f"{what} over {stop - start:,} training images", unit="img",
                  per_step=batch_size) as bar:
        for chunk in chunks(images, start, stop, batch_size):
            out = fn(to_input(chunk, size, transform)).float()
            if on_host:
                if kept is None:
                    kept = host_buffer((stop - start, *out.shape[1:]), torch.float16)
                kept[row:row + len(out)] = out.cpu().half()
                row += len(out)
            else:
                outs.append(out)
            bar.update()
    if on_host:
        return kept if kept is not None else torch.empty(0)
    return torch.cat(outs) if outs else torch.empty(0)


def run_crops(net: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """net over every view, consecutive views of one size joined into one batch (multi-crop: the global crops in one
    pass, the local ones in another); the outputs stacked in view order."""
    outs, start = [], 0
    while start < len(views):
        stop = start + 1
        while stop < len(views) and views[stop].shape[-2:] == views[start].shape[-2:]:
            stop += 1
        outs.append(net(torch.cat(views[start:stop])))
        start = stop
    return torch.cat(outs)


def check_local_crops(backbone: nn.Module, size: int, local_crops: int, method: str) -> None:
    """A one-line error when the backbone cannot take local crops of `size` px (e.g. a fully connected layer sized
    for the global crops)."""
    if not local_crops:
        return
    try:
        with eval_mode(backbone), torch.no_grad():
            backbone(torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device))
    except (RuntimeError, ValueError, SelfSupError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise SelfSupError(f"this backbone cannot take {size}-px local crops ({method}.crops.local_size) ({why}); set "
                           f"{method}.crops.local_crops=0 or use a backbone that pools globally (resnet*, "
                           "alexnet_small, nin, vit_*)") from None


def call_frozen(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """module(*inputs) with its weights detached: gradient reaches the inputs (the nets that made them), not the module.

    Adversarial methods use it so one backward pass gives each side the gradient of its own objective only.
    """
    frozen = {k: v.detach() for k, v in module.named_parameters()}
    frozen.update(dict(module.named_buffers()))
    return functional_call(module, frozen, inputs)


class Tape:
    """Every random tensor a training step draws (views, masks, latent noise, negatives), recorded in call order, or
    played back in that order instead of being drawn.

    Playing a recorded step back reruns the same computation on ready tensors: the benchmark's compute floor, and
    the multi-process tests, which give each rank its rows of one joint batch's draws.
    """

    def __init__(self, draws: list | None = None):
        self.replay = draws is not None
        self.draws: list = list(draws or [])
        self.position = 0

    def __call__(self, make: Callable[[], object]) -> object:
        if not self.replay:
            out = make()
            self.draws.append(out)
            return out
        out = self.draws[self.position % len(self.draws)]  # cycles, so a benchmark can replay one step many times
        self.position += 1
        return out


def _uncompiled_keys(state: dict, prefix: str, *_args) -> None:
    """Checkpoints of `compile: true` runs from before the backbone compiled in place name it backbone._orig_mod."""
    mark = prefix + "backbone._orig_mod."
    for key in [k for k in state if k.startswith(mark)]:
        state[prefix + "backbone." + key[len(mark):]] = state.pop(key)


class Method(nn.Module):
    """Base of every method: holds the backbone, the method's config section, the augmentation and the data info.

    Subclasses implement training_step (forward calls it, so DDP can wrap the method). Everything random a step draws
    goes through `draw`, so a Tape can record or replay it.

    Args:
        backbone: a selfsup Backbone, or any torchvision/timm model (wrapped with selfsup.nets.wrap).
        cfg: the method's config section (default: its config class's defaults).
        augment: the views' augmentation (default: AugmentConfig at the input size).
        data: what the method needs to know about the data (see DataInfo).
    """

    name: ClassVar[str] = ""  # set by register_method
    config_class: ClassVar[type] = NoConfig
    per_sample_state: ClassVar[bool] = False
    needs_targets: ClassVar[bool] = False
    uses_augment: ClassVar[bool] = True
    # What input_transform makes of RGB in [0,1], in words: written into exported weights, so code using them without
    # selfsup feeds the backbone what it was trained on.
    input_description: ClassVar[str] = "RGB in [0,1] normalised with ImageNet's mean and std"

    backbone: Backbone
    channels_last: bool = False  # set by the training loop when the model runs in channels_last
    passes_per_epoch: int = 1  # an epoch visits every training sample this many times
    tape: Tape | None = None
    run_config = None  # the run's Config, set by selfsup.fit and selfsup.load_run

    def __init__(self, backbone: nn.Module, cfg=None, augment: AugmentConfig | None = None,
                 data: DataInfo | None = None):
        super().__init__()
        data = data or DataInfo()
        if data.input_size is None:
            data = DataInfo(data.num_samples, augment.size if augment is not None else 32, data.targets)
        cfg = self.config_class() if cfg is None else cfg
        if not isinstance(cfg, self.config_class):
            raise SelfSupError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(cfg).__name__}")
        augment = augment if augment is not None else AugmentConfig(size=data.input_size)
        if self.uses_augment and augment.size != data.input_size:
            raise SelfSupError(f"augment.size ({augment.size}) must equal model.input_size ({data.input_size})")
        if self.per_sample_state and data.num_samples is None:
            raise SelfSupError(f"{type(self).__name__} keeps state per training sample; give DataInfo(num_samples=N)")
        if self.needs_targets and data.targets is None:
            raise SelfSupError(f"{type(self).__name__} learns given labels; give DataInfo(targets=labels)")
        self.cfg, self.aug, self.data = cfg, augment, data
        self.backbone = as_backbone(backbone, data.input_size)
        self._register_load_state_dict_pre_hook(_uncompiled_keys)

    # ------------------------------------------------------------------------------------------ construction

    @classmethod
    def data_info(cls, cfg, data) -> DataInfo:
        """What the constructor needs from the run's config and its training ImageArray (default: size and count)."""
        return DataInfo(len(data), cfg.model.input_size)

    @classmethod
    def state_info(cls, state: dict[str, torch.Tensor], cfg) -> DataInfo:
        """The DataInfo a saved state_dict was built with (load_run rebuilds the method from it)."""
        return DataInfo(cls.num_samples_in(state), cfg.model.input_size)

    @classmethod
    def upgrade_config(cls, saved: dict) -> dict:
        """A run config dict saved by an earlier selfsup, in today's form for this method (unchanged by default)."""
        return saved

    @staticmethod
    def num_samples_in(state: dict[str, torch.Tensor]) -> int | None:
        """How many training samples a saved state_dict was built for (None: the method keeps nothing per sample)."""
        labels = state.get("labels")
        return None if labels is None else labels.shape[-1]

    # ------------------------------------------------------------------------------------------------ hooks

    def prepare_data(self, data, run: RunInfo):
        """The ImageArray to train on, from the run's one; the same one by default."""
        return data

    def on_train_start(self, images: torch.Tensor) -> None:
        """Hook run once at the start of a fresh (not resumed) run, with the training images; nothing by default."""

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Hook for methods that recompute targets over the dataset (clustering); nothing by default."""

    def epoch_order(self, count: int, generator: torch.Generator) -> torch.Tensor | None:
        """Dataset indices for this epoch when the method samples its own way (e.g. uniformly over clusters)."""
        return None

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_before_step(self, step: int, total_steps: int) -> None:
        """Hook run after the backward pass of step `step`, before the optimizer uses the gradients; nothing by
        default (DINO clips gradients and holds its last layer still here)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Hook run after optimizer step `step` (0-based, counted over the whole run) of `total_steps`."""

    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray | None:
        """A uint8 (H,W,3) picture of what the method does on a few training images (uint8 B,H,W,3), for the run's
        report; None when it has none."""
        return None

    def cluster_grid(self, images: torch.Tensor) -> np.ndarray | None:
        """A uint8 (H,W,3) picture of how the method groups the training images (uint8 N,H,W,3), e.g. a row of
        images per cluster, for the run's clusters.png and loggers; None when it groups nothing."""
        return None

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0,1], (B,3,H,W) -> the backbone's input: ImageNet-normalised RGB by default."""
        return normalize(x)

    @property
    def eval_backbone(self) -> Backbone:
        """The backbone evaluation and export measure: the trained one (a method with a teacher may pick that)."""
        return self.backbone

    # -------------------------------------------------------------------------------------------- helpers

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def view(self, batch: Batch, aug: AugmentConfig | None = None) -> torch.Tensor:
        """One augmented view of the batch (the method's augmentation unless `aug` is given), as network input."""
        aug = aug or self.aug
        return self.make_input(lambda: self.input_transform(augment_unit(batch.images, aug, batch.generator)),
                               batch.images.device)

    def draw(self, make: Callable[[], object], device: torch.device) -> object:
        """make() in fp32 even under autocast (colour maps need it); recorded or replayed when a tape is set."""
        with torch.autocast(device.type, enabled=False):
            return make() if self.tape is None else self.tape(make)

    def make_input(self, make: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
        """Network input drawn from `make` (see draw), in the model's memory format."""
        x = self.draw(make, device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def crops(self, batch: Batch, configs: list[AugmentConfig]) -> list[torch.Tensor]:
        """One augmented view of the batch per config (multi-crop: see selfsup.augmentation.multi_crop_configs)."""
        return [self.view(batch, c) for c in configs]

    def dataset_pass(self, fn: Callable[[torch.Tensor], torch.Tensor], images: Images | torch.Tensor,
                     what: str = "pass", on_host: bool = False) -> torch.Tensor:
        """fn over this rank's shard of the un-augmented training images (as this method's input), in eval mode;
        `what` names it in progress lines (e.g. "SeLa labelling pass")."""
        with eval_mode(self):
            return dataset_pass(fn, images, self.data.input_size, transform=self.input_transform, what=what,
                                on_host=on_host)

"""The Method contract: an nn.Module that owns its backbone and heads and turns a batch into a loss."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from selfsup.augment import AugmentConfig, augment, to_input
from selfsup.distributed import all_gather_nograd, rank, world_size
from selfsup.nets import Backbone


@dataclass
class Batch:
    """Dataset images (uint8, B,H,W,3, on the device), their dataset indices, and the augmentation RNG."""

    images: torch.Tensor
    index: torch.Tensor
    generator: torch.Generator


@dataclass
class EpochContext:
    """What on_epoch_start hooks may use: the epoch, the full training data on the device, and the optimizer."""

    epoch: int
    epochs: int
    images: torch.Tensor
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
def dataset_pass(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, size: int,
                 batch_size: int = 1024) -> torch.Tensor:
    """fn applied to this rank's shard of the un-augmented training images (centre view, normalised), in fp32."""
    start, stop = shard_range(len(images))
    outs = [fn(to_input(images[i:min(i + batch_size, stop)], size)).float() for i in range(start, stop, batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """The module in eval mode (running batch-norm statistics, no dropout) for the block, then back as it was."""
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)


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


class Method(nn.Module):
    """Subclasses set `backbone` and implement training_step; forward is training_step so DDP can wrap it.

    Everything random a step needs is drawn through `draw`, so a Tape can record or replay it.
    """

    backbone: Backbone

    channels_last: bool = False  # set by the training loop when the model runs in channels_last
    passes_per_epoch: int = 1  # an epoch visits every training sample this many times
    tape: Tape | None = None

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def view(self, batch: Batch, aug: AugmentConfig) -> torch.Tensor:
        """One augmented view of the batch (see make_input)."""
        return self.make_input(lambda: augment(batch.images, aug, batch.generator), batch.images.device)

    def draw(self, make: Callable[[], object], device: torch.device) -> object:
        """make() in fp32 even under autocast (colour maps need it); recorded or replayed when a tape is set."""
        with torch.autocast(device.type, enabled=False):
            return make() if self.tape is None else self.tape(make)

    def make_input(self, make: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
        """Network input drawn from `make` (see draw), in the model's memory format."""
        x = self.draw(make, device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @staticmethod
    def num_samples_in(state: dict[str, torch.Tensor]) -> int | None:
        """How many training samples a saved state_dict was built for (None: the method keeps nothing per sample)."""
        labels = state.get("labels")
        return None if labels is None else labels.shape[-1]

    def on_train_start(self, images: torch.Tensor) -> None:
        """Hook run once at the start of a fresh (not resumed) run, with the training images; nothing by default."""

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Hook for methods that recompute targets over the dataset (clustering); nothing by default."""

    def epoch_order(self, count: int, generator: torch.Generator) -> torch.Tensor | None:
        """Dataset indices for this epoch when the method samples its own way (e.g. uniformly over clusters)."""
        return None

    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray | None:
        """A uint8 (H,W,3) picture of what the method does on a few training images (uint8 B,H,W,3), for the run's
        report; None when it has none."""
        return None

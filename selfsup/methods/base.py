"""The Method contract: an nn.Module that owns its backbone and heads and turns a batch into a loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from selfsup.nets import Backbone


@dataclass
class Batch:
    """Dataset images (uint8, B,H,W,3, on the device), their dataset indices, and the augmentation RNG."""

    images: torch.Tensor
    index: torch.Tensor
    generator: torch.Generator


@dataclass
class EpochContext:
    """What on_epoch_start hooks may use: the epoch, the full training data on the device, and the process layout."""

    epoch: int
    images: torch.Tensor
    device: torch.device


class Method(nn.Module):
    """Subclasses set `backbone` and implement training_step; forward is training_step so DDP can wrap it."""

    backbone: Backbone

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Hook for methods that recompute targets over the dataset (clustering); nothing by default."""

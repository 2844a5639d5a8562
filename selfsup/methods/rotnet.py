"""RotNet (Gidaris, Singh, Komodakis, ICLR 2018): predict by how much an image was rotated.

Each image's augmented view appears in the same batch at every rotation of the set (0/90/180/270 degrees by
default; 0/180 with rotations=2; the eight multiples of 45 degrees with rotations=8), and a linear head on the
backbone classifies the rotation. Multiples of 90 degrees are exact pixel permutations (torch.rot90); the
45-degree ones are bilinear warps with the corners reflected in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, Method
from selfsup.methods.registry import register_method


@dataclass
class RotNetConfig:
    """RotNet: how many rotations the classifier tells apart."""

    RANGES: ClassVar[dict[str, str]] = {"rotations": "[2, 8]"}  # the method takes 2, 4 or 8

    rotations: int = 4  # 4: 0/90/180/270; 2: 0/180; 8: multiples of 45 degrees


def rotate(x: torch.Tensor, label: int, rotations: int) -> torch.Tensor:
    """x (B,C,H,W) rotated counter-clockwise by label * 360 / rotations degrees."""
    step = 360 // rotations
    degrees = label * step
    if degrees % 90 == 0:
        return torch.rot90(x, degrees // 90, dims=(2, 3))
    a = math.radians(degrees)
    # affine_grid maps output to input coordinates with y pointing down, so this matrix samples a counter-clockwise
    # turn (the same sense as torch.rot90 on dims (2, 3)).
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype,
                         device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rotation_batch(x: torch.Tensor, rotations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image at every rotation, grouped by rotation: (R*B,C,H,W) and the rotation labels (R*B,)."""
    rotated = torch.cat([rotate(x, r, rotations) for r in range(rotations)])
    labels = torch.arange(rotations, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


@register_method("rotnet", config=RotNetConfig)
class RotNet(Method):
    """Backbone + a linear rotation classifier."""

    cfg: RotNetConfig

    def __init__(self, backbone, cfg: RotNetConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        if self.cfg.rotations not in (2, 4, 8):
            raise SelfSupError(f"rotnet.rotations must be 2, 4 or 8, got {self.cfg.rotations}")
        self.rotations = self.cfg.rotations
        self.classifier = nn.Linear(self.backbone.feature_dim, self.cfg.rotations)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.view(batch)
        rotated, labels = rotation_batch(x, self.rotations)
        logits = self.classifier(self.backbone(rotated)).float()
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "rotation_acc": (logits.argmax(1) == labels).float().mean()}


__all__ = ["RotNet", "RotNetConfig", "rotate", "rotation_batch"]

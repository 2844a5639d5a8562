"""SimCLR (Chen et al. 2020): two augmented views, an MLP projection head, and the NT-Xent loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from selfsup.heads import ProjectionHead
from selfsup.losses import nt_xent
from selfsup.methods.base import Batch, Method
from selfsup.methods.registry import register_method


@dataclass
class SimCLRConfig:
    """SimCLR's projection head and loss."""

    RANGES: ClassVar[dict[str, str]] = {"temperature": "(0, inf)", "proj_hidden": "[1, inf)", "proj_dim": "[1, inf)"}

    temperature: float = 0.5
    proj_hidden: int = 2048
    proj_dim: int = 128


@register_method("simclr", config=SimCLRConfig)
class SimCLR(Method):
    """Contrast two views of each image against every other view in the (global) batch.

    Example:
        >>> method = SimCLR(build_backbone("resnet18", cifar_stem=True), SimCLRConfig(temperature=0.2))
        >>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
        >>> method(Batch(images, torch.arange(8), torch.Generator()))["loss"]  # a scalar; selfsup.fit trains it
    """

    cfg: SimCLRConfig

    def __init__(self, backbone, cfg: SimCLRConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        # SimCLR v1's head, as in its CIFAR code: Linear-BN-ReLU-Linear.
        self.head = ProjectionHead(self.backbone.feature_dim, self.cfg.proj_hidden, self.cfg.proj_dim)

    def views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented views of every image."""
        return self.view(batch), self.view(batch)

    def embed(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views through backbone and head in one pass (batch-norm sees both)."""
        z = self.head(self.backbone(torch.cat([x1, x2])))
        return z.chunk(2)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x1, x2 = self.views(batch)
        z1, z2 = self.embed(x1, x2)
        return {"loss": nt_xent(z1, z2, self.cfg.temperature)}


__all__ = ["SimCLR", "SimCLRConfig"]

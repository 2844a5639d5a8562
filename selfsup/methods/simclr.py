"""SimCLR (Chen et al. 2020): two augmented views, an MLP projection head, and the NT-Xent loss."""

from __future__ import annotations

import torch
import torch.nn as nn

from selfsup.augment import AugmentConfig
from selfsup.config import SimCLRConfig
from selfsup.losses import nt_xent
from selfsup.methods.base import Batch, Method
from selfsup.nets import Backbone


def projection_head(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """SimCLR's 2-layer MLP head (with BN, as in SimCLR v1's CIFAR code)."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class SimCLR(Method):
    """Contrast two views of each image against every other view in the (global) batch."""

    def __init__(self, backbone: Backbone, aug: AugmentConfig, cfg: SimCLRConfig):
        super().__init__()
        self.backbone = backbone
        self.head = projection_head(backbone.feature_dim, cfg.proj_hidden, cfg.proj_dim)
        self.aug = aug
        self.temperature = cfg.temperature

    def views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented views of every image."""
        return self.view(batch, self.aug), self.view(batch, self.aug)

    def embed(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views through backbone and head in one pass (batch-norm sees both)."""
        z = self.head(self.backbone(torch.cat([x1, x2])))
        return z.chunk(2)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x1, x2 = self.views(batch)
        z1, z2 = self.embed(x1, x2)
        return {"loss": nt_xent(z1, z2, self.temperature)}

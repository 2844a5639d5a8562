"""Barlow Twins (Zbontar et al. 2021): self-supervised learning by redundancy reduction.

The cross-correlation matrix of the two views' batch-standardised embeddings is pushed towards the identity: the
diagonal to 1 (the views agree), everything else to 0 (the dimensions carry different information). No negatives,
no momentum encoder, no stop-gradient; a wide projector (8,192) matters, as the authors show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from selfsup.augmentation import MultiCropConfig
from selfsup.heads import ProjectionHead
from selfsup.losses import barlow_twins
from selfsup.methods.base import Batch
from selfsup.methods.registry import register_method
from selfsup.methods.siamese import TwoViewMethod, byol_views


@dataclass
class BarlowTwinsConfig:
    """Barlow Twins' projector, off-diagonal weight and views (defaults: the authors' ImageNet settings)."""

    RANGES: ClassVar[dict[str, str]] = {"proj_hidden": "[1, inf)", "proj_dim": "[1, inf)", "proj_layers": "[1, inf)",
                                        "lambda_offdiag": "[0, inf)", "loss_scale": "(0, inf)"}

    proj_hidden: int = 8192
    proj_dim: int = 8192
    proj_layers: int = 3
    lambda_offdiag: float = 0.0051  # the authors' code (the paper rounds it to 5e-3)
    loss_scale: float = 1.0  # a factor on the loss (solo-learn's CIFAR setting: 0.1)
    crops: MultiCropConfig = field(default_factory=byol_views)


@register_method("barlow_twins", config=BarlowTwinsConfig)
class BarlowTwins(TwoViewMethod):
    """Make the two views' cross-correlation matrix the identity.

    Example:
        >>> method = BarlowTwins(build_backbone("resnet18", cifar_stem=True), BarlowTwinsConfig(proj_hidden=512,
        ...                      proj_dim=512))
        >>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
        >>> method(Batch(images, torch.arange(8), torch.Generator()))["loss"]  # a scalar; selfsup.fit trains it
    """

    cfg: BarlowTwinsConfig

    def __init__(self, backbone, cfg: BarlowTwinsConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        c = self.cfg
        # The authors' projector: (Linear-BN-ReLU) x (layers - 1), then Linear (theirs has no bias there; the loss's
        # standardisation removes any bias, so it gets no gradient here).
        self.head = ProjectionHead(self.backbone.feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        z1, z2 = self.projections(batch)
        return {"loss": self.cfg.loss_scale * barlow_twins(z1, z2, self.cfg.lambda_offdiag)}


__all__ = ["BarlowTwins", "BarlowTwinsConfig"]

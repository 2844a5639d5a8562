"""VICReg (Bardes, Ponce & LeCun 2022): variance-invariance-covariance regularisation.

The two views' embeddings must agree (mean squared error), every dimension must keep a standard deviation of at
least 1 over the batch (a hinge), and different dimensions must not co-vary. The variance term is what prevents
collapse; nothing is shared between the branches but the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from selfsup.augmentation import MultiCropConfig
from selfsup.heads import ProjectionHead
from selfsup.losses import vicreg
from selfsup.methods.base import Batch
from selfsup.methods.registry import register_method
from selfsup.methods.siamese import TwoViewMethod, byol_views


@dataclass
class VICRegConfig:
    """VICReg's expander, loss weights and views (defaults: the authors' ImageNet settings)."""

    RANGES: ClassVar[dict[str, str]] = {"proj_hidden": "[1, inf)", "proj_dim": "[1, inf)", "proj_layers": "[1, inf)",
                                        "sim_weight": "[0, inf)", "var_weight": "[0, inf)", "cov_weight": "[0, inf)"}

    proj_hidden: int = 8192
    proj_dim: int = 8192
    proj_layers: int = 3
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    crops: MultiCropConfig = field(default_factory=byol_views)


@register_method("vicreg", config=VICRegConfig)
class VICReg(TwoViewMethod):
    """Invariance between views, variance and decorrelation within each.

    Example:
        >>> method = VICReg(build_backbone("resnet18", cifar_stem=True), VICRegConfig(proj_hidden=512, proj_dim=512))
        >>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
        >>> method(Batch(images, torch.arange(8), torch.Generator()))["loss"]  # a scalar; selfsup.fit trains it
    """

    cfg: VICRegConfig

    def __init__(self, backbone, cfg: VICRegConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        c = self.cfg
        # The authors' expander: (Linear-BN-ReLU) x (layers - 1), then Linear (with bias, as theirs).
        self.head = ProjectionHead(self.backbone.feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        z1, z2 = self.projections(batch)
        c = self.cfg
        return {"loss": vicreg(z1, z2, c.sim_weight, c.var_weight, c.cov_weight)}


__all__ = ["VICReg", "VICRegConfig"]

"""SimSiam (Chen & He 2021): Siamese networks with a predictor and a stop-gradient, nothing else.

Both views go through one encoder and projector; a predictor maps each projection to the other view's, which is
held fixed (detached) in the loss. No negatives, no momentum encoder, no large batch: the stop-gradient alone keeps
the outputs from collapsing, as the authors show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from selfsup.augmentation import MultiCropConfig
from selfsup.heads import PredictionHead, ProjectionHead
from selfsup.losses import negative_cosine
from selfsup.methods.base import Batch
from selfsup.methods.registry import register_method
from selfsup.methods.siamese import TwoViewMethod, symmetric_views


@dataclass
class SimSiamConfig:
    """SimSiam's heads and views (defaults: the authors' ImageNet settings; their CIFAR projector has 2 layers)."""

    RANGES: ClassVar[dict[str, str]] = {"proj_hidden": "[1, inf)", "proj_dim": "[1, inf)", "proj_layers": "[1, inf)",
                                        "pred_hidden": "[1, inf)"}

    proj_hidden: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3
    pred_hidden: int = 512  # the predictor's bottleneck
    crops: MultiCropConfig = field(default_factory=symmetric_views)


@register_method("simsiam", config=SimSiamConfig)
class SimSiam(TwoViewMethod):
    """Predict the other view's projection, through a stop-gradient.

    Example:
        >>> method = SimSiam(build_backbone("resnet18", cifar_stem=True), SimSiamConfig(proj_hidden=512, proj_dim=512))
        >>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
        >>> method(Batch(images, torch.arange(8), torch.Generator()))["loss"]  # a scalar; selfsup.fit trains it
    """

    cfg: SimSiamConfig

    def __init__(self, backbone, cfg: SimSiamConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        c = self.cfg
        # The authors' projector: (Linear-BN-ReLU) x (layers - 1), then Linear and BN without affine parameters.
        self.head = ProjectionHead(self.backbone.feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers, last_bn=True)
        self.predictor = PredictionHead(c.proj_dim, c.pred_hidden)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        z1, z2 = self.projections(batch)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (negative_cosine(p1, z2.detach()) + negative_cosine(p2, z1.detach())) / 2
        # The spread of the normalised outputs: 1/sqrt(dim) when healthy, 0 when collapsed (the authors' figure 2).
        with torch.no_grad():
            spread = torch.nn.functional.normalize(z1.float(), dim=1).std(0).mean()
        return {"loss": loss, "output_std": spread}


__all__ = ["SimSiam", "SimSiamConfig"]

"""BYOL (Grill et al. 2020): bootstrap your own latent.

An online network (encoder, projector, predictor) learns to predict, from one view, the projection a target network
gives the other view. The target (encoder and projector) is an exponential moving average of the online one
(selfsup.methods.momentum), with its momentum raised from 0.996 to 1 along a cosine; there are no negatives. The
loss is symmetric: each view predicts the other's target projection. Evaluation uses the online encoder, as the
authors do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from selfsup.augmentation import MultiCropConfig
from selfsup.heads import PredictionHead, ProjectionHead
from selfsup.losses import negative_cosine
from selfsup.methods.base import Batch
from selfsup.methods.momentum import ema_update_, momentum_at, momentum_teacher
from selfsup.methods.registry import register_method
from selfsup.methods.siamese import TwoViewMethod, byol_views


@dataclass
class BYOLConfig:
    """BYOL's heads, target momentum and views (defaults: the authors' ImageNet ResNet-50 settings)."""

    RANGES: ClassVar[dict[str, str]] = {"proj_hidden": "[1, inf)", "proj_dim": "[1, inf)", "pred_hidden": "[1, inf)",
                                        "momentum": "[0, 1]", "momentum_end": "[0, 1]"}

    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    momentum: float = 0.996  # the target's EMA momentum at the first step, along a cosine to momentum_end
    momentum_end: float = 1.0
    crops: MultiCropConfig = field(default_factory=byol_views)


@register_method("byol", config=BYOLConfig)
class BYOL(TwoViewMethod):
    """Predict a momentum target's projection of the other view.

    Example:
        >>> method = BYOL(build_backbone("resnet18", cifar_stem=True), BYOLConfig(proj_hidden=512, pred_hidden=512))
        >>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
        >>> method(Batch(images, torch.arange(8), torch.Generator()))["loss"]  # a scalar; selfsup.fit trains it
    """

    cfg: BYOLConfig

    def __init__(self, backbone, cfg: BYOLConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        c = self.cfg
        # The authors' MLPs: Linear(4096)-BN-ReLU-Linear(256), the predictor the same from 256 back to 256.
        self.head = ProjectionHead(self.backbone.feature_dim, c.proj_hidden, c.proj_dim)
        self.predictor = PredictionHead(c.proj_dim, c.pred_hidden)
        self.target_backbone = momentum_teacher(self.backbone)
        self.target_head = momentum_teacher(self.head)

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.head(self.backbone(x)))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x1, x2 = self.views(batch)
        p1, p2 = self.each(self.online, x1, x2)
        with torch.no_grad():
            t1, t2 = self.each(lambda x: self.target_head(self.target_backbone(x)), x1, x2)
        # ||normalize(p) - normalize(t)||^2 = 2 - 2 cos(p, t), for each view predicting the other's target.
        loss = 4 + 2 * (negative_cosine(p1, t2) + negative_cosine(p2, t1))
        return {"loss": loss}

    def on_step_end(self, step: int, total_steps: int) -> None:
        m = momentum_at(step, total_steps, self.cfg.momentum, self.cfg.momentum_end)
        ema_update_(self.target_backbone, self.backbone, m)
        ema_update_(self.target_head, self.head, m)


__all__ = ["BYOL", "BYOLConfig"]

"""MoCo v3 (Chen, Xie & He 2021): momentum contrast without a queue, for ResNets and Vision Transformers.

Each view's query (encoder, projector, predictor) is contrasted with the momentum encoder's keys of the other view
over the whole global batch (keys gathered from every process), symmetrically. The momentum encoder (encoder and
projector) follows by EMA with its momentum raised from 0.99 to 1 along a cosine. For ViTs the authors keep the patch
projection at its random initialisation, which they found removes the training instability ("dips") of ViTs;
`freeze_patch_embed` does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from selfsup.augmentation import MultiCropConfig
from selfsup.heads import PredictionHead, ProjectionHead
from selfsup.losses import contrastive_across_batch
from selfsup.methods.base import Batch
from selfsup.methods.momentum import ema_update_, momentum_at, momentum_teacher
from selfsup.methods.registry import register_method
from selfsup.methods.siamese import TwoViewMethod, byol_views
from selfsup.nets import ViT


@dataclass
class MoCoV3Config:
    """MoCo v3's heads, temperature, momentum and views (defaults: the authors' ViT settings; for ResNets they use a
    2-layer projector and temperature 1.0)."""

    RANGES: ClassVar[dict[str, str]] = {"proj_hidden": "[1, inf)", "proj_dim": "[1, inf)", "proj_layers": "[1, inf)",
                                        "pred_hidden": "[1, inf)", "temperature": "(0, inf)", "momentum": "[0, 1]",
                                        "momentum_end": "[0, 1]"}

    proj_hidden: int = 4096
    proj_dim: int = 256
    proj_layers: int = 3
    pred_hidden: int = 4096
    temperature: float = 0.2
    momentum: float = 0.99  # the momentum encoder's EMA momentum at the first step, along a cosine to momentum_end
    momentum_end: float = 1.0
    freeze_patch_embed: bool = True  # ViT backbones: the patch projection stays at its random initialisation
    crops: MultiCropConfig = field(default_factory=byol_views)


@register_method("mocov3", config=MoCoV3Config)
class MoCoV3(TwoViewMethod):
    """Contrast each view's prediction with the other view's momentum keys across the global batch.

    Example:
        >>> method = MoCoV3(build_backbone("vit_tiny", input_size=32), MoCoV3Config(proj_hidden=256, pred_hidden=256))
        >>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
        >>> method(Batch(images, torch.arange(8), torch.Generator()))["loss"]  # a scalar; selfsup.fit trains it
    """

    cfg: MoCoV3Config

    def __init__(self, backbone, cfg: MoCoV3Config | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        c = self.cfg
        if c.freeze_patch_embed and isinstance(self.backbone, ViT):
            self.backbone.conv_proj.requires_grad_(False)
        # The authors' MLPs: hidden layers Linear-BN-ReLU; the projector ends in Linear and BN without affine
        # parameters, the predictor in Linear.
        self.head = ProjectionHead(self.backbone.feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers, last_bn=True)
        self.predictor = PredictionHead(c.proj_dim, c.pred_hidden)
        self.key_backbone = momentum_teacher(self.backbone)
        self.key_head = momentum_teacher(self.head)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x1, x2 = self.views(batch)
        q1, q2 = self.each(lambda x: self.predictor(self.head(self.backbone(x))), x1, x2)
        with torch.no_grad():
            k1, k2 = self.each(lambda x: self.key_head(self.key_backbone(x)), x1, x2)
        t = self.cfg.temperature
        return {"loss": contrastive_across_batch(q1, k2, t) + contrastive_across_batch(q2, k1, t)}

    def on_step_end(self, step: int, total_steps: int) -> None:
        m = momentum_at(step, total_steps, self.cfg.momentum, self.cfg.momentum_end)
        ema_update_(self.key_backbone, self.backbone, m)
        ema_update_(self.key_head, self.head, m)


__all__ = ["MoCoV3", "MoCoV3Config"]

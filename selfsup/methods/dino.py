"""DINO (Caron et al. 2021): self-distillation with no labels.

A student network learns to output, for every crop of an image, the distribution a momentum teacher gives the image's
global crops. The teacher is an exponential moving average of the student (selfsup.methods.momentum); its outputs
are centred (a running mean subtracted) and sharpened (a low temperature), the two forces that keep the outputs from
collapsing to one dimension or to uniform. Evaluation and export use the teacher, as the authors do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from selfsup.augmentation import MultiCropConfig, multi_crop_configs
from selfsup.errors import SelfSupError
from selfsup.heads import DINOHead
from selfsup.losses import dino, dino_center
from selfsup.methods.base import Batch, EpochContext, Method, check_local_crops, run_crops
from selfsup.methods.momentum import ema_update_, momentum_at, momentum_teacher
from selfsup.methods.registry import register_method
from selfsup.nets import Backbone


def _dino_crops() -> MultiCropConfig:
    # The authors' DataAugmentationDINO: blur always on the first global crop, rarely on the second, which is
    # sometimes solarised; blur on half the local crops.
    return MultiCropConfig(global_crops=2, global_scale=(0.4, 1.0), local_crops=8, local_size=None,
                           local_scale=(0.05, 0.4), global_blur_p=[1.0, 0.1], global_solarize_p=[0.0, 0.2],
                           local_blur_p=0.5)


@dataclass
class DINOConfig:
    """DINO's head, temperatures, centre, teacher and crops (defaults: the authors' ViT-S/16 settings)."""

    RANGES: ClassVar[dict[str, str]] = {
        "out_dim": "[1, inf)", "hidden_dim": "[1, inf)", "bottleneck_dim": "[1, inf)", "head_layers": "[1, inf)",
        "student_temp": "(0, inf)", "teacher_temp": "(0, inf)", "warmup_teacher_temp": "(0, inf)",
        "warmup_teacher_temp_epochs": "[0, inf)", "center_momentum": "[0, 1]", "momentum": "[0, 1]",
        "momentum_end": "[0, 1]", "freeze_last_layer_epochs": "[0, inf)", "clip_grad": "[0, inf)",
    }

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    head_bn: bool = False
    norm_last_layer: bool = True  # the student's last layer keeps unit length (the teacher's always does)
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04  # linearly to teacher_temp over the first warmup_teacher_temp_epochs
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    momentum: float = 0.996  # the teacher's EMA momentum at the first step, along a cosine to momentum_end
    momentum_end: float = 1.0
    freeze_last_layer_epochs: int = 1  # the head's last layer gets no update in the first epochs
    clip_grad: float = 3.0  # each parameter's gradient norm capped at this (the authors' per-parameter clip; 0: off)
    evaluate: str = "teacher"  # teacher | student: the network the kNN monitor, probes and export measure
    crops: MultiCropConfig = field(default_factory=_dino_crops)


@register_method("dino", config=DINOConfig)
class DINO(Method):
    """Distil a momentum teacher's centred, sharpened outputs on the global crops into the student on every crop.

    Example:
        >>> cfg = DINOConfig(out_dim=256, crops=MultiCropConfig(local_crops=2, local_size=16))
        >>> method = DINO(build_backbone("resnet18", cifar_stem=True), cfg)
        >>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
        >>> method(Batch(images, torch.arange(8), torch.Generator()))["loss"]  # a scalar; selfsup.fit trains it
    """

    cfg: DINOConfig

    def __init__(self, backbone, cfg: DINOConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        c = self.cfg
        if c.evaluate not in ("teacher", "student"):
            raise SelfSupError(f"dino.evaluate must be teacher or student, got {c.evaluate!r}")
        self.crop_augs = multi_crop_configs(self.aug, c.crops, "dino.crops")
        check_local_crops(self.backbone, self.crop_augs[-1].size, c.crops.local_crops, "dino")
        self.head = DINOHead(self.backbone.feature_dim, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers,
                             c.head_bn, c.norm_last_layer)
        # The teacher starts as the student (the authors load the student's weights into it), with its last layer's
        # length at 1 whatever norm_last_layer says, as theirs (afterwards the EMA moves it, as theirs too).
        self.teacher_backbone = momentum_teacher(self.backbone)
        self.teacher_head = momentum_teacher(self.head)
        with torch.no_grad():
            self.teacher_head.last_layer.parametrizations.weight.original0.fill_(1.0)
        self.register_buffer("center", torch.zeros(1, c.out_dim))
        self.epoch = 0

    @property
    def eval_backbone(self) -> Backbone:
        return self.teacher_backbone if self.cfg.evaluate == "teacher" else self.backbone

    def on_epoch_start(self, ctx: EpochContext) -> None:
        self.epoch = ctx.epoch

    def teacher_temp(self, epoch: int) -> float:
        """The teacher's temperature in `epoch` (0-based): linear warm-up, then constant."""
        c = self.cfg
        if epoch >= c.warmup_teacher_temp_epochs:
            return c.teacher_temp
        if c.warmup_teacher_temp_epochs == 1:
            return c.warmup_teacher_temp
        # np.linspace(warmup, final, warmup_epochs)[epoch], as the authors index their schedule.
        return c.warmup_teacher_temp + (c.teacher_temp - c.warmup_teacher_temp) * epoch / (
            c.warmup_teacher_temp_epochs - 1)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        views = self.crops(batch, self.crop_augs)
        g = self.cfg.crops.global_crops
        student = self.head(run_crops(self.backbone, views)).chunk(len(views))
        with torch.no_grad():
            teacher = self.teacher_head(run_crops(self.teacher_backbone, views[:g])).chunk(g)
        temp = self.teacher_temp(self.epoch)
        loss = dino(student, teacher, self.center, self.cfg.student_temp, temp)
        self.center.copy_(dino_center(self.center, teacher, self.cfg.center_momentum))
        return {"loss": loss, "teacher_temp": torch.tensor(temp)}

    def on_before_step(self, step: int, total_steps: int) -> None:
        if self.cfg.clip_grad:
            for p in (*self.backbone.parameters(), *self.head.parameters()):
                if p.grad is not None:
                    # Scale factor min(1, clip / norm), applied without reading it back (no device sync).
                    p.grad.mul_((self.cfg.clip_grad / (p.grad.norm() + 1e-6)).clamp(max=1.0))
        if self.epoch < self.cfg.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_step_end(self, step: int, total_steps: int) -> None:
        m = momentum_at(step, total_steps, self.cfg.momentum, self.cfg.momentum_end)
        ema_update_(self.teacher_backbone, self.backbone, m)
        ema_update_(self.teacher_head, self.head, m)


__all__ = ["DINO", "DINOConfig"]

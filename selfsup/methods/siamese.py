"""What the Siamese methods share (MoCo v2/v3, BYOL, SimSiam, Barlow Twins, VICReg): two augmented views of every
image, each with its own augmentation (BYOL's asymmetric blur and solarisation), each run through the encoder on
its own.

Not a method itself: each of those is its own file, built on TwoViewMethod.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from selfsup.augmentation import MultiCropConfig, multi_crop_configs
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, Method

__all__ = ["TwoViewMethod", "byol_views", "symmetric_views", "grouped_forward"]


def byol_views() -> MultiCropConfig:
    """BYOL's two views (Grill et al. 2020, table 6), which MoCo v3, Barlow Twins and VICReg also use: blur always on
    the first, with p 0.1 on the second, which alone is solarised (p 0.2); crops of 8-100% of the image."""
    return MultiCropConfig(global_crops=2, global_scale=(0.08, 1.0), local_crops=0, global_blur_p=[1.0, 0.1],
                           global_solarize_p=[0.0, 0.2])


def symmetric_views(scale: tuple[float, float] = (0.2, 1.0)) -> MultiCropConfig:
    """Two views drawn alike with the run's augment section (MoCo v2, SimSiam: crops of 20-100%)."""
    return MultiCropConfig(global_crops=2, global_scale=scale, local_crops=0)


def grouped_forward(net: nn.Module, x: torch.Tensor, group: int) -> torch.Tensor:
    """net(x) with batch-norm statistics over consecutive groups of `group` samples (0: the whole batch).

    One process emulates the per-GPU batch norm of a multi-GPU run this way (MoCo's notebook for one GPU splits its
    batch norm likewise); the running statistics are updated once per group.
    """
    if group <= 0 or group >= len(x):
        return net(x)
    return torch.cat([net(part) for part in x.split(group)])


class TwoViewMethod(Method):
    """A method that compares two views of every image (cfg.crops: exactly two global crops, no local ones)."""

    def __init__(self, backbone, cfg=None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        crops = self.cfg.crops
        if crops.global_crops != 2 or crops.local_crops:
            raise SelfSupError(f"{self.name} compares two views: set {self.name}.crops.global_crops=2 and "
                               f"{self.name}.crops.local_crops=0 (got {crops.global_crops} and {crops.local_crops})")
        self.crop_augs = multi_crop_configs(self.aug, crops, f"{self.name}.crops")

    def views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views of every image."""
        first, second = self.crops(batch, self.crop_augs)
        return first, second

    def projections(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """head(backbone(view)) of each view (the methods whose loss compares the projections themselves)."""
        x1, x2 = self.views(batch)
        return self.each(lambda x: self.head(self.backbone(x)), x1, x2)

    @staticmethod
    def each(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """net over each view on its own: batch-norm statistics are per view, as in the authors' code of all six
        (SimCLR, which joins the views into one batch, differs)."""
        return net(x1), net(x2)

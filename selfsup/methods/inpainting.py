"""Context encoder (Pathak et al. 2016): fill in a missing region of an image from its surroundings.

An encoder (the backbone, up to its last spatial map) and a decoder (transposed convs back to full size)
predict the pixels of a masked region. The input has the region erased except for an `overlap`-pixel rim
just inside its border; the network predicts the whole region, rim included, and the L2 loss weights the rim
10x, as in the paper, so the fill blends with its context. Masks cover `mask_fraction` of the image (1/4
by default) and are one of:
- central: the centred square;
- blocks: squares of side S/4 at random places, added until they cover the fraction;
- regions: random blobs (smooth noise thresholded at the fraction), standing in for the paper's shapes
  taken from PASCAL segmentations, which are not available offline.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.augment import AugmentConfig
from selfsup.config import InpaintingConfig
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, Method
from selfsup.nets import Backbone

MASKS = ("central", "blocks", "regions")


def make_masks(kind: str, n: int, size: int, fraction: float, generator: torch.Generator, device) -> torch.Tensor:
    """(n,1,size,size) float masks, 1 where the image is missing."""
    if kind == "central":
        side = round(size * fraction ** 0.5)
        start = (size - side) // 2
        m = torch.zeros(n, 1, size, size, device=device)
        m[..., start:start + side, start:start + side] = 1
        return m
    if kind == "blocks":
        side, tries = max(1, size // 4), 4 * max(1, round(fraction * 16)) + 4
        yx = torch.randint(0, size - side + 1, (n, tries, 2), generator=generator, device=device)
        ar = torch.arange(size, device=device)
        rows = (ar[None, None] >= yx[..., :1]) & (ar[None, None] < yx[..., :1] + side)  # (n, tries, size)
        cols = (ar[None, None] >= yx[..., 1:]) & (ar[None, None] < yx[..., 1:] + side)
        union = torch.cummax((rows[..., :, None] & cols[..., None, :]).float(), dim=1).values  # first k blocks
        enough = union.mean(dim=(2, 3)) >= fraction
        first = torch.where(enough.any(1), enough.float().argmax(1), torch.full((n,), tries - 1, device=device))
        return union[torch.arange(n, device=device), first][:, None]
    if kind == "regions":
        coarse = torch.rand(n, 1, max(2, size // 8), max(2, size // 8), generator=generator, device=device)
        smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        threshold = torch.quantile(smooth.flatten(1), 1 - fraction, dim=1)
        return (smooth > threshold[:, None, None, None]).float()
    raise SelfSupError(f"inpainting.mask must be one of {', '.join(MASKS)}, got {kind!r}")


def erode(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """The mask shrunk by `pixels` on every side (a min-filter)."""
    if pixels <= 0:
        return mask
    return -F.max_pool2d(-mask, 2 * pixels + 1, stride=1, padding=pixels)


class ContextEncoder(Method):
    """Backbone as encoder + a transposed-conv decoder to full resolution, trained to inpaint."""

    def __init__(self, backbone: Backbone, aug: AugmentConfig, cfg: InpaintingConfig, input_size: int):
        super().__init__()
        if cfg.mask not in MASKS:
            raise SelfSupError(f"inpainting.mask must be one of {', '.join(MASKS)}, got {cfg.mask!r}")
        if not 0 < cfg.mask_fraction < 1:
            raise SelfSupError(f"inpainting.mask_fraction must be between 0 and 1, got {cfg.mask_fraction}")
        self.backbone = backbone
        self.aug = aug
        self.cfg = cfg
        self.input_size = input_size
        self.encoder_tap, shape = backbone.last_spatial_tap(input_size)
        channels, size = shape[0], shape[-1]
        layers: list[nn.Module] = []
        width = cfg.decoder_width
        cin = channels
        while size < input_size:
            layers += [nn.ConvTranspose2d(cin, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            cin, size = width, size * 2
            width = max(16, width // 2)
        if size != input_size:
            raise SelfSupError(f"the {self.encoder_tap} map ({shape[-1]} px) does not double up to {input_size} px")
        layers.append(nn.Conv2d(cin, 3, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def masks(self, n: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(region to predict, region erased from the input): the second is the first minus its overlap rim."""
        region = make_masks(self.cfg.mask, n, self.input_size, self.cfg.mask_fraction, generator, device)
        return region, erode(region, self.cfg.overlap)

    def inpaint(self, x: torch.Tensor, erased: torch.Tensor) -> torch.Tensor:
        """The decoder's full-size prediction for normalised images x with `erased` pixels set to 0 (the mean)."""
        inp = x * (1 - erased)
        inp = inp.contiguous(memory_format=torch.channels_last) if self.channels_last else inp
        fmap = self.backbone.forward_taps(inp, [self.encoder_tap])[self.encoder_tap]
        return self.decoder(fmap).float()

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.view(batch, self.aug).float()
        region, erased = self.masks(len(x), batch.generator, x.device)
        pred = self.inpaint(x, erased)
        weight = erased + self.cfg.overlap_weight * (region - erased)  # the rim counts 10x
        loss = (weight * (pred - x) ** 2).sum() / (3 * region.sum()).clamp_min(1)
        return {"loss": loss}


__all__ = ["ContextEncoder", "make_masks", "erode", "MASKS"]

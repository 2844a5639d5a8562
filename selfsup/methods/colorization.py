"""Colorization (Zhang, Isola, Efros 2016): predict an image's colours (Lab's ab) from its lightness (L).

The backbone sees L alone (scaled to the network's input range and repeated over the three input channels,
so every backbone works unchanged). A 1x1 conv on its last spatial map predicts, per location, a
distribution over quantised ab bins, trained against soft targets (each pixel's 5 nearest bins, Gaussian
weights with sigma 5) with class rebalancing: bin q is weighted by ((1 - lambda) p(q) + lambda / Q)^-1,
normalised to mean 1 under p, where p is the bins' frequency over the training images smoothed with a
Gaussian (sigma 5) and lambda = 0.5. Targets are taken at the map's resolution (ab average-pooled).

Bins are 10x10 cells of the ab plane whose area meets the sRGB gamut at some lightness: 262 of them (the
paper's 313 are the cells occupied in ImageNet, from a slightly different conversion). `loss: regression`
is the plain alternative: two output channels and an L2 loss on ab / 110.
The annealed mean (T = 0.38) turns a predicted distribution back into colours.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from kornia.color import lab_to_rgb, rgb_to_lab

from selfsup.augmentation import augment_unit, resize, to_float
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, Method
from selfsup.methods.registry import register_method
from selfsup.nets import eval_mode

AB_RANGE = 110.0


@dataclass
class ColorizationConfig:
    """Colorization: ab bins, class rebalancing and the annealed-mean readout (Zhang et al. 2016)."""

    RANGES: ClassVar[dict[str, str]] = {"bin_size": "(0, inf)", "rebalance": "[0, 1]", "temperature": "(0, inf)"}

    loss: str = "classification"  # classification over ab bins | regression (L2 on ab)
    bin_size: float = 10.0
    rebalance: float = 0.5  # lambda: mix of the empirical bin prior and uniform
    temperature: float = 0.38  # annealed mean


def gamut_bins(step: float = 10.0) -> torch.Tensor:
    """(Q,2) centres of the step x step ab cells that contain an sRGB colour at some lightness."""
    centres = torch.arange(-AB_RANGE, AB_RANGE + 1e-6, step)
    a, b = torch.meshgrid(centres, centres, indexing="ij")
    ab = torch.stack([a.flatten(), b.flatten()], 1)
    offsets = torch.linspace(-step / 2, step / 2, 6)
    oa, ob = torch.meshgrid(offsets, offsets, indexing="ij")
    points = (ab[:, None] + torch.stack([oa.flatten(), ob.flatten()], 1)[None]).reshape(-1, 2)
    light = torch.arange(0.0, 100.5, 1.0)
    lab = torch.stack([light[:, None].expand(-1, len(points)), points[None, :, 0].expand(len(light), -1),
                       points[None, :, 1].expand(len(light), -1)])[None]
    rgb = lab_to_rgb(lab, clip=False)[0]
    inside = ((rgb >= 0) & (rgb <= 1)).all(0).any(0).view(len(ab), -1).any(1)
    return ab[inside]


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """ab (B,2,H,W) -> (B,Q,H,W) soft targets: Gaussian weights on the `neighbours` nearest bins, summing to 1."""
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    d2 = torch.cdist(flat, bins.to(flat)) ** 2
    near, idx = d2.topk(neighbours, dim=1, largest=False)
    w = torch.softmax(-near / (2 * sigma ** 2), dim=1)
    target = torch.zeros(len(flat), len(bins), device=ab.device, dtype=ab.dtype).scatter_(1, idx, w)
    b, _, h, wd = ab.shape
    return target.view(b, h, wd, -1).permute(0, 3, 1, 2)


def rebalancing_weights(prior: torch.Tensor, bins: torch.Tensor, lam: float = 0.5, sigma: float = 5.0) -> torch.Tensor:
    """Zhang et al.'s class-rebalancing weights from bin frequencies `prior` (Q,): mean 1 under the smoothed prior."""
    d2 = torch.cdist(bins, bins) ** 2
    smoothed = torch.exp(-d2 / (2 * sigma ** 2)) @ prior
    smoothed = smoothed / smoothed.sum()
    w = 1.0 / ((1 - lam) * smoothed + lam / len(bins))
    return w / (smoothed * w).sum()


def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """(B,Q,H,W) logits -> (B,2,H,W) ab: the mean of the distribution sharpened by 1/T (T=1: mean, T->0: mode)."""
    p = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", p, bins.to(p))


def lightness_input(lab: torch.Tensor) -> torch.Tensor:
    """The network input: L in [0,100] mapped to [-1,1] and repeated over three channels."""
    return (lab[:, :1] / 50.0 - 1.0).expand(-1, 3, -1, -1)


@register_method("colorization", config=ColorizationConfig)
class Colorization(Method):
    """Backbone on L + a 1x1 conv on its last spatial map predicting ab bins (or ab itself).

    Its input_transform is L alone, so evaluation (probes, kNN) sees what training saw.
    """

    cfg: ColorizationConfig
    input_description: ClassVar[str] = ("CIE L* of the sRGB input (0..100) as L/50 - 1, the same in all three channels "
                                        "(selfsup.methods.colorization.lightness_input)")

    def __init__(self, backbone, cfg: ColorizationConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        cfg = self.cfg
        if cfg.loss not in ("classification", "regression"):
            raise SelfSupError(f"colorization.loss must be classification or regression, got {cfg.loss!r}")
        # Colours are the target: only the geometric part of the augmentation applies.
        self.aug = dataclasses.replace(self.aug, jitter_p=0.0, grayscale_p=0.0, solarize_p=0.0)
        self.encoder_tap, shape = self.backbone.last_spatial_tap(self.data.input_size)
        self.register_buffer("bins", gamut_bins(cfg.bin_size))
        self.register_buffer("weights", torch.ones(len(self.bins)))
        out = len(self.bins) if cfg.loss == "classification" else 2
        self.decoder = nn.Conv2d(shape[0], out, 1)

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0,1] -> the lightness alone, as the network sees it (see lightness_input)."""
        return lightness_input(rgb_to_lab(x))

    def on_train_start(self, images: torch.Tensor) -> None:
        """Bin frequencies over (a sample of) the training images -> rebalancing weights."""
        if self.cfg.loss != "classification":
            return
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:2000]
        sample = images[pick.to(images.device)]
        prior = torch.zeros(len(self.bins), dtype=torch.float64, device=images.device)
        for part in sample.split(100):  # in parts: all 2,000 images' pixel-to-bin distances at once take 2 GB
            ab = rgb_to_lab(to_float(part))[:, 1:].permute(0, 2, 3, 1).reshape(-1, 2)
            prior += torch.bincount(torch.cdist(ab, self.bins).argmin(1), minlength=len(self.bins))
        self.weights.copy_(rebalancing_weights(prior / prior.sum(), self.bins.double(), self.cfg.rebalance).float())

    def predict(self, lab: torch.Tensor) -> torch.Tensor:
        """Decoder output at the encoder map's resolution: (B,Q,h,w) logits or (B,2,h,w) ab / 110."""
        x = lightness_input(lab)
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()
        fmap = self.backbone.forward_taps(x, [self.encoder_tap])[self.encoder_tap]
        return self.decoder(fmap).float()

    def colorize(self, lab: torch.Tensor) -> torch.Tensor:
        """RGB (B,3,H,W) in [0,1]: the input's L with the predicted ab, upsampled to full resolution."""
        out = self.predict(lab)
        if self.cfg.loss == "classification":
            ab = annealed_mean(out, self.bins, self.cfg.temperature)
        else:
            ab = out * AB_RANGE
        ab = F.interpolate(ab, size=lab.shape[-2:], mode="bilinear", align_corners=False)
        return lab_to_rgb(torch.cat([lab[:, :1], ab], 1), clip=True)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        lab = self.draw(lambda: rgb_to_lab(augment_unit(batch.images, self.aug, batch.generator)), batch.images.device)
        out = self.predict(lab)
        ab = F.adaptive_avg_pool2d(lab[:, 1:], out.shape[-2:])
        if self.cfg.loss == "regression":
            return {"loss": F.mse_loss(out, ab / AB_RANGE)}
        target = soft_encode(ab, self.bins)
        per_pixel = -(target * F.log_softmax(out, dim=1)).sum(1)
        weight = self.weights[target.argmax(1)]
        return {"loss": (weight * per_pixel).mean()}

    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray:
        """Rows: the grayscale input (L alone), the colours predicted for it, the true colours."""
        from selfsup.report import image_rows  # matplotlib is imported only to make a picture

        with torch.no_grad(), eval_mode(self):
            rgb = resize(to_float(images), self.data.input_size)
            lab = rgb_to_lab(rgb)
            gray = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1), clip=True)
            return image_rows([gray, self.colorize(lab), rgb])


__all__ = ["Colorization", "ColorizationConfig", "gamut_bins", "soft_encode", "rebalancing_weights", "annealed_mean",
           "lightness_input"]

"""Exemplar-CNN's data side (Dosovitskiy et al. 2014): seed patches at high-gradient places, and the random
transformations that turn each seed into a surrogate class.

Seeds are 32x32 patches cut from source images resized to `image_size` (CIFAR's 32x32 is upsampled to
64x64 first, STL-10 stays 96x96). A patch position is drawn with probability proportional to the patch's
squared gradient magnitude (the mean over its pixels of the squared Sobel response of the grey image), so
seeds sit on objects and their parts rather than on sky or walls. Weighting whole patches, not their centre
pixel, keeps a flat patch with a single edge pixel at its centre from being picked.

Each seed is stored with its context: the 2P x 2P window of the resized image around it (reflected at
the image border), so the scaled, rotated and translated copies draw real neighbouring pixels. Copies are
made on the fly, in batches on the training device, so the surrogate dataset is never written out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from kornia.color import hsv_to_rgb, rgb_to_hsv

from selfsup.augmentation import GRAY, to_float
from selfsup.data.stream import chunks
from selfsup.errors import SelfSupError
from selfsup.progress import Progress


@dataclass
class ExemplarTransformConfig:
    """Ranges of the paper's six transformation families; a range collapsed to its neutral value turns it off."""

    RANGES: ClassVar[dict[str, str]] = {
        "translate": "[0, 1]",
        "scale": "(0, inf) ordered",  # log-uniform: no 0
        "rotation": "[0, 180]",
        "pca_contrast": "(0, inf) ordered",
        "sv_power": "(0, inf) ordered",
        "sv_scale": "[0, inf) ordered",
        "sv_shift": "[-1, 1] ordered",
        "hue": "[-0.5, 0.5] ordered",
    }

    translate: float = 0.2  # fraction of the patch size, uniform in [-t, t] on each axis
    scale: tuple[float, float] = (0.7, 1.4)  # zoom factor, log-uniform
    rotation: float = 20.0  # degrees, uniform in [-r, r]
    pca_contrast: tuple[float, float] = (0.5, 2.0)  # factor per principal component of the pixel colours, log-uniform
    sv_power: tuple[float, float] = (0.25, 4.0)  # saturation and value raised to this power, log-uniform
    sv_scale: tuple[float, float] = (0.7, 1.4)  # then multiplied by this, uniform
    sv_shift: tuple[float, float] = (-0.1, 0.1)  # then this is added, uniform
    hue: tuple[float, float] = (-0.1, 0.1)  # hue shift, fraction of a full turn, uniform


@dataclass
class Seeds:
    """N seed patches: where they came from and their context windows (uint8, N x 2P x 2P x 3)."""

    image_index: np.ndarray  # (N,) index into the source split
    top_left: np.ndarray  # (N, 2) y, x of the patch in the resized source image
    context: np.ndarray  # (N, 2P, 2P, 3) uint8, the patch at the centre
    patch: int
    image_size: int


def gradient_energy(x: torch.Tensor) -> torch.Tensor:
    """Squared Sobel gradient magnitude of the grey image: (B,3,H,W) in [0,1] -> (B,H,W)."""
    grey = (x * torch.tensor(GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype) / 8
    kernels = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    return (g * g).sum(1)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float (B,3,size,size) in [0,1]; bilinear, antialiased when shrinking."""
    x = to_float(images)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return x


def sample_seeds(images: np.ndarray | torch.Tensor, num_seeds: int, patch: int = 32, image_size: int = 64,
                 seed: int = 0, batch_size: int = 512) -> Seeds:
    """Draw `num_seeds` patches, one per source image (images are reused only when there are fewer than seeds)."""
    n = len(images)
    if num_seeds < 1:
        raise SelfSupError(f"exemplar.num_seeds must be at least 1, got {num_seeds}")
    if n == 0:
        raise SelfSupError("cannot sample seed patches from an empty image source")
    if patch > image_size:
        raise SelfSupError(f"exemplar.patch ({patch}) cannot be larger than exemplar.image_size ({image_size})")
    g = torch.Generator().manual_seed(seed)
    if num_seeds <= n:
        picks = torch.randperm(n, generator=g)[:num_seeds]
    else:
        picks = torch.randint(n, (num_seeds,), generator=g)
    # Context windows are cut from the image reflected by P/2 on every side, so a patch at the border still has
    # a full 2P x 2P neighbourhood (reflection needs image_size > P/2, which patch <= image_size guarantees).
    pad = patch // 2
    contexts, corners = [], []
    bar = Progress(-(-num_seeds // batch_size), f"sampling {num_seeds:,} seed patches", unit="seeds",
                   per_step=batch_size)
    for start in range(0, num_seeds, batch_size):
        idx = picks[start:start + batch_size]
        batch = torch.as_tensor(np.asarray(images[idx.sort().values.numpy()]))  # memory maps read best in order
        batch = batch[torch.argsort(torch.argsort(idx))]
        x = resize_images(batch, image_size)
        # Mean squared gradient of every P x P window = probability weight of that top-left corner.
        energy = F.avg_pool2d(gradient_energy(x)[:, None], patch, stride=1)[:, 0]
        weights = energy.flatten(1) + 1e-12  # a perfectly flat image falls back to uniform positions
        pos = torch.multinomial(weights, 1, generator=g)[:, 0]
        cols = energy.shape[2]
        y, xx = pos // cols, pos % cols
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        # The patch's top-left (y, x) sits at (y + pad, x + pad) in the padded image; its context starts P/2 before.
        rows = y[:, None] + torch.arange(2 * patch)[None]  # (B, 2P) rows in the padded image
        colsx = xx[:, None] + torch.arange(2 * patch)[None]
        b = torch.arange(len(idx))[:, None, None]
        ctx = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], colsx[:, None, :]]
        contexts.append(ctx.mul(255).round_().to(torch.uint8))
        corners.append(torch.stack([y, xx], 1))
        bar.update()
    bar.close()
    return Seeds(picks.numpy(), torch.cat(corners).numpy(), torch.cat(contexts).numpy(), patch, image_size)


def pixel_pca(images, max_pixels: int = 1_000_000, seed: int = 0,
              chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes (rows, 3x3) and mean of the RGB values of uint8 images (N,H,W,3), from a pixel sample.

    `images` is a tensor or the run's Images (streamed ones too): they are read `chunk` images at a time, and the
    sampled pixels are put back in the order they were drawn, so the result is the same either way."""
    n, hw = len(images), images.shape[1] * images.shape[2]
    if n * hw > max_pixels:
        pick = torch.randint(n * hw, (max_pixels,), generator=torch.Generator().manual_seed(seed))
        sorted_pick, where = pick.sort()
        bounds = torch.searchsorted(sorted_pick, torch.arange(0, n + chunk, chunk) * hw)
        parts = []
        for i, part in enumerate(chunks(images, 0, n, chunk)):
            p = sorted_pick[bounds[i]:bounds[i + 1]] - i * chunk * hw
            parts.append(part.reshape(-1, 3)[p.to(part.device)].cpu())
        flat = torch.empty((max_pixels, 3), dtype=torch.uint8)
        flat[where] = torch.cat(parts)
    else:
        flat = torch.cat([part.reshape(-1, 3).cpu() for part in chunks(images, 0, n, chunk)])
    rgb = flat.double() / 255
    mean = rgb.mean(0)
    _, axes = torch.linalg.eigh(torch.cov((rgb - mean).T))  # columns are the principal axes
    return axes.T.float(), mean.float()


def save_seeds(seeds: Seeds, path: Path) -> None:
    """Write the seeds to `path` (.npz) atomically."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, image_index=seeds.image_index, top_left=seeds.top_left, context=seeds.context,
             patch=seeds.patch, image_size=seeds.image_size)
    os.replace(tmp, path)


def load_seeds(path: Path) -> Seeds:
    """Seeds written by save_seeds."""
    if not path.is_file():
        raise SelfSupError(f"no seed file {path}; it is written when an exemplar run starts")
    with np.load(path) as z:
        return Seeds(z["image_index"], z["top_left"], z["context"], int(z["patch"]), int(z["image_size"]))


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _log_uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.exp(_uniform(n, math.log(low), math.log(high), g, device))


def transform(images: torch.Tensor, cfg: ExemplarTransformConfig, generator: torch.Generator, out_size: int,
              region: float, pca_axes: torch.Tensor, pixel_mean: torch.Tensor, return_params: bool = False):
    """Randomly transformed copies: uint8 (B,C,C,3) -> RGB floats in [0,1], (B,3,out,out).

    At scale 1 the output covers the central `region` fraction of each input (out/C for seed contexts, 1 for
    whole images); translation is relative to that covered size. Geometry is one affine warp per sample, then
    PCA contrast (a 3x3 colour map per sample), then saturation/value power-scale-shift and the hue shift in HSV.
    With return_params, also the drawn parameters (degrees, zoom, shift in patch sizes, colour factors).
    """
    n, device = images.shape[0], images.device
    x = to_float(images)
    angle = torch.deg2rad(_uniform(n, -cfg.rotation, cfg.rotation, generator, device))
    zoom = _log_uniform(n, *cfg.scale, generator, device)
    shift = _uniform(2 * n, -cfg.translate, cfg.translate, generator, device).view(n, 2) * 2 * region
    half = region / zoom  # half-extent of the sampled square in normalised input coordinates
    cos, sin = torch.cos(angle) * half, torch.sin(angle) * half
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # Contrast 1: scale each principal component of the colour (about the seed pixels' mean) independently.
    factors = _log_uniform(3 * n, *cfg.pca_contrast, generator, device).view(n, 3)
    axes, mean = pca_axes.to(device, x.dtype), pixel_mean.to(device, x.dtype)
    colour = axes.T @ torch.diag_embed(factors) @ axes  # (B,3,3)
    bias = mean - colour @ mean
    x = torch.baddbmm(bias[:, :, None], colour, x.flatten(2)).view_as(x).clamp_(0, 1)

    # Contrast 2 and colour, in HSV: s,v <- clamp(s^p * m + a); hue turned by a fraction of a circle.
    hsv = rgb_to_hsv(x)
    power = _log_uniform(2 * n, *cfg.sv_power, generator, device).view(n, 2, 1, 1)
    mult = _uniform(2 * n, *cfg.sv_scale, generator, device).view(n, 2, 1, 1)
    add = _uniform(2 * n, *cfg.sv_shift, generator, device).view(n, 2, 1, 1)
    turn = _uniform(n, *cfg.hue, generator, device).view(n, 1, 1, 1)
    sv = (hsv[:, 1:].clamp_min(0) ** power * mult + add).clamp_(0, 1)
    h = torch.remainder(hsv[:, :1] + 2 * math.pi * turn, 2 * math.pi)
    out = hsv_to_rgb(torch.cat([h, sv], 1)).clamp_(0, 1)
    if not return_params:
        return out
    params = {"angle": torch.rad2deg(angle), "zoom": zoom, "shift": shift / (2 * region), "pca_factors": factors,
              "sv_power": power.flatten(1), "sv_scale": mult.flatten(1), "sv_shift": add.flatten(1),
              "hue": turn.flatten()}
    return out, params


__all__ = ["ExemplarTransformConfig", "Seeds", "gradient_energy", "sample_seeds", "pixel_pca", "save_seeds",
           "load_seeds", "transform", "resize_images"]

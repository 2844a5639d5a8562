"""Frozen-feature extraction: the final representation, or every tap pooled for linear probes."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.augmentation import normalize, to_input
from selfsup.nets import Backbone, eval_mode
from selfsup.progress import Progress

Transform = Callable[[torch.Tensor], torch.Tensor]  # RGB in [0,1] -> what the backbone sees (Method.input_transform)


def probe_pool(fmap: torch.Tensor, target_dims: int = 9600) -> torch.Tensor:
    """Average-pool a (B,C,H,W) map to s x s with C*s*s close to target_dims (flat maps pass through)."""
    if fmap.dim() == 2:
        return fmap
    c, h = fmap.shape[1], fmap.shape[2]
    s = max(1, min(h, round(math.sqrt(target_dims / c))))
    return F.adaptive_avg_pool2d(fmap, s).flatten(1)


def _batches(images, batch_size: int, device: torch.device, what: str = "features"):
    with Progress(-(-len(images) // batch_size), f"{what} of {len(images):,} images", unit="img",
                  per_step=batch_size) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if isinstance(chunk, np.ndarray):
                chunk = torch.from_numpy(np.require(chunk, requirements=["C", "W"]))  # read-only maps are copied
            yield chunk.to(device, non_blocking=True)
            bar.update()


@torch.no_grad()
def extract_features(backbone: Backbone, images, size: int, device: torch.device, batch_size: int = 512,
                     transform: Transform = normalize) -> torch.Tensor:
    """The backbone's flat representation (float32) for uint8 images (N,H,W,3), in eval mode."""
    with eval_mode(backbone):
        return torch.cat([backbone(to_input(x, size, transform)).float() for x in _batches(images, batch_size, device)])


@torch.no_grad()
def extract_taps(backbone: Backbone, images, size: int, device: torch.device, layers: list[str],
                 target_dims: int = 9600, batch_size: int = 512, dtype: torch.dtype = torch.float16,
                 transform: Transform = normalize) -> dict[str, torch.Tensor]:
    """Every requested tap, pooled to ~target_dims, for all images in one pass; stored on the CPU in `dtype`."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with eval_mode(backbone):
        for x in _batches(images, batch_size, device, f"{len(layers)} taps' features"):
            for name, fmap in backbone.forward_taps(to_input(x, size, transform), layers).items():
                parts[name].append(probe_pool(fmap.float(), target_dims).to("cpu", dtype))
    return {name: torch.cat(p) for name, p in parts.items()}

"""Frozen-feature extraction: the final representation, or every tap pooled for linear probes."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.augment import to_input
from selfsup.nets import Backbone


def probe_pool(fmap: torch.Tensor, target_dims: int = 9600) -> torch.Tensor:
    """Average-pool a (B,C,H,W) map to s x s with C*s*s close to target_dims (flat maps pass through)."""
    if fmap.dim() == 2:
        return fmap
    c, h = fmap.shape[1], fmap.shape[2]
    s = max(1, min(h, round(math.sqrt(target_dims / c))))
    return F.adaptive_avg_pool2d(fmap, s).flatten(1)


def _batches(images, batch_size: int, device: torch.device):
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.require(chunk, requirements=["C", "W"]))  # read-only memory maps are copied
        yield chunk.to(device, non_blocking=True)


@torch.no_grad()
def extract_features(backbone: Backbone, images, size: int, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """The backbone's flat representation (float32) for uint8 images (N,H,W,3), in eval mode."""
    was_training = backbone.training
    backbone.eval()
    out = [backbone(to_input(x, size)).float() for x in _batches(images, batch_size, device)]
    backbone.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def extract_taps(backbone: Backbone, images, size: int, device: torch.device, layers: list[str],
                 target_dims: int = 9600, batch_size: int = 512, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Every requested tap, pooled to ~target_dims, for all images in one pass; stored on the CPU in `dtype`."""
    was_training = backbone.training
    backbone.eval()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    for x in _batches(images, batch_size, device):
        for name, fmap in backbone.forward_taps(to_input(x, size), layers).items():
            parts[name].append(probe_pool(fmap.float(), target_dims).to("cpu", dtype))
    backbone.train(was_training)
    return {name: torch.cat(p) for name, p in parts.items()}

"""Frozen-feature extraction: the final representation, or every tap pooled for linear probes."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.augmentation import normalize, to_input
from selfsup.data.stream import DEFAULT_RAM_SHARE, Images, chunks, device_budget, host_buffer
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
    """uint8 images (a tensor, or a host array such as the memory-mapped cache) in consecutive chunks on the device.

    A host array is streamed (selfsup.data.stream): read a few chunks ahead by a background thread, through pinned
    memory on CUDA, and never copied whole, so a pass over ImageNet holds a few chunks at a time."""
    source = Images(images, device, resident=False) if isinstance(images, np.ndarray) else images
    with Progress(-(-len(images) // batch_size), f"{what} of {len(images):,} images", unit="img",
                  per_step=batch_size) as bar:
        try:
            for chunk in chunks(source, 0, len(images), batch_size):
                yield chunk.to(device, non_blocking=True)
                bar.update()
        finally:
            if isinstance(source, Images):
                source.close()


@torch.no_grad()
def extract_features(backbone: Backbone, images, size: int, device: torch.device, batch_size: int = 512,
                     transform: Transform = normalize) -> torch.Tensor:
    """The backbone's flat representation (float32) for uint8 images (N,H,W,3), in eval mode: on the device when
    they fit its budget (half of the free memory on CUDA), else on the host (see host_buffer)."""
    device = torch.device(device)
    out, start = None, 0
    with eval_mode(backbone):
        for x in _batches(images, batch_size, device):
            f = backbone(to_input(x, size, transform)).float()
            if out is None:
                shape = (len(images), f.shape[1])
                fits = math.prod(shape) * 4 <= device_budget(None, device)
                out = torch.empty(shape, device=device) if fits else host_buffer(shape, torch.float32)
            out[start:start + len(f)] = f.to(out.device)
            start += len(f)
    return out if out is not None else torch.empty(0, device=device)


@torch.no_grad()
def extract_taps(backbone: Backbone, images, size: int, device: torch.device, layers: list[str],
                 target_dims: int = 9600, batch_size: int = 512, dtype: torch.dtype = torch.float16,
                 transform: Transform = normalize) -> dict[str, torch.Tensor]:
    """Every requested tap, pooled to ~target_dims, for all images in one pass; stored on the host in `dtype` (in a
    file of the cache folder when larger than RAM allows, see host_buffer)."""
    out: dict[str, torch.Tensor] = {}
    start = 0
    with eval_mode(backbone):
        for x in _batches(images, batch_size, device, f"{len(layers)} taps' features"):
            pooled = {name: probe_pool(fmap.float(), target_dims).to("cpu", dtype)
                      for name, fmap in backbone.forward_taps(to_input(x, size, transform), layers).items()}
            if not out:  # every tap's buffer sized at once: in RAM only if all of them fit together
                total = sum(p.shape[1] for p in pooled.values())
                out = {name: host_buffer((len(images), p.shape[1]), dtype, DEFAULT_RAM_SHARE * p.shape[1] / total)
                       for name, p in pooled.items()}
            for name, p in pooled.items():
                out[name][start:start + len(p)] = p
            start += len(x)
    return {name: out[name] for name in layers if name in out}

"""What a run trains on: a source, an ImageArray or in-memory uint8 images, made imbalanced, cut to a subset, or
turned into many images by the single-image augmentation when there are fewer than a batch."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from selfsup.augmentation import synthesize
from selfsup.config import IN_MEMORY, Config, config_to_dict
from selfsup.data import ImageArray, imbalanced, load_source, subset
from selfsup.data.cache import cache_key, made_once
from selfsup.data.stream import DEFAULT_RAM_SHARE, available_ram
from selfsup.errors import SelfSupError

SYNTH_VERSION = 1  # part of a synthesised file's key: bump it when selfsup.augmentation.synthesize changes


def as_image_array(images) -> ImageArray:
    """uint8 images (N,H,W,3) or (N,3,H,W), a torch tensor or a numpy array, as an unlabelled ImageArray (N,H,W,3)."""
    if isinstance(images, ImageArray):
        return images
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise SelfSupError(f"training data must be a source spec, an ImageArray or uint8 images, "
                           f"got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise SelfSupError(f"training images must be uint8 (values 0..255), got {images.dtype}; e.g. "
                           "(x * 255).round().to(torch.uint8) for floats in [0,1]")
    if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
        raise SelfSupError(f"training images must be (N,H,W,3) or (N,3,H,W), got shape {images.shape}")
    if images.shape[-1] != 3:
        images = images.transpose(0, 2, 3, 1)
    if len(images) == 0:
        raise SelfSupError("training images: the array is empty")
    return ImageArray(IN_MEMORY, np.ascontiguousarray(images))


def source_images(cfg: Config, data=None) -> ImageArray:
    """The training images: `data` (a source spec, an ImageArray or uint8 images), else cfg.data.source's split;
    made imbalanced or cut to data.num_images when asked (nothing synthesised yet).

    Given images are recorded as data.source=memory in cfg (a config cannot reload them)."""
    d = cfg.data
    if isinstance(data, str):
        d.source, data = data, None
    if data is None:
        if d.source == IN_MEMORY:
            raise SelfSupError("this run trained on images given to selfsup.fit, which its config cannot reload; pass "
                               "them again (fit(method, images, ...)) or set data.source")
        arr = load_source(d.source, d.split, d.root, d.download, d.size, d.bad_images, d.workers)
    else:
        arr = as_image_array(data)
        d.source = IN_MEMORY
    if d.imbalance:
        arr = imbalanced(arr, d.imbalance, cfg.seed)
    if d.num_images:
        arr = subset(arr, d.num_images, cfg.seed)
    return arr


def training_data(cfg: Config, arr: ImageArray, per_sample_state: bool) -> tuple[ImageArray, bool]:
    """What a run trains on, and whether every batch is synthesised afresh from it.

    A source with fewer images than a batch (one photograph) is augmented into new images: fresh ones at every
    step, except for methods that keep something per training sample, which need the same images every epoch; for
    them data.samples_per_epoch images are synthesised once, deterministically under the seed.
    """
    d = cfg.data
    synth = d.synthesize if d.synthesize is not None else len(arr) < cfg.batch_size
    if synth and not d.samples_per_epoch:
        raise SelfSupError(f"{d.source} holds {len(arr)} image(s), fewer than a batch; set data.samples_per_epoch "
                           "(e.g. 50000) to say how many synthesised images make an epoch")
    if not per_sample_state:
        return arr, synth
    if not synth:
        if d.samples_per_epoch:
            raise SelfSupError(f"{cfg.method} keeps one label per training image; it cannot resample real images "
                               "(unset data.samples_per_epoch)")
        return arr, False
    images = torch.from_numpy(np.array(arr.images))
    name = f"{arr.name}[{d.samples_per_epoch} synthesised]"
    side = d.single_image.size
    nbytes = d.samples_per_epoch * side * side * 3
    if nbytes <= DEFAULT_RAM_SHARE * available_ram():
        return ImageArray(name, _synthesised(images, cfg).numpy(), None, []), False
    # More than fits in memory (the single-image study on ImageNet: 1,281,167 images): made once into a file of the
    # cache, chunk by chunk with the same draws (so the images are the same), and streamed from there.
    key = cache_key("synthesised", SYNTH_VERSION, arr.name, len(arr), zlib.crc32(np.ascontiguousarray(arr.images)),
                    cfg.seed, d.samples_per_epoch, _augment_key(config_to_dict(cfg)["data"]["single_image"]))

    def fill(out: np.ndarray) -> None:
        start = 0
        for part in _synthesised(images, cfg, chunks=True):
            out[start:start + len(part)] = part.numpy()
            start += len(part)

    made = made_once("synthesised", key, (d.samples_per_epoch, side, side, 3), fill,
                     f"synthesising {d.samples_per_epoch:,} images from {arr.name}")
    return ImageArray(name, made, None, []), False


# single_image keys added after files were synthesised, with the values that leave the images as they were: at those
# values they stay out of the key, so the files made before them are found again rather than made anew.
_LATER_KEYS = {"initial_crop": 0.0, "keep_center": 1.0}


def _augment_key(section: dict) -> dict:
    """The single_image section as a synthesised file's key: keys added later left out while at their defaults."""
    return {k: v for k, v in section.items() if not (k in _LATER_KEYS and v == _LATER_KEYS[k])}


def _synthesised(images: torch.Tensor, cfg: Config, chunks: bool = False):
    """cfg.data.samples_per_epoch images synthesised from `images` under the seed, 4,096 at a time: all of them
    joined, or (chunks) each 4,096 as it is made."""
    d = cfg.data
    gen = torch.Generator().manual_seed(cfg.seed)
    parts = (synthesize(images, d.single_image, gen, min(4096, d.samples_per_epoch - i))
             for i in range(0, d.samples_per_epoch, 4096))
    return parts if chunks else torch.cat(list(parts))


def run_images(cfg: Config) -> ImageArray:
    """The images a run of cfg trained its method on, made again from its source (synthesised ones too, seeded):
    what `selfsup labels` exports labels for."""
    from selfsup.methods.registry import get_method

    return training_data(cfg, source_images(cfg), get_method(cfg.method).per_sample_state)[0]


__all__ = ["as_image_array", "source_images", "training_data", "run_images"]

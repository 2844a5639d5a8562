"""Batched image augmentation with per-sample random parameters, on any device, seeded by a torch.Generator.

Input is a uint8 batch (B,H,W,3) straight from the dataset (or (B,3,H,W), or floats (B,3,H,W) in [0,1]; anything
else is a one-line error, and the caller's tensor is never modified); output is a normalised float batch (B,3,S,S).
Geometry (random resized crop, flip, rotation, shear, translation) is one affine warp per sample. Colour
jitter (brightness, contrast, saturation, hue) and grayscale are linear maps of RGB, so each sample's whole
colour pipeline, applied in a random order as torchvision does, folds into one 3x3 matrix plus a bias and
is applied with a single batched matmul. Unlike torchvision we clamp once at the end, not after every op;
hue is rotated about the grey axis in YIQ space rather than in HSV (the two agree to first order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GRAY = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


@dataclass
class AugmentConfig:
    """Every knob of the batched augmentation; ranges are (low, high)."""

    RANGES: ClassVar[dict[str, str]] = {
        "size": "[1, inf)",
        "crop_scale": "(0, 1] ordered",
        "crop_ratio": "(0, inf) ordered",
        "flip_p": "[0, 1]",
        "rotation": "[0, 180]",  # 180 already reaches every angle
        "shear": "[0, 90)",  # tan(90 degrees) is infinite
        "translate": "[0, 1]",
        "jitter_p": "[0, 1]",
        "brightness": "[0, inf)",
        "contrast": "[0, inf)",
        "saturation": "[0, inf)",
        "hue": "[0, 0.5]",
        "grayscale_p": "[0, 1]",
        "blur_p": "[0, 1]",
        "blur_sigma": "[0, inf) ordered",
        "solarize_p": "[0, 1]",
        "solarize_threshold": "[0, 1]",
        "initial_crop": "[0, 1]",
        "keep_center": "(0, 1]",
    }

    size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the source image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio w/h, sampled log-uniformly
    flip_p: float = 0.5
    rotation: float = 0.0  # degrees: uniform in [-rotation, rotation]
    shear: float = 0.0  # degrees: uniform in [-shear, shear], along x
    translate: float = 0.0  # fraction of the crop size: uniform in [-translate, translate] on each axis
    padding: str = "zeros"  # grid_sample padding for pixels warped in from outside: zeros | border | reflection
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # fraction of a full turn, <= 0.5
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    # in output pixels at 224 px; scaled with size like SimCLR's 10% kernel
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    # > 0: first a square of this fraction of the source's shorter side, at a uniformly random place (drawn anew for
    # every output image); the random resized crop (crop_scale: fractions of its area) is then drawn inside it. The
    # single-image paper's generator: 0.5 (make_dataset_single.py `RandomCrop(int(initcrop*min(img.size)))`).
    initial_crop: float = 0.0
    # The central fraction of the side kept after the crop, rotation and shear, so the rotated crop's corners are
    # left out (the single-image generator: resize to 362, rotate and shear, centre-crop 256; 256/362).
    keep_center: float = 1.0


def simclr_recipe(size: int = 32, strength: float = 0.5, blur: bool | None = None) -> AugmentConfig:
    """SimCLR's augmentation (Chen et al. 2020, App. A) with colour strength s; blur on by default above 64 px."""
    s = strength
    return AugmentConfig(
        size=size, crop_scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.8,
        brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s, grayscale_p=0.2,
        blur_p=0.5 if (blur if blur is not None else size > 64) else 0.0,
    )


@dataclass
class AugmentParams:
    """The random parameters drawn for one batch (kept for tests and for reproducing a batch)."""

    theta: torch.Tensor  # (B,2,3) affine map from output to input normalised coordinates
    crop_wh: torch.Tensor  # (B,2) crop size as a fraction of the source width/height
    flip: torch.Tensor  # (B,) bool
    angle: torch.Tensor  # (B,) degrees
    color: torch.Tensor  # (B,3,4) [matrix | bias] applied to RGB in [0,1]
    jitter: torch.Tensor  # (B,) bool
    factors: torch.Tensor  # (B,4) brightness, contrast, saturation, hue
    gray: torch.Tensor  # (B,) bool
    sigma: torch.Tensor  # (B,) blur sigma, 0 where not blurred
    solarize: torch.Tensor  # (B,) bool
    # shear (B,) degrees; translate (B,2) fraction of the crop size; order (B,4) jitter op order (0 brightness,
    # 1 contrast, 2 saturation, 3 hue)
    extra: dict = field(default_factory=dict)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _crop_sizes(n: int, cfg: AugmentConfig, src_h: int, src_w: int, g: torch.Generator, device) -> torch.Tensor:
    """Random-resized-crop sizes as fractions (w, h) of the source, with torchvision's 10-tries rule."""
    tries = 10
    area = _uniform(n * tries, *cfg.crop_scale, g, device).view(n, tries)
    logr = _uniform(n * tries, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), g, device).view(n, tries)
    ratio = torch.exp(logr)
    aspect = src_w / src_h
    w = torch.sqrt(area * ratio / aspect)  # fraction of the width: w_px/W = sqrt(a*H*W*r)/W
    h = torch.sqrt(area / ratio * aspect)
    ok = (w <= 1) & (h <= 1)
    first = torch.argmax(ok.int(), dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # No valid try: fall back to the whole image (torchvision falls back to a centre crop).
    none = ~ok.any(dim=1)
    return torch.stack([torch.where(none, torch.ones_like(w), w), torch.where(none, torch.ones_like(h), h)], 1)


def _geometry(n: int, cfg: AugmentConfig, src_h: int, src_w: int, g: torch.Generator, device):
    """The output-to-source affine maps (B,2,3) in normalised coordinates, the crop sizes as fractions of the source,
    and the other draws.

    The crop is drawn in a frame: the whole source, or with initial_crop a random square inside it. keep_center k
    scales the map about the crop centre, so the output shows the central k x k of the warped crop."""
    side = max(1, int(cfg.initial_crop * min(src_h, src_w))) if cfg.initial_crop > 0 else 0  # whole pixels, as theirs
    frame_w, frame_h = (side, side) if side else (src_w, src_h)
    wh = _crop_sizes(n, cfg, frame_h, frame_w, g, device)
    flip = torch.rand(n, generator=g, device=device) < cfg.flip_p
    angle = _uniform(n, -cfg.rotation, cfg.rotation, g, device)
    shear = _uniform(n, -cfg.shear, cfg.shear, g, device)
    # Crop centre anywhere the crop fits, plus an optional translation relative to the crop size.
    ux = _uniform(n, -1, 1, g, device)
    tx = _uniform(n, -cfg.translate, cfg.translate, g, device)
    uy = _uniform(n, -1, 1, g, device)
    ty = _uniform(n, -cfg.translate, cfg.translate, g, device)
    cx, cy = (1 - wh[:, 0]) * ux + 2 * wh[:, 0] * tx, (1 - wh[:, 1]) * uy + 2 * wh[:, 1] * ty
    if side:
        # Drawn last, and only here, so that a config without initial_crop draws exactly what it drew before. The
        # square's centre is uniform over the places where it fits; the crop's centre and size, drawn in the square's
        # frame above, move to the source's.
        ox = (1 - side / src_w) * _uniform(n, -1, 1, g, device)
        oy = (1 - side / src_h) * _uniform(n, -1, 1, g, device)
        cx, cy = ox + cx * (side / src_w), oy + cy * (side / src_h)
        wh = wh * torch.tensor([side / src_w, side / src_h], device=device)
    # Build the map in source pixel units (so rotation is a true rotation), then normalise by the source size.
    half_w, half_h = wh[:, 0] * src_w / 2, wh[:, 1] * src_h / 2
    a, sh = torch.deg2rad(angle), torch.tan(torch.deg2rad(shear))
    cos, sin = torch.cos(a), torch.sin(a)
    fx = torch.where(flip, -1.0, 1.0) * half_w
    # M = R @ Shear @ diag(fx, half_h): columns are where the output x and y axes land in source pixels.
    m00, m01 = cos * fx, cos * sh * half_h - sin * half_h
    m10, m11 = sin * fx, sin * sh * half_h + cos * half_h
    theta = torch.stack([
        torch.stack([m00 / (src_w / 2), m01 / (src_w / 2), cx], 1),
        torch.stack([m10 / (src_h / 2), m11 / (src_h / 2), cy], 1),
    ], 1)
    if cfg.keep_center != 1:
        # Output coordinate u samples where u * keep_center did: the centre of the warped crop, at the output size.
        theta[:, :, :2] *= cfg.keep_center
    return theta, wh, flip, angle, {"shear": shear, "translate": torch.stack([tx, ty], 1)}


def _warp(src: torch.Tensor, theta: torch.Tensor, crop_px: torch.Tensor, size: int, padding: str) -> torch.Tensor:
    """Warp float images (B or 1, 3, H, W) by theta into (B,3,size,size), sampling from a mip level near each
    crop's scale.

    Bilinear sampling aliases when a large crop shrinks to a few pixels, so the source is halved with
    average pooling into levels and each sample reads the level closest to (but not below) its output size.
    """
    n = theta.shape[0]
    levels = [src]
    while min(levels[-1].shape[-2:]) >= 4 * size:
        levels.append(F.avg_pool2d(levels[-1], 2))
    level_of = (torch.clamp(torch.floor(torch.log2(crop_px / size)), 0, len(levels) - 1).long()
                if len(levels) > 1 else None)
    out = torch.empty(n, src.shape[1], size, size, device=src.device, dtype=src.dtype)
    grid = F.affine_grid(theta.to(src.dtype), [n, src.shape[1], size, size], align_corners=False)
    for li, level in enumerate(levels):
        idx = torch.arange(n, device=src.device) if level_of is None else torch.nonzero(level_of == li).squeeze(1)
        if idx.numel() == 0:
            continue
        if level.shape[0] == 1 and n > 1:
            # One shared source image: stack the sample grids along the height instead of copying the image B times.
            g = grid[idx].reshape(1, idx.numel() * size, size, 2)
            res = F.grid_sample(level, g, mode="bilinear", padding_mode=padding, align_corners=False)
            res = res.view(src.shape[1], idx.numel(), size, size).transpose(0, 1)
        else:
            res = F.grid_sample(level[idx], grid[idx], mode="bilinear", padding_mode=padding, align_corners=False)
        out[idx] = res
    return out


def _color_matrices(n: int, cfg: AugmentConfig, mean_rgb: torch.Tensor, g: torch.Generator, device):
    """Fold jitter (random order) and grayscale into one affine colour map per sample: (B,3,4)."""
    eye = torch.eye(3, device=device).expand(n, 3, 3)
    gray_w = torch.tensor(GRAY, device=device)
    gray_m = gray_w.expand(3, 3)  # every output channel = luma
    b = _uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, g, device)
    c = _uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, g, device)
    s = _uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, g, device)
    h = _uniform(n, -cfg.hue, cfg.hue, g, device)
    jitter = torch.rand(n, generator=g, device=device) < cfg.jitter_p
    order = torch.argsort(torch.rand(n, 4, generator=g, device=device), dim=1)
    gray = torch.rand(n, generator=g, device=device) < cfg.grayscale_p

    yiq = torch.tensor(_RGB_TO_YIQ, device=device)
    # Turning (I, Q) clockwise moves HSV hue forwards (red -> yellow -> green), as torchvision's adjust_hue(h) does.
    ang = -2 * math.pi * h
    rot = torch.zeros(n, 3, 3, device=device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(ang), -torch.sin(ang)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(ang), torch.cos(ang)
    hue_m = torch.linalg.inv(yiq) @ rot @ yiq
    sat_m = s[:, None, None] * eye + (1 - s)[:, None, None] * gray_m
    # Per op: (matrix, bias-from-current-mean). Contrast blends towards the current image's mean luma.
    m = eye.clone()
    bias = torch.zeros(n, 3, device=device)
    mu = mean_rgb.clone()
    for step in range(4):
        op = order[:, step]
        luma = (mu * gray_w).sum(1)
        step_m = torch.where((op == 0)[:, None, None], b[:, None, None] * eye,
                 torch.where((op == 1)[:, None, None], c[:, None, None] * eye,
                 torch.where((op == 2)[:, None, None], sat_m, hue_m)))
        step_b = torch.where((op == 1)[:, None], ((1 - c) * luma)[:, None].expand(n, 3),
                             torch.zeros(n, 3, device=device))
        step_m = torch.where(jitter[:, None, None], step_m, eye)
        step_b = torch.where(jitter[:, None], step_b, torch.zeros_like(step_b))
        m = step_m @ m
        bias = (step_m @ bias.unsqueeze(2)).squeeze(2) + step_b
        mu = (step_m @ mu.unsqueeze(2)).squeeze(2) + step_b
    gm = gray_m.expand(n, 3, 3)
    m = torch.where(gray[:, None, None], gm @ m, m)
    bias = torch.where(gray[:, None], (gm @ bias.unsqueeze(2)).squeeze(2), bias)
    factors = torch.stack([b, c, s, h], 1)
    return torch.cat([m, bias.unsqueeze(2)], 2), jitter, factors, gray, order


def _blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Per-sample separable Gaussian blur; sigma 0 leaves a sample untouched.

    The kernel's radius comes from the largest sigma the recipe can draw, not from the drawn ones, so the step
    never waits for the device to report a value.
    """
    n, ch, hgt, wid = x.shape
    radius = max(1, math.ceil(3 * max_sigma))
    radius = min(radius, hgt // 2 - 1 if hgt > 3 else 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.clamp_min(1e-6)[:, None].to(x.dtype)
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    k = k.repeat_interleave(ch, 0)  # (n*ch, taps)
    y = x.reshape(1, n * ch, hgt, wid)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * ch)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * ch)
    return y.view(n, ch, hgt, wid)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Map RGB in [0,1] to the network's input range (ImageNet mean/std, as torchvision models expect)."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) -> float (B,3,H,W) in [0,1] (the training path's layout; see as_unit for any input)."""
    if images.dtype != torch.uint8:
        raise SelfSupError(f"expected uint8 images (B,H,W,3), got {images.dtype}")
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def as_unit(images: torch.Tensor, where: str = "images") -> torch.Tensor:
    """A new float (B,3,H,W) tensor in [0,1] from uint8 (B,H,W,3) or (B,3,H,W) (a last dimension of 3 means
    channels last), or from floats (B,3,H,W) already in [0,1]. Anything else is a one-line error naming the problem."""
    if not isinstance(images, torch.Tensor):
        raise SelfSupError(f"{where}: expected a torch.Tensor, got {type(images).__name__} (torch.from_numpy(array) "
                           "makes one)")
    shape = tuple(images.shape)
    if images.dim() != 4:
        raise SelfSupError(f"{where}: expected a batch of shape (N,H,W,3) or (N,3,H,W), got {shape}")
    if images.dtype == torch.uint8:
        if shape[-1] == 3:
            return to_float(images)
        if shape[1] == 3:
            return images.float().div_(255.0)
        raise SelfSupError(f"{where}: uint8 images must be (N,H,W,3) or (N,3,H,W), got {shape}")
    if not images.is_floating_point():
        raise SelfSupError(f"{where}: expected uint8 or float images, got {images.dtype}")
    if shape[1] != 3:
        raise SelfSupError(f"{where}: float images must be (N,3,H,W) with values in [0,1], got {shape} "
                           "(uint8 images may be channels last)")
    if images.numel():
        low, high = (float(v) for v in torch.aminmax(images.detach()))
        if low < 0 or high > 1:
            raise SelfSupError(f"{where}: float images must lie in [0,1], these span [{low:.3g}, {high:.3g}] "
                               "(pass uint8, or divide by 255; not normalised tensors)")
    return images.detach().to(torch.float32, copy=True)


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Float images (B,3,H,W) resized to size x size (bilinear, antialiased); unchanged when already that size."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def to_input(images: torch.Tensor, size: int | None = None,
             transform: Callable[[torch.Tensor], torch.Tensor] = normalize) -> torch.Tensor:
    """Un-augmented network input: images (see as_unit) -> float (B,3,size,size), resized with antialiasing, then
    `transform` (normalize: what RGB backbones expect; a method's input_transform for others)."""
    return transform(resize(as_unit(images, "to_input"), size))


def pad_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """The classic CIFAR classifier augmentation, batched: uint8 (B,H,W,3) -> RGB in [0,1], (B,3,H,W), each image
    zero-padded by `pad` pixels, cropped back to HxW at a random offset and flipped with probability 1/2."""
    x = F.pad(to_float(images), (pad, pad, pad, pad))
    b, h, w = images.shape[:3]
    dev = images.device
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chans = torch.arange(3, device=dev)[None, :, None, None]
    return x[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def augment_unit(images: torch.Tensor, cfg: AugmentConfig | None = None, generator: torch.Generator | None = None,
                 n: int | None = None, return_params: bool = False):
    """Augment a batch (see as_unit) into RGB floats in [0,1], (B,3,S,S); with one source image, n sets how many."""
    cfg = cfg or AugmentConfig()
    device = images.device
    src = as_unit(images, "augment")
    count = n if n is not None else src.shape[0]
    src_h, src_w = src.shape[-2:]
    theta, wh, flip, angle, drawn = _geometry(count, cfg, src_h, src_w, generator, device)
    crop_px = torch.minimum(wh[:, 0] * src_w, wh[:, 1] * src_h)
    if cfg.keep_center != 1:
        crop_px = crop_px * cfg.keep_center  # the output spans only this much of the crop: pick the mip level for it
    x = _warp(src, theta, crop_px, cfg.size, cfg.padding)
    color, jitter, factors, gray, order = _color_matrices(count, cfg, x.mean(dim=(2, 3)), generator, device)
    x = torch.baddbmm(color[:, :, 3:], color[:, :, :3], x.flatten(2)).view_as(x)
    blur_on = torch.rand(count, generator=generator, device=device) < cfg.blur_p
    scale = cfg.size / 224.0  # SimCLR's sigma range is for 224-px images
    sigma = torch.where(blur_on, _uniform(count, *cfg.blur_sigma, generator, device) * scale,
                        torch.zeros(count, device=device))
    if cfg.blur_p > 0:
        x = _blur(x, sigma, cfg.blur_sigma[1] * scale)
    x = x.clamp_(0, 1)
    solar = torch.rand(count, generator=generator, device=device) < cfg.solarize_p
    if cfg.solarize_p > 0:
        x = torch.where(solar[:, None, None, None] & (x >= cfg.solarize_threshold), 1 - x, x)
    if not return_params:
        return x
    drawn["order"] = order
    return x, AugmentParams(theta, wh, flip, angle, color, jitter, factors, gray, sigma, solar, drawn)


def augment(images: torch.Tensor, cfg: AugmentConfig | None = None, generator: torch.Generator | None = None,
            n: int | None = None, return_params: bool = False):
    """Augment a batch into normalised network input (B,3,S,S).

    Args:
        images: uint8 (B,H,W,3) or (B,3,H,W), or float (B,3,H,W) in [0,1]; never modified.
        cfg: the augmentation (default AugmentConfig(): SimCLR-style crops, flips and colour at 32 px).
        generator: the random source (a torch.Generator on the images' device), for reproducible batches.
        n: with a single source image, how many augmented images to make from it.
        return_params: also return the drawn AugmentParams.

    Example:
        >>> views = augment(torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8), simclr_recipe(32))
        >>> views.shape
        torch.Size([8, 3, 32, 32])
    """
    out = augment_unit(images, cfg, generator, n, return_params)
    if return_params:
        return normalize(out[0]), out[1]
    return normalize(out)


def synthesize(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator, n: int) -> torch.Tensor:
    """n new uint8 images (n,S,S,3) made from a few source images by heavy augmentation (single-image training).

    These play the role of dataset images: a method then draws its own views from each of them, so two
    views of one synthetic image are a positive pair while other synthetic images are negatives.
    """
    picks = (torch.randint(images.shape[0], (n,), generator=generator, device=images.device)
             if images.shape[0] > 1 else None)
    src = images if picks is None else images.index_select(0, picks)
    x = augment_unit(src, cfg, generator, n=n if picks is None else None)
    return x.mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@dataclass
class MultiCropConfig:
    """Multi-crop (Caron et al. 2020, SwAV; DINO): `global_crops` crops at the run's input size (augment.size) and
    `local_crops` smaller ones of `local_size` px (None: half the global size; SwAV and DINO take 96 px at 224),
    each drawn with the run's augmentation at its own crop scale.

    Local crops cover small parts of the image at low resolution, so they add views for a fraction of a global
    crop's compute (6 x 96 px cost about 1.1 x 224 px). The per-crop overrides give DINO's and BYOL's asymmetric
    views: e.g. global_blur_p [1.0, 0.1] and global_solarize_p [0.0, 0.2] (empty: the augment section's value for
    every global crop; None: the augment section's for the local crops).
    """

    RANGES: ClassVar[dict[str, str]] = {
        "global_crops": "[1, inf)",
        "global_scale": "(0, 1] ordered",
        "local_crops": "[0, inf)",
        "local_size": "[1, inf)",
        "local_scale": "(0, 1] ordered",
        "global_blur_p": "[0, 1]",
        "global_solarize_p": "[0, 1]",
        "local_blur_p": "[0, 1]",
        "local_solarize_p": "[0, 1]",
    }

    global_crops: int = 2
    global_scale: tuple[float, float] = (0.14, 1.0)
    local_crops: int = 6
    local_size: int | None = None
    local_scale: tuple[float, float] = (0.05, 0.14)
    global_blur_p: list[float] = field(default_factory=list)
    global_solarize_p: list[float] = field(default_factory=list)
    local_blur_p: float | None = None
    local_solarize_p: float | None = None


def local_crop_size(aug: AugmentConfig, crops: MultiCropConfig) -> int:
    """The side of the local crops: crops.local_size, or half the global crops' when it is None."""
    return crops.local_size if crops.local_size is not None else max(1, aug.size // 2)


def multi_crop_configs(aug: AugmentConfig, crops: MultiCropConfig, where: str = "crops") -> list[AugmentConfig]:
    """The augmentation of every crop, the global ones first: `aug` with each crop's size, scale and overrides.

    A local crop larger than the global ones, or a per-crop list of the wrong length, is a one-line error (`where`
    names the config section in it)."""
    local_size = local_crop_size(aug, crops)
    if crops.local_crops and local_size > aug.size:
        raise SelfSupError(f"{where}.local_size ({local_size}) is larger than the global crops (augment.size = "
                           f"{aug.size}); local crops are the small ones")
    for key in ("global_blur_p", "global_solarize_p"):
        values = getattr(crops, key)
        if values and len(values) != crops.global_crops:
            raise SelfSupError(f"{where}.{key} has {len(values)} values for {crops.global_crops} global crops; give "
                               "one per global crop, or none to use the augment section's")
    out = []
    for i in range(crops.global_crops):
        c = replace(aug, crop_scale=tuple(crops.global_scale))
        if crops.global_blur_p:
            c.blur_p = crops.global_blur_p[i]
        if crops.global_solarize_p:
            c.solarize_p = crops.global_solarize_p[i]
        out.append(c)
    local = replace(aug, size=local_size, crop_scale=tuple(crops.local_scale))
    if crops.local_blur_p is not None:
        local.blur_p = crops.local_blur_p
    if crops.local_solarize_p is not None:
        local.solarize_p = crops.local_solarize_p
    return out + [local] * crops.local_crops


def single_image_recipe(size: int = 64) -> AugmentConfig:
    """How one image becomes many (after Asano et al. 2020): large random crops, rotation and shear, flips,
    colour jitter (0.4, 0.4, 0.4, 0.1) with probability 0.5."""
    return AugmentConfig(size=size, crop_scale=(0.02, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, rotation=30.0,
                         shear=10.0, padding="reflection", jitter_p=0.5, brightness=0.4, contrast=0.4, saturation=0.4,
                         hue=0.1, grayscale_p=0.0)


def single_image_authors(size: int = 64) -> AugmentConfig:
    """The single-image paper's dataset generator as released (Asano et al. 2020; yukimasano/single_img_pretraining
    make_dataset_single.py, its defaults): a random square of half the shorter side first (`--initcrop 0.5`, redrawn
    for every image), a random resized crop of 1/500 to all of its area (`--scale 500 1`, ratio 3/4 to 4/3), rotation
    and x-shear uniform in +-30 degrees with black fill (`RandomAffine(30, shear=30, fillcolor=0)`), the central 256
    of the 362-px result kept (`CenterCrop(256)` after resizing to int(sqrt(2) * 256)), no flip (`--vflip` is off and
    there is no horizontal flip), colour jitter (0.4, 0.4, 0.4, 0.1) with probability 0.5, no grayscale.

    Output is `size` px (theirs 256, saved as JPEG); see docs/fidelity.md for what else differs."""
    return AugmentConfig(size=size, initial_crop=0.5, crop_scale=(1 / 500, 1.0), crop_ratio=(3 / 4, 4 / 3),
                         flip_p=0.0, rotation=30.0, shear=30.0, padding="zeros", keep_center=256 / 362, jitter_p=0.5,
                         brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, grayscale_p=0.0)


__all__ = ["AugmentConfig", "AugmentParams", "MultiCropConfig", "multi_crop_configs", "local_crop_size", "augment",
           "augment_unit", "synthesize", "simclr_recipe", "single_image_recipe", "single_image_authors", "to_input",
           "to_float", "as_unit", "resize", "normalize", "pad_crop_flip"]

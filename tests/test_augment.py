import math

import numpy as np
import torch

from selfsup.augmentation import GRAY, MEAN, STD, AugmentConfig, augment, simclr_recipe, to_input

IDENTITY = AugmentConfig(size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                         grayscale_p=0.0)


def _images(n=8, h=16, w=16, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8))


def _denorm(x):
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_deterministic_under_seed_and_shapes():
    x = _images()
    cfg = simclr_recipe(size=24, strength=1.0, blur=True)
    a = augment(x, cfg, torch.Generator().manual_seed(3))
    b = augment(x, cfg, torch.Generator().manual_seed(3))
    c = augment(x, cfg, torch.Generator().manual_seed(4))
    assert a.shape == (8, 3, 24, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)
    rgb = _denorm(a)
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5


def test_identity_settings_return_the_input():
    x = _images()
    out = augment(x, IDENTITY, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, to_input(x), atol=1e-4, rtol=0)


def test_flip_only_mirrors_horizontally():
    x = _images()
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "flip_p": 1.0})
    out = augment(x, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, to_input(x).flip(-1), atol=1e-4, rtol=0)


def test_grayscale_only_gives_luma_in_every_channel():
    x = _images()
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "grayscale_p": 1.0})
    rgb = _denorm(augment(x, cfg, torch.Generator().manual_seed(0)))
    luma = (x.permute(0, 3, 1, 2).float() / 255 * torch.tensor(GRAY).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(rgb, luma.expand_as(rgb), atol=1e-4, rtol=0)


def test_parameters_statistically_within_ranges():
    n = 4000
    x = _images(1, 48, 48)
    # Square source and area <= 0.5: every try fits, so no rejection skews the ratio distribution.
    cfg = AugmentConfig(size=8, crop_scale=(0.2, 0.5), crop_ratio=(0.5, 2.0), flip_p=0.3, rotation=20, jitter_p=0.8,
                        brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1, grayscale_p=0.25, blur_p=0.5,
                        solarize_p=0.1)
    _, p = augment(x, cfg, torch.Generator().manual_seed(0), n=n, return_params=True)
    area = p.crop_wh[:, 0] * p.crop_wh[:, 1]
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 0.5 + 1e-6
    ratio = p.crop_wh[:, 0] / p.crop_wh[:, 1]
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 2.0 + 1e-4
    _, wide = augment(_images(1, 40, 90), AugmentConfig(size=8, crop_scale=(0.5, 1.0)), torch.Generator(), n=500,
                      return_params=True)
    assert (wide.crop_wh <= 1).all()  # crops always stay inside a non-square source
    # log-ratio is uniform: its mean sits in the middle of [log .5, log 2].
    assert abs(torch.log(ratio).mean().item()) < 0.05
    assert p.angle.abs().max() <= 20 and abs(p.angle.mean().item()) < 1.0 and p.angle.std() > 10
    for flag, prob in ((p.flip, 0.3), (p.jitter, 0.8), (p.gray, 0.25), (p.sigma > 0, 0.5), (p.solarize, 0.1)):
        rate = flag.float().mean().item()
        assert abs(rate - prob) < 4 * math.sqrt(prob * (1 - prob) / n), (rate, prob)
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1)]):
        f = p.factors[:, col]
        assert f.min() >= lo - 1e-6 and f.max() <= hi + 1e-6
        assert abs(f.mean().item() - (lo + hi) / 2) < 0.02 * (hi - lo) + 0.005
    blurred = p.sigma[p.sigma > 0] / (8 / 224)
    assert blurred.min() >= 0.1 - 1e-5 and blurred.max() <= 2.0 + 1e-5


def test_colour_matrix_matches_sequential_ops():
    """The fused colour map equals brightness/contrast/saturation applied one by one (no hue), in any order."""
    x = _images(64)
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "jitter_p": 1.0, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3,
                           "hue": 0.0})
    out, p = augment(x, cfg, torch.Generator().manual_seed(1), return_params=True)
    src = x.permute(0, 3, 1, 2).float() / 255
    gray = torch.tensor(GRAY).view(1, 3, 1, 1)
    fused = torch.einsum("bij,bjhw->bihw", p.color[:, :, :3], src) + p.color[:, :, 3].view(-1, 3, 1, 1)
    b, c, s = p.factors[:, 0].view(-1, 1, 1, 1), p.factors[:, 1].view(-1, 1, 1, 1), p.factors[:, 2].view(-1, 1, 1, 1)
    # Every order gives a different result once contrast is involved; the fused one must equal one of the 6 orders
    # of (b, c, s) applied sequentially, for each sample.
    import itertools

    def apply(img, op):
        if op == "b":
            return img * b
        if op == "c":
            return c * img + (1 - c) * (img * gray).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        return s * img + (1 - s) * (img * gray).sum(1, keepdim=True)

    best = torch.full((64,), float("inf"))
    for order in itertools.permutations("bcs"):
        y = src
        for op in order:
            y = apply(y, op)
        best = torch.minimum(best, (y - fused).abs().flatten(1).max(1).values)
    assert best.max() < 1e-4
    torch.testing.assert_close(_denorm(out), fused.clamp(0, 1), atol=1e-4, rtol=0)


def test_hue_rotation_keeps_luma_and_grey():
    x = _images(16)
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "jitter_p": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0,
                           "hue": 0.5})
    _, p = augment(x, cfg, torch.Generator().manual_seed(2), return_params=True)
    m = p.color[:, :, :3]
    grey = torch.ones(16, 3, 1)
    torch.testing.assert_close(m @ grey, grey, atol=1e-5, rtol=0)  # grey stays grey
    torch.testing.assert_close(torch.tensor(GRAY) @ m, torch.tensor(GRAY).expand(16, 3), atol=2e-3, rtol=0)


def test_rotation_by_180_and_crop_of_shared_image():
    x = _images(2, 16, 16)
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "rotation": 0.0})
    # Rotate exactly 180 degrees: the warp must equal a flip of both axes.
    from selfsup import augmentation as A

    theta, *_ = A._geometry(2, cfg, 16, 16, torch.Generator().manual_seed(0), "cpu")
    theta[:, :, :2] = -theta[:, :, :2]
    out = A._warp(A.to_float(x), theta, torch.full((2,), 16.0), 16, "zeros")
    torch.testing.assert_close(out, A.to_float(x).flip(-1, -2), atol=1e-4, rtol=0)
    # One shared source image, many views: same result as giving each view its own copy.
    one = _images(1, 64, 64)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    shared = augment(one, simclr_recipe(16), g1, n=6)
    copies = augment(one.expand(6, -1, -1, -1), simclr_recipe(16), g2)
    torch.testing.assert_close(shared, copies, atol=1e-4, rtol=0)


def test_synthesize_makes_new_images_from_one():
    from selfsup.augmentation import single_image_recipe, synthesize

    one = _images(1, 80, 120)
    cfg = single_image_recipe(size=24)
    a = synthesize(one, cfg, torch.Generator().manual_seed(9), 16)
    b = synthesize(one, cfg, torch.Generator().manual_seed(9), 16)
    assert a.shape == (16, 24, 24, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert len({bytes(im.numpy()) for im in a}) == 16  # every synthesised image differs
    few = synthesize(_images(3, 40, 40), cfg, torch.Generator().manual_seed(1), 10)
    assert few.shape == (10, 24, 24, 3)


def test_single_image_recipe_stays_in_its_ranges():
    """The single-image recipe: crops of at least 2% of the image, +-30 degrees, jitter (0.4, 0.4, 0.4, 0.1) half
    the time."""
    from selfsup.augmentation import augment_unit, single_image_recipe

    n = 3000
    cfg = single_image_recipe(size=16)
    x, p = augment_unit(_images(1, 64, 64), cfg, torch.Generator().manual_seed(3), n=n, return_params=True)
    assert x.shape == (n, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    area = p.crop_wh[:, 0] * p.crop_wh[:, 1]
    assert area.min() >= 0.02 - 1e-6 and area.max() <= 1 + 1e-6
    assert p.angle.abs().max() <= 30 and p.angle.std() > 12
    rate = p.jitter.float().mean().item()
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / n)
    assert not p.gray.any()
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]):
        f = p.factors[p.jitter, col]
        assert f.min() >= lo - 1e-6 and f.max() <= hi + 1e-6

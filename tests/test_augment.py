import colorsys
import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from scipy.ndimage import gaussian_filter1d
from torchvision.transforms import InterpolationMode

from selfsup.augmentation import GRAY, MEAN, STD, AugmentConfig, augment, augment_unit, simclr_recipe, to_input

pytestmark = pytest.mark.usefixtures("one_thread")


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
    # sigma is drawn at 224 px and scaled to the output size: uniform in [0.1, 2.0] * 8 / 224 pixels.
    blurred = p.sigma[p.sigma > 0] / (8 / 224)
    assert blurred.min() >= 0.1 - 1e-5 and blurred.max() <= 2.0 + 1e-5
    assert abs(blurred.mean().item() - 1.05) < 0.05 and blurred.max() > 1.95 and blurred.min() < 0.15


def test_colour_matrix_matches_sequential_ops():
    """The fused colour map equals brightness/contrast/saturation applied one by one (no hue) in each sample's drawn
    order, then grayscale; samples without jitter keep their colours."""
    x = _images(64)
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "jitter_p": 0.7, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3,
                           "hue": 0.0, "grayscale_p": 0.3})
    out, p = augment(x, cfg, torch.Generator().manual_seed(1), return_params=True)
    src = x.permute(0, 3, 1, 2).double() / 255
    gray = torch.tensor(GRAY, dtype=torch.float64).view(1, 3, 1, 1)
    luma = lambda img: (img * gray).sum(1, keepdim=True)  # noqa: E731
    ops = {  # torchvision's definitions (adjust_brightness / adjust_contrast / adjust_saturation), without clamping
        0: lambda img, f: img * f,
        1: lambda img, f: f * img + (1 - f) * luma(img).mean((1, 2, 3), keepdim=True),
        2: lambda img, f: f * img + (1 - f) * luma(img),
        3: lambda img, f: img,  # hue 0
    }
    order = p.extra["order"]
    expected = []
    for i in range(64):
        y = src[i:i + 1]
        if p.jitter[i]:
            for op in order[i].tolist():
                y = ops[op](y, p.factors[i, op].item())
        if p.gray[i]:
            y = luma(y).expand(1, 3, -1, -1)
        expected.append(y)
    expected = torch.cat(expected).clamp(0, 1).float()
    assert 10 < p.jitter.sum() < 60 and 5 < p.gray.sum() < 40
    torch.testing.assert_close(_denorm(out), expected, atol=1e-4, rtol=0)


# Rec. 601 / FCC NTSC RGB -> YIQ, written here (not taken from selfsup) to measure hue as an angle in the I-Q plane.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])


def _yiq(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _YIQ.T


def test_hue_rotation_keeps_luma_and_grey():
    """Hue jitter h turns every colour's hue by h of a turn in the direction torchvision's adjust_hue(h) turns HSV hue,
    keeps each pixel's luma and leaves greys alone."""
    # 16 colours around grey 0.5 at chroma 0.15 in the I-Q plane (every rotation of them stays inside the RGB cube,
    # so nothing is clamped), then 9 greys: a 5x5 image.
    phis = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    colours = np.stack([np.linalg.solve(_YIQ, [0.5, 0.15 * math.cos(f), 0.15 * math.sin(f)]) for f in phis])
    greys = np.repeat(np.linspace(0.1, 0.9, 9)[:, None], 3, 1)
    pixels = np.round(np.concatenate([colours, greys]) * 255).astype(np.uint8)
    n = 64
    x = torch.from_numpy(pixels.reshape(1, 5, 5, 3)).expand(n, -1, -1, -1)
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "size": 5, "jitter_p": 1.0, "brightness": 0.0, "contrast": 0.0,
                           "saturation": 0.0, "hue": 0.5})
    out, p = augment_unit(x, cfg, torch.Generator().manual_seed(2), return_params=True)
    h = p.factors[:, 3].double().numpy()
    assert h.min() < -0.3 and h.max() > 0.3  # turns over most of the circle, both ways
    before = pixels.astype(np.float64) / 255
    after = out.permute(0, 2, 3, 1).reshape(n, 25, 3).double().numpy()
    # Luma stays, greys stay.
    np.testing.assert_allclose(_yiq(after)[:, :, 0], np.broadcast_to(_yiq(before)[:, 0], (n, 25)), atol=2e-3)
    np.testing.assert_allclose(after[:, 16:], np.broadcast_to(before[16:], (n, 9, 3)), atol=2e-3)
    # In the I-Q plane every colour turns by exactly the drawn amount (HSV hue forwards = I-Q angle backwards) ...
    iq0, iq1 = _yiq(before[:16])[:, 1:], _yiq(after[:, :16])[..., 1:]
    turn = np.arctan2(iq1[..., 1], iq1[..., 0]) - np.arctan2(iq0[:, 1], iq0[:, 0])
    miss = np.angle(np.exp(1j * (turn + 2 * math.pi * h[:, None])))
    assert np.abs(miss).max() < 0.01, np.abs(miss).max()
    np.testing.assert_allclose(np.hypot(iq1[..., 0], iq1[..., 1]), np.broadcast_to(np.hypot(*iq0.T), (n, 16)),
                               atol=2e-3)  # ... at unchanged chroma
    # ... and in HSV, which agrees to first order: on average over the colours the hue moves by h, each colour the
    # same way.
    small = np.abs(h) < 0.2
    hsv0 = np.array([colorsys.rgb_to_hsv(*c)[0] for c in before[:16]])
    hsv1 = np.array([[colorsys.rgb_to_hsv(*c)[0] for c in sample] for sample in after[small, :16]])
    moved = (hsv1 - hsv0 + 0.5) % 1 - 0.5
    assert small.sum() > 10
    assert (np.sign(moved) == np.sign(h[small, None])).all()
    miss = np.abs(moved.mean(1) - h[small]) - 0.1 * np.abs(h[small])
    assert miss.max() < 0.01, miss.max()


def test_colour_jitter_order_is_uniform_over_all_24():
    """Each sample applies brightness, contrast, saturation and hue in its own random order, every order equally often.

    (In the fused map the four commute -- each keeps greys and luma proportions, and clamping comes once at the end --
    so the order cannot be seen in the output; the draw is what torchvision's ColorJitter does.)"""
    n = 4800
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "size": 2, "jitter_p": 1.0})
    _, p = augment_unit(_images(1, 2, 2), cfg, torch.Generator().manual_seed(8), n=n, return_params=True)
    order = p.extra["order"]
    assert (order.sort(1).values == torch.arange(4)).all()  # each a permutation of the four ops
    counts = {perm: 0 for perm in itertools.permutations(range(4))}
    for row in order.tolist():
        counts[tuple(row)] += 1
    expect = n / 24
    spread = math.sqrt(expect * (1 - 1 / 24))
    assert all(abs(c - expect) < 5 * spread for c in counts.values()), counts
    # Each op is first in a quarter of the samples.
    first = torch.bincount(order[:, 0], minlength=4).float() / n
    assert (first - 0.25).abs().max() < 5 * math.sqrt(0.25 * 0.75 / n)


def _smooth_image(size: int) -> torch.Tensor:
    """A uint8 (1,S,S,3) image of slow sinusoids, so resampling it twice costs little accuracy."""
    yy, xx = torch.meshgrid(torch.arange(size).float() / size, torch.arange(size).float() / size, indexing="ij")
    planes = [torch.sin(2 * math.pi * (1.5 * xx + 0.5 * yy)), torch.cos(2 * math.pi * (1.2 * yy - 0.3 * xx)),
              torch.sin(2 * math.pi * (xx + yy))]
    return (127.5 + 100 * torch.stack(planes, 2)).round().to(torch.uint8)[None]


def test_rotation_shear_translation_warp_matches_torchvision():
    """Each geometric op alone equals torchvision's affine with the drawn parameter; together they are one warp that
    translates, rotates, then shears along x (output -> source: x -> R(angle) Shear(shear) x + shift).

    The sign conventions are selfsup's: every draw is symmetric about 0, so only the magnitude and the axis matter."""
    s, n = 32, 8
    bilinear = InterpolationMode.BILINEAR
    x = _images(1, s, s, seed=4)
    src = x.permute(0, 3, 1, 2).float() / 255

    def run(image, **geometry):
        cfg = AugmentConfig(**{**IDENTITY.__dict__, "size": s, **geometry})
        return augment_unit(image.expand(n, -1, -1, -1), cfg, torch.Generator().manual_seed(3), return_params=True)

    def tv(image, angle=0.0, shift=(0.0, 0.0), shear=0.0):
        return TF.affine(image, angle=angle, translate=[shift[0] * s, shift[1] * s], scale=1.0, shear=[shear, 0.0],
                         interpolation=bilinear)

    out, p = run(x, rotation=40.0)
    assert p.angle.abs().max() > 15
    for i in range(n):
        torch.testing.assert_close(out[i:i + 1], tv(src, angle=-p.angle[i].item()), atol=1e-4, rtol=0)
    out, p = run(x, shear=25.0)
    shear = p.extra["shear"]
    assert shear.abs().max() > 10 and (p.angle == 0).all()
    for i in range(n):
        torch.testing.assert_close(out[i:i + 1], tv(src, shear=shear[i].item()), atol=1e-4, rtol=0)
    out, p = run(x, translate=0.25)
    shift = p.extra["translate"]
    assert shift.abs().max() > 0.1
    for i in range(n):
        torch.testing.assert_close(out[i:i + 1], tv(src, shift=(-shift[i, 0].item(), -shift[i, 1].item())), atol=1e-4,
                                   rtol=0)
    # All three at once against torchvision's three in sequence (bilinear three times, so on a smooth image and away
    # from the zero-filled border); the other order of rotation and shear misses by several times more.
    smooth = _smooth_image(s)
    out, p = run(smooth, rotation=30.0, shear=20.0, translate=0.1)
    ssrc = smooth.permute(0, 3, 1, 2).float() / 255
    right, wrong = [], []
    for i in range(n):
        a, sh, (tx, ty) = p.angle[i].item(), p.extra["shear"][i].item(), p.extra["translate"][i].tolist()
        moved = tv(ssrc, shift=(-tx, -ty))
        right.append((tv(tv(moved, angle=-a), shear=sh) - out[i])[..., 8:-8, 8:-8].abs().max())
        wrong.append((tv(tv(moved, shear=sh), angle=-a) - out[i])[..., 8:-8, 8:-8].abs().max())
    assert max(right) < 0.02, right
    assert max(wrong) > 0.05, wrong  # the check can tell the orders apart


def test_shear_and_translation_parameters_statistically():
    """Shear uniform in [-shear, shear] degrees; translation uniform in [-t, t] of the crop size on each axis."""
    n = 4000
    cfg = AugmentConfig(size=8, crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), flip_p=0.0, shear=15.0, translate=0.2)
    _, p = augment_unit(_images(1, 48, 48), cfg, torch.Generator().manual_seed(6), n=n, return_params=True)
    shear = p.extra["shear"]
    assert shear.abs().max() <= 15 and shear.abs().max() > 14.9
    assert abs(shear.mean().item()) < 4 * 15 / math.sqrt(3 * n) and abs(shear.std().item() - 15 / math.sqrt(3)) < 0.3
    t = p.extra["translate"]
    assert t.abs().max() <= 0.2 and t.abs().max() > 0.199
    assert abs(t.mean().item()) < 0.01 and abs(t.std().item() - 0.2 / math.sqrt(3)) < 0.005
    assert abs(torch.corrcoef(t.T)[0, 1].item()) < 0.1  # the two axes drawn independently
    # The warp's centre, in the source's normalised coordinates: crops of half the side fit anywhere (+-0.5) and the
    # translation moves them by up to 0.2 of the crop's side (2 * 0.5 * 0.2), not of the image's (2 * 0.2).
    assert (p.crop_wh == 0.5).all()
    centre = p.theta[:, :, 2]
    assert centre.abs().max() <= 0.5 + 0.2 + 1e-5 and centre.abs().max() > 0.65
    torch.testing.assert_close(centre.var(0), torch.full((2,), 0.5 ** 2 / 3 + 0.2 ** 2 / 3), atol=0.008, rtol=0)


def test_blur_matches_a_gaussian_reference():
    """Blurred samples equal a Gaussian filter (scipy's, reflected at the border) of their own drawn sigma, which is the
    recipe's sigma at 224 px scaled to the output size; the others are untouched."""
    n, s = 16, 32
    x = _images(n, s, s, seed=5)
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "size": s, "blur_p": 0.5, "blur_sigma": (7.0, 14.0)})
    out, p = augment_unit(x, cfg, torch.Generator().manual_seed(4), return_params=True)
    on = p.sigma > 0
    assert 3 <= on.sum() <= 13
    sigma = p.sigma[on]
    assert sigma.min() >= 7 * s / 224 - 1e-6 and sigma.max() <= 14 * s / 224 + 1e-6  # 1 to 2 output pixels
    src = x.permute(0, 3, 1, 2).double().numpy() / 255
    for i in range(n):
        if not on[i]:
            torch.testing.assert_close(out[i], torch.from_numpy(src[i]).float(), atol=1e-4, rtol=0)
            continue
        sd = p.sigma[i].item()
        ref = gaussian_filter1d(gaussian_filter1d(src[i], sd, axis=1, mode="mirror"), sd, axis=2, mode="mirror")
        torch.testing.assert_close(out[i], torch.from_numpy(ref).float(), atol=4e-3, rtol=0)


def test_solarize_inverts_at_the_threshold():
    """Solarized samples equal torchvision's solarize (pixels at or above the threshold inverted); others untouched."""
    n = 32
    x = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).expand(n, -1, -1, 3).contiguous()
    x[:, :, :, 1] = x[:, :, :, 1].flip(1)
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "solarize_p": 0.5, "solarize_threshold": 0.3})
    out, p = augment_unit(x, cfg, torch.Generator().manual_seed(5), return_params=True)
    assert 6 <= p.solarize.sum() <= 26
    plain = x.permute(0, 3, 1, 2)
    solar = TF.solarize(plain, 0.3 * 255)
    assert (solar != plain).any()
    expected = torch.where(p.solarize[:, None, None, None], solar, plain).float() / 255
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


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
    """The single-image recipe: crops of at least 2% of the image, +-30 degrees, shear +-10 degrees, jitter
    (0.4, 0.4, 0.4, 0.1) half the time."""
    from selfsup.augmentation import augment_unit, single_image_recipe

    n = 3000
    cfg = single_image_recipe(size=16)
    x, p = augment_unit(_images(1, 64, 64), cfg, torch.Generator().manual_seed(3), n=n, return_params=True)
    assert x.shape == (n, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    area = p.crop_wh[:, 0] * p.crop_wh[:, 1]
    assert area.min() >= 0.02 - 1e-6 and area.max() <= 1 + 1e-6
    assert p.angle.abs().max() <= 30 and p.angle.std() > 12
    assert p.extra["shear"].abs().max() <= 10 and p.extra["shear"].abs().max() > 9.9 and p.extra["shear"].std() > 5
    rate = p.jitter.float().mean().item()
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / n)
    assert not p.gray.any()
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]):
        f = p.factors[p.jitter, col]
        assert f.min() >= lo - 1e-6 and f.max() <= hi + 1e-6

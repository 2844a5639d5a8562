"""Colorization: Lab, ab bins, soft targets, class rebalancing, the annealed mean, and learning on a tiny set."""

import numpy as np
import pytest
import torch
from fitting import fit
from kornia.color import rgb_to_lab

from selfsup.config import load_config
from selfsup.methods import DataInfo, build_method
from selfsup.methods.colorization import annealed_mean, gamut_bins, rebalancing_weights, soft_encode


def _cie_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0,1] (..., 3) -> CIE Lab under D65, straight from the sRGB and CIE 1976 definitions, in float64."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])  # relative to the D65 white
    d = 6 / 29
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


COLOURS = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                    [0.5, 0.5, 0.5], [0.2, 0.7, 0.4], [0.9, 0.6, 0.1], [0.02, 0.03, 0.01]])  # the last: linear segment


def test_lab_matches_the_cie_formulas():
    from selfsup.methods import colorization

    # The reference itself, against published values: white, black, sRGB red, green and blue.
    published = [[100, 0, 0], [0, 0, 0], [53.2408, 80.0925, 67.2032], [87.7347, -86.1827, 83.1793],
                 [32.2970, 79.1875, -107.8602]]
    np.testing.assert_allclose(_cie_lab(COLOURS[:5]), published, atol=2e-3)
    expected = torch.from_numpy(_cie_lab(COLOURS)).float()
    rgb = torch.from_numpy(COLOURS).float().T.reshape(1, 3, 1, -1)
    # The conversions the method uses: its targets (rgb -> Lab) and its output (Lab -> rgb) ...
    torch.testing.assert_close(colorization.rgb_to_lab(rgb)[0, :, 0].T, expected, atol=0.02, rtol=0)
    torch.testing.assert_close(colorization.lab_to_rgb(expected.T.reshape(1, 3, 1, -1))[0, :, 0].T,
                               rgb[0, :, 0].T, atol=1e-3, rtol=0)
    # ... and what the network sees: L alone, from 0..100 to -1..1, on all three input channels.
    cfg = load_config(overrides={"method": "colorization", "model": {"backbone": "exemplar_small", "input_size": 16},
                                 "augment": {"size": 16}})
    seen = build_method(cfg, DataInfo(8)).input_transform(rgb)
    torch.testing.assert_close(seen, (expected[:, 0] / 50 - 1).view(1, 1, 1, -1).expand(1, 3, 1, -1), atol=5e-4,
                               rtol=0)


def test_gamut_bins_cover_every_srgb_colour():
    bins = gamut_bins(10.0)
    assert len(bins) == 262 and bins.abs().max() <= 110
    # The ab cells that a grid of sRGB colours (49^3) falls in, by the CIE formulas: every one is a bin, and
    # only the thinnest slivers of the gamut (one cell here) escape the grid.
    g = np.linspace(0, 1, 49)
    ab = _cie_lab(np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3))[:, 1:]
    hit = {tuple(c) for c in (np.round(ab / 10) * 10).astype(int).tolist()}
    binned = {tuple(c) for c in bins.round().int().tolist()}
    assert hit <= binned and len(binned - hit) <= 1


def test_soft_targets_sum_to_one_and_peak_at_the_nearest_bin():
    bins = gamut_bins()
    ab = torch.tensor([[3.0, -21.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)
    t = soft_encode(ab, bins)
    torch.testing.assert_close(t.sum(1), torch.ones(1, 1, 2))
    assert ((t > 0).sum(1) == 5).all()
    nearest = torch.cdist(ab.reshape(2, 2).T, bins).argmin(1)
    assert torch.equal(t.argmax(1).flatten(), nearest)


def test_rebalancing_weights_follow_their_definition():
    # w_q proportional to 1 / ((1 - lambda) p_q + lambda / Q), scaled so that sum_q p_q w_q = 1 (Zhang et al. eq. 4).
    # Two bins too far apart for the sigma-5 smoothing to mix them, p = (0.8, 0.2), lambda 0.25:
    # w = (1/0.725, 1/0.275) / (0.8/0.725 + 0.2/0.275) = (55/73, 145/73).
    far = torch.tensor([[0.0, 0.0], [1000.0, 0.0]], dtype=torch.float64)
    prior = torch.tensor([0.8, 0.2], dtype=torch.float64)
    torch.testing.assert_close(rebalancing_weights(prior, far, lam=0.25),
                               torch.tensor([55 / 73, 145 / 73], dtype=torch.float64))
    # Three bins 10 apart, all mass on the first: smoothing with sigma 5 spreads it as exp(-d^2 / 50), so the
    # smoothed prior is (1, e^-2, e^-8) / (1 + e^-2 + e^-8) = (0.88054, 0.11917, 0.00030), and the weights
    # (1 / (0.5 p + 1/6)) normalised under it are (0.83244, 2.23309, 3.02874).
    line = torch.tensor([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]], dtype=torch.float64)
    w = rebalancing_weights(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), line, lam=0.5)
    torch.testing.assert_close(w, torch.tensor([0.83244, 2.23309, 3.02874], dtype=torch.float64), atol=1e-5, rtol=0)
    # lambda = 1 ignores the prior: every bin weighs 1.
    torch.testing.assert_close(rebalancing_weights(prior, far, lam=1.0), torch.ones(2, dtype=torch.float64))


def test_annealed_mean_goes_from_mean_to_mode():
    bins = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    logits = torch.log(torch.tensor([0.6, 0.4])).view(1, 2, 1, 1)
    assert annealed_mean(logits, bins, 1.0)[0, 0].item() == pytest.approx(40.0, abs=1e-4)
    assert annealed_mean(logits, bins, 0.01)[0, 0].item() == pytest.approx(0.0, abs=1e-3)
    mid = annealed_mean(logits, bins, 0.38)[0, 0].item()
    assert 0 < mid < 40


def _discs(n: int, seed: int) -> torch.Tensor:
    """Red discs on blue or green on yellow: the lightness pattern says which colours to paint."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    out = torch.empty(n, 16, 16, 3)
    for i in range(n):
        cy, cx = torch.randint(5, 11, (2,), generator=g).tolist()
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 16)[..., None]
        fg, bg = ([0.9, 0.1, 0.1], [0.1, 0.1, 0.9]) if i % 2 else ([0.1, 0.6, 0.1], [0.95, 0.95, 0.3])
        out[i] = torch.where(disc, torch.tensor(fg), torch.tensor(bg))
    return (out * 255).round().to(torch.uint8)


@pytest.mark.parametrize("loss", ["classification", "regression"])
def test_colorization_learns_to_paint_on_a_tiny_set(loss):
    cfg = load_config(overrides={"method": "colorization", "model": {"backbone": "exemplar_small", "input_size": 16},
                                 "augment": {"size": 16, "crop_scale": [0.8, 1.0]}, "colorization": {"loss": loss}})
    torch.manual_seed(0)
    method = build_method(cfg, DataInfo(64))
    images = _discs(64, 0)
    method.on_train_start(images)
    losses = [h["loss"].item() for h in fit(method, images, 60, torch.optim.Adam(method.parameters(), lr=3e-3))]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    test = _discs(16, 7)
    lab = rgb_to_lab(test.permute(0, 3, 1, 2).float() / 255)
    method.eval()
    with torch.no_grad():
        painted = rgb_to_lab(method.colorize(lab))
    err = (painted[:, 1:] - lab[:, 1:]).pow(2).mean().item()
    mean_predictor = (lab[:, 1:] - lab[:, 1:].mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean().item()
    assert err < 0.5 * mean_predictor, (err, mean_predictor)


def test_sample_grid_shows_input_prediction_and_truth():
    cfg = load_config(overrides={"method": "colorization", "model": {"backbone": "exemplar_small", "input_size": 16},
                                 "augment": {"size": 16}})
    torch.manual_seed(0)
    method = build_method(cfg, DataInfo(8))
    grid = method.sample_grid(_discs(8, 0), torch.Generator().manual_seed(0))
    assert grid.dtype == np.uint8 and grid.shape == (2 * (3 * 16 + 2 * 2), 2 * (8 * 16 + 7 * 2), 3)
    assert method.training  # the previous mode is restored
    gray = grid[:32].astype(int)
    assert (gray.max(-1) - gray.min(-1)).max() <= 2  # the input row has no colour
    np.testing.assert_array_equal(grid[72:104, :32],
                                  _discs(1, 0)[0].repeat_interleave(2, 0).repeat_interleave(2, 1).numpy())


def test_evaluation_features_of_a_colorization_backbone_ignore_chroma():
    """Every evaluation path feeds the backbone what colorization trained it on, the lightness alone: images that
    differ only in their colours (same L, other ab) give the same features and tap features, where an RGB input
    would tell them apart."""
    from selfsup.augmentation import normalize
    from selfsup.eval.features import extract_features, extract_taps
    from selfsup.eval.protocols import _parts
    from selfsup.methods.colorization import lab_to_rgb
    from selfsup.methods.colorization import rgb_to_lab as lab

    g = torch.Generator().manual_seed(0)
    n = 48
    # Smooth random images of moderate lightness and colour (every pixel well inside the sRGB gamut), and the same
    # images with their chroma turned by 180 degrees in the ab plane: the same L, other colours.
    light = 35 + 30 * torch.rand(n, 1, 4, 4, generator=g)
    ab = 25 * (torch.rand(n, 2, 4, 4, generator=g) - 0.5)
    up = lambda t: torch.nn.functional.interpolate(t, size=16, mode="bilinear", align_corners=False)  # noqa: E731
    to_uint8 = lambda lab_: (lab_to_rgb(lab_, clip=True) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # noqa
    one = to_uint8(up(torch.cat([light, ab], 1)))
    other = to_uint8(up(torch.cat([light, -ab], 1)))
    shift = (lab(torch.from_numpy(one).permute(0, 3, 1, 2) / 255.0) - lab(torch.from_numpy(other).permute(0, 3, 1, 2)
                                                                          / 255.0)).abs()
    assert shift[:, 1:].mean() > 5 and shift[:, 0].max() < 1.0  # colours changed, lightness kept (to uint8 rounding)
    cfg = load_config(overrides={"method": "colorization", "model": {"backbone": "alexnet_small", "width": 0.25,
                                                                      "input_size": 16}, "augment": {"size": 16}})
    torch.manual_seed(0)
    method = build_method(cfg, DataInfo(8)).eval()
    backbone, transform, size = _parts(method, None)  # what selfsup.knn, linear_probe and finetune use
    assert transform == method.input_transform and size == 16
    assert method.input_description.startswith("CIE L*")  # what `selfsup export` writes beside the weights
    feats = [extract_features(backbone, x, 16, torch.device("cpu"), transform=transform) for x in (one, other)]
    rgb = [extract_features(backbone, x, 16, torch.device("cpu"), transform=normalize) for x in (one, other)]
    change = lambda a, b: ((a.float() - b.float()).norm() / a.float().norm()).item()  # noqa: E731 - relative
    # Measured: 1.0% (the uint8 rounding of L) against 25% for an RGB input.
    assert change(*feats) < 0.02
    assert change(*rgb) > 10 * change(*feats)  # an RGB input would see the change
    taps = [extract_taps(backbone, x, 16, torch.device("cpu"), ["conv1", "conv3"], transform=transform)
            for x in (one, other)]
    for name in ("conv1", "conv3"):
        assert change(taps[0][name], taps[1][name]) < 0.05  # conv1: 2.3%, stored in fp16

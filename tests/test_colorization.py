"""Colorization: Lab, ab bins, soft targets, class rebalancing, the annealed mean, and learning on a tiny set."""

import numpy as np
import pytest
import torch
from fitting import fit
from kornia.color import lab_to_rgb, rgb_to_lab

from selfsup.config import load_config
from selfsup.methods import DataInfo, build_method
from selfsup.methods.colorization import annealed_mean, gamut_bins, rebalancing_weights, soft_encode


def test_lab_round_trips():
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-5, rtol=0)


def test_gamut_bins_cover_every_srgb_colour():
    bins = gamut_bins(10.0)
    assert len(bins) == 262 and bins.abs().max() <= 110
    rgb = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ab = rgb_to_lab(rgb)[0, 1:].reshape(2, -1).T
    assert torch.cdist(ab, bins).min(1).values.max() <= 5 * 2 ** 0.5 + 1e-4  # every colour lies in some bin's cell


def test_soft_targets_sum_to_one_and_peak_at_the_nearest_bin():
    bins = gamut_bins()
    ab = torch.tensor([[3.0, -21.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)
    t = soft_encode(ab, bins)
    torch.testing.assert_close(t.sum(1), torch.ones(1, 1, 2))
    assert ((t > 0).sum(1) == 5).all()
    nearest = torch.cdist(ab.reshape(2, 2).T, bins).argmin(1)
    assert torch.equal(t.argmax(1).flatten(), nearest)


def test_rebalancing_weights_follow_their_definition():
    bins = gamut_bins()
    prior = torch.rand(len(bins), generator=torch.Generator().manual_seed(2), dtype=torch.float64) ** 4
    prior /= prior.sum()
    w = rebalancing_weights(prior, bins.double(), lam=0.5)
    d2 = torch.cdist(bins.double(), bins.double()) ** 2
    smoothed = torch.exp(-d2 / 50) @ prior
    smoothed /= smoothed.sum()
    expected = 1 / (0.5 * smoothed + 0.5 / len(bins))
    torch.testing.assert_close(w, expected / (smoothed * expected).sum())
    assert (smoothed * w).sum() == pytest.approx(1.0)
    assert w[smoothed.argmin()] > w[smoothed.argmax()]  # rare colours count more
    torch.testing.assert_close(rebalancing_weights(prior, bins.double(), lam=1.0),
                               torch.ones(len(bins), dtype=torch.float64))


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

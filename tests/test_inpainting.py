"""Context encoder: masks cover the stated area, the rim stays visible, and the fill beats the mean on a tiny set."""

import numpy as np
import pytest
import torch
from fitting import fit

from selfsup.config import load_config
from selfsup.errors import SelfSupError
from selfsup.methods import DataInfo, build_method
from selfsup.methods.base import Batch
from selfsup.methods.inpainting import MASKS, erode, make_masks


@pytest.mark.parametrize("kind", MASKS)
def test_masks_cover_the_stated_area(kind):
    g = torch.Generator().manual_seed(0)
    m = make_masks(kind, 64, 32, 0.25, g, "cpu")
    assert m.shape == (64, 1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0}
    cover = m.mean(dim=(1, 2, 3))
    if kind == "central":
        assert (cover == 0.25).all() and m[0, 0, 8:24, 8:24].all()
    elif kind == "blocks":  # whole 8x8 blocks added until a quarter is covered: at most one block (1/16) more
        assert (cover >= 0.25).all() and (cover <= 0.25 + 1 / 16).all()
    else:
        assert (cover - 0.25).abs().max() < 0.01
    if kind != "central":
        assert not torch.equal(m[0], m[1])  # random per sample
        assert torch.equal(m, make_masks(kind, 64, 32, 0.25, torch.Generator().manual_seed(0), "cpu"))


def test_rim_is_predicted_but_not_erased():
    region = make_masks("central", 1, 32, 0.25, None, "cpu")
    erased = erode(region, 2)
    assert erased.sum() == 12 * 12 and region.sum() == 16 * 16
    assert (erased <= region).all()


def test_unknown_mask_is_one_line():
    with pytest.raises(SelfSupError, match="central, blocks, regions"):
        build_method(load_config(overrides={"method": "inpainting", "inpainting": {"mask": "circle"}}))


def _stripes(n: int, seed: int) -> torch.Tensor:
    """Vertical colour stripes whose phase varies: the surroundings say what is under the mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(32.0)
    phase = torch.rand(n, 1, generator=g) * 6.28
    wave = 0.5 + 0.4 * torch.sin(x[None] / 3 + phase)  # (n, 32)
    img = torch.stack([wave, 1 - wave, 0.5 * torch.ones_like(wave)], -1)[:, None].expand(n, 32, 32, 3)
    return (img * 255).round().to(torch.uint8).contiguous()


def test_context_encoder_fills_the_hole_better_than_the_mean():
    cfg = load_config(overrides={"method": "inpainting", "model": {"backbone": "exemplar_small", "input_size": 32},
                                 "augment": {"size": 32, "crop_scale": [1.0, 1.0], "jitter_p": 0.0, "grayscale_p": 0.0,
                                             "flip_p": 0.0}, "inpainting": {"decoder_width": 32}})
    torch.manual_seed(0)
    method = build_method(cfg, DataInfo(64))
    images = _stripes(64, 0)
    losses = [h["loss"].item() for h in fit(method, images, 60, torch.optim.Adam(method.parameters(), lr=3e-3))]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    method.eval()
    x = method.view(Batch(_stripes(16, 5), torch.arange(16), torch.Generator().manual_seed(2)), method.aug)
    region, erased = method.masks(16, None, "cpu")
    with torch.no_grad():
        pred = method.inpaint(x, erased)
    hole = erased.bool().expand_as(x)
    err = (pred - x)[hole].pow(2).mean()
    mean_fill = (x - x.mean(dim=(0, 2, 3), keepdim=True))[hole].pow(2).mean()  # the dataset-mean colour
    assert err < 0.5 * mean_fill, (err, mean_fill)


def _small(**inpainting):
    cfg = load_config(overrides={"method": "inpainting", "model": {"backbone": "exemplar_small", "input_size": 16},
                                 "augment": {"size": 16}, "inpainting": {"decoder_width": 16, **inpainting}})
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(8))


def test_sample_grid_pastes_the_prediction_into_the_region_only():
    m = _small(mask="regions")
    grid = m.sample_grid(_stripes(8, 0)[:, :16, :16].contiguous(), torch.Generator().manual_seed(0))
    assert grid.dtype == np.uint8 and grid.shape == (2 * (3 * 16 + 2 * 2), 2 * (8 * 16 + 7 * 2), 3)
    assert m.training  # the previous mode is restored
    region, _ = m.masks(8, torch.Generator().manual_seed(0), "cpu")  # the grid's masks: same seed
    keep = (1 - region[:, 0]).bool().repeat_interleave(2, 1).repeat_interleave(2, 2)  # (8, 32, 32) at 2x
    row = lambda r: np.stack([grid[r * 36:r * 36 + 32, j * 36:j * 36 + 32] for j in range(8)])  # noqa: E731
    filled, original = row(1), row(2)
    assert (filled[keep.numpy()] == original[keep.numpy()]).all()
    assert (filled[~keep.numpy()] != original[~keep.numpy()]).any()


def test_adversarial_loss_adds_a_discriminator_and_trains():
    plain = _small()
    assert plain.discriminator is None
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in _small(adversarial=0.0).parameters())
    m = _small(adversarial=0.001)
    assert m.discriminator is not None
    own = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("discriminator."))
    assert own == sum(p.numel() for p in plain.parameters())
    out = m(Batch(_stripes(8, 0)[:, :16, :16].contiguous(), torch.arange(8), torch.Generator().manual_seed(1)))
    assert torch.isfinite(out["loss"]) and {"rec_loss", "adv_loss", "d_loss"} <= out.keys()
    assert not any(out[k].requires_grad for k in ("rec_loss", "adv_loss", "d_loss"))
    out["loss"].backward()
    assert all(p.grad is not None for p in [*m.decoder.parameters(), *m.discriminator.parameters()])


def test_each_side_gets_only_its_own_adversarial_gradient():
    m = _small(adversarial=0.001)
    x = m.view(Batch(_stripes(4, 0)[:, :16, :16].contiguous(), torch.arange(4), torch.Generator().manual_seed(1)),
               m.aug)
    region, erased = m.masks(4, None, "cpu")
    filled = x * (1 - region) + m.inpaint(x, erased) * region
    d_loss, g_loss = m.adversarial_losses(x, filled)
    g_loss.backward(retain_graph=True)  # the inpainter's term: nothing reaches D's weights
    assert all(p.grad is None for p in m.discriminator.parameters())
    assert all(p.grad is not None for p in m.decoder.parameters())
    m.zero_grad(set_to_none=True)
    d_loss.backward()  # D's term: nothing reaches the inpainter
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.discriminator.parameters())
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("discriminator."))


@pytest.mark.parametrize("weight", [-0.1, 1.0])
def test_adversarial_weight_outside_0_1_is_an_error(weight):
    with pytest.raises(SelfSupError, match="inpainting.adversarial"):
        _small(adversarial=weight)

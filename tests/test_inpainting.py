"""Context encoder: masks cover the stated area, the rim stays visible, and the fill beats the mean on a tiny set."""

import math

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
    cfg = load_config(overrides={"method": "inpainting", "model": {"backbone": "exemplar_small", "input_size": 16},
                                 "augment": {"size": 16, "crop_scale": [1.0, 1.0], "jitter_p": 0.0, "grayscale_p": 0.0,
                                             "flip_p": 0.0}, "inpainting": {"decoder_width": 32}})
    torch.manual_seed(0)
    method = build_method(cfg, DataInfo(64))
    images = _stripes(64, 0)[:, :16, :16].contiguous()
    losses = [h["loss"].item() for h in fit(method, images, 40, torch.optim.Adam(method.parameters(), lr=3e-3))]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    method.eval()
    x = method.view(Batch(_stripes(16, 5)[:, :16, :16].contiguous(), torch.arange(16),
                          torch.Generator().manual_seed(2)), method.aug)
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


def _loss_of(m, pred: torch.Tensor, x: torch.Tensor) -> dict:
    """m's training step on the normalised image x, with the decoder's prediction replaced by `pred`."""
    m.view = lambda batch, aug=None: x
    m.inpaint = lambda inp, erased: pred
    return m(Batch(torch.zeros(len(x), 16, 16, 3, dtype=torch.uint8), torch.arange(len(x)),
                   torch.Generator().manual_seed(0)))


def test_rim_counts_ten_times_and_the_rest_of_the_image_not_at_all():
    m = _small()  # central mask at 16 px: an 8x8 region whose inner 4x4 is erased, leaving a rim of 48 pixels
    region, erased = m.masks(1, None, "cpu")
    rim = region - erased
    assert region.sum() == 64 and erased.sum() == 16 and rim.sum() == 48
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    # The loss is the weighted squared error over the region's 3 x 64 values: the erased centre weighs 1, the rim 10.
    assert _loss_of(m, x + erased, x)["loss"].item() == pytest.approx(3 * 16 / (3 * 64))
    assert _loss_of(m, x + rim, x)["loss"].item() == pytest.approx(10 * 3 * 48 / (3 * 64))
    assert _loss_of(m, x + 5 * (1 - region), x)["loss"].item() == pytest.approx(0.0)
    one = torch.zeros_like(x)
    one[0, 1, 4, 9] = 2.0  # one channel of one rim pixel off by 2 (row 4 is the region's top row)
    assert _loss_of(m, x + one, x)["loss"].item() == pytest.approx(10 * 4 / (3 * 64))
    # The encoder sees the rim: only the inner 4x4 is zeroed in its input.
    seen = []
    forward_taps = m.backbone.forward_taps
    m.backbone.forward_taps = lambda inp, names: (seen.append(inp), forward_taps(inp, names))[1]
    type(m).inpaint(m, x, erased)
    torch.testing.assert_close(seen[0], x * (1 - erased))
    assert (seen[0][0, :, 4:12, 4:12] != 0).sum() == 3 * 48


def test_adversarial_term_joins_the_reconstruction_as_the_paper_weighs_it():
    m = _small(adversarial=0.25)

    class Brightness(torch.nn.Module):  # a discriminator whose logits are known: 4 x the image's mean
        def forward(self, img):
            return 4 * img.mean(dim=(1, 2, 3))

    m.discriminator = Brightness()
    x = torch.zeros(2, 3, 16, 16)
    out = _loss_of(m, torch.ones_like(x), x)
    # Reconstruction: error 1 everywhere, (16 + 10 * 48) / 64 = 7.75. The fake is x with the prediction pasted into
    # the region: mean 64/256, logit 1; the real image has logit 0. D: -log sigmoid(0) - log(1 - sigmoid(1)); the
    # inpainter's non-saturating term: -log sigmoid(1).
    rec, d_loss, adv = 7.75, math.log(2) + math.log(1 + math.e), math.log(1 + math.exp(-1))
    assert out["rec_loss"].item() == pytest.approx(rec)
    assert out["d_loss"].item() == pytest.approx(d_loss)
    assert out["adv_loss"].item() == pytest.approx(adv)
    assert out["loss"].item() == pytest.approx(0.75 * rec + 0.25 * adv + d_loss)


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

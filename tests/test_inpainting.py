"""Context encoder: masks cover the stated area, the rim stays visible, and the fill beats the mean on a tiny set."""

import pytest
import torch

from selfsup.config import load_config
from selfsup.errors import SelfSupError
from selfsup.methods import build_method
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
    method = build_method(cfg, 64)
    images = _stripes(64, 0)
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        loss = method(Batch(images, torch.arange(64), gen))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
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

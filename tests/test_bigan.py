"""BiGAN: the discriminator's pairs, each net getting only its own objective's gradient, and learning on a tiny set."""

import copy

import numpy as np
import torch
import torch.nn.functional as F
from fitting import fit

from selfsup.config import load_config
from selfsup.methods import DataInfo, build_method
from selfsup.methods.base import Batch


def _bigan(size=16):
    cfg = load_config(overrides={"method": "bigan", "model": {"backbone": "exemplar_small", "input_size": size},
                                 "augment": {"size": size, "crop_scale": [1.0, 1.0], "jitter_p": 0.0,
                                             "grayscale_p": 0.0},
                                 "bigan": {"z_dim": 8, "generator_width": 32, "discriminator_width": 16}})
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(32))


def test_discriminator_sees_matched_real_and_fake_pairs():
    m = _bigan()
    x = torch.randn(4, 3, 16, 16)
    (x_real, z_real), (x_fake, z_fake) = m.pairs(x, torch.Generator().manual_seed(0))
    assert torch.equal(x_real, x)
    torch.testing.assert_close(z_real, m.encode(x))  # the real pair: an image and its encoding
    torch.testing.assert_close(x_fake, m.generator(z_fake))  # the fake pair: a latent and its generated image
    assert x_fake.shape == x.shape and z_fake.shape == z_real.shape == (4, 8)
    scores = m.discriminator(torch.cat([x_real, x_fake]), torch.cat([z_real, z_fake]))
    assert scores.shape == (8,)


def test_each_net_gets_the_gradient_of_its_own_objective():
    m = _bigan()
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    start = copy.deepcopy(m.state_dict())  # spectral norm's power iteration updates buffers on every call
    torch.manual_seed(5)  # dropout draws from the global generator
    m(Batch(images, torch.arange(8), torch.Generator().manual_seed(3)))["loss"].backward()
    combined = {n: p.grad.clone() for n, p in m.named_parameters()}
    # Each objective on its own, with the same random draws: D must get exactly D's loss gradient, and G and E
    # exactly the gradient of theirs.
    m.load_state_dict(start)
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(3)
    x = m.view(Batch(images, torch.arange(8), gen), m.aug).float()
    (x_real, z_real), (x_fake, z_fake) = m.pairs(x, gen)
    ones, zeros = torch.ones(8), torch.zeros(8)
    d_loss = F.binary_cross_entropy_with_logits(m.discriminator(x_real, z_real.detach()), ones) + \
        F.binary_cross_entropy_with_logits(m.discriminator(x_fake.detach(), z_fake), zeros)
    ge_loss = F.binary_cross_entropy_with_logits(m.discriminator(x_real, z_real), zeros) + \
        F.binary_cross_entropy_with_logits(m.discriminator(x_fake, z_fake), ones)
    d_params = dict(m.discriminator.named_parameters())
    ge_params = {n: p for n, p in m.named_parameters() if not n.startswith("discriminator.")}
    for name, g in zip(d_params, torch.autograd.grad(d_loss, list(d_params.values()))):
        torch.testing.assert_close(combined[f"discriminator.{name}"], g, atol=1e-6, rtol=1e-4)
    for name, g in zip(ge_params, torch.autograd.grad(ge_loss, list(ge_params.values()), allow_unused=True)):
        torch.testing.assert_close(combined[name], torch.zeros_like(combined[name]) if g is None else g,
                                   atol=1e-6, rtol=1e-4)


def test_bigan_trains_and_the_discriminator_learns_on_a_tiny_set():
    m = _bigan()
    images = torch.randint(0, 256, (64, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    history = fit(m, images, 5, torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)), seed=2)
    assert all(torch.isfinite(h["loss"]) for h in history)
    # Within a few steps D tells (x, E(x)) from (G(z), z) far better than it did at its initialisation (the first
    # step's accuracy, measured before any update, is about chance): the adversarial game is being played.
    start = history[0]["d_accuracy"].item()
    assert abs(start - 0.5) < 0.15 and max(h["d_accuracy"].item() for h in history[1:]) > start + 0.3


def test_bigan_rejects_an_input_size_its_generator_cannot_make():
    import pytest

    from selfsup.errors import SelfSupError

    with pytest.raises(SelfSupError, match="power-of-two"):
        build_method(load_config(overrides={"method": "bigan",
                                            "model": {"backbone": "exemplar_small", "input_size": 24},
                                            "augment": {"size": 24}}))


def test_sample_grid_shows_samples_reals_and_reconstructions():
    m = _bigan()
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    grid = m.sample_grid(images, torch.Generator().manual_seed(0))
    assert grid.dtype == np.uint8 and grid.shape == (2 * (3 * 16 + 2 * 2), 2 * (8 * 16 + 7 * 2), 3)
    assert m.training  # the previous mode is restored
    np.testing.assert_array_equal(grid[36:68, :32], images[0].repeat_interleave(2, 0).repeat_interleave(2, 1).numpy())
    np.testing.assert_array_equal(grid, m.sample_grid(images, torch.Generator().manual_seed(0)))  # seeded


def test_stochastic_encoder_draws_around_its_mean():
    cfg = load_config(overrides={"method": "bigan", "model": {"backbone": "exemplar_small", "input_size": 16},
                                 "augment": {"size": 16}, "bigan": {"z_dim": 8, "generator_width": 32,
                                                                     "discriminator_width": 16,
                                                                     "stochastic_encoder": True}})
    torch.manual_seed(0)
    m = build_method(cfg, DataInfo(32)).eval()
    assert m.to_z.out_features == 16
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        mean = m.encode(x)
        draws = torch.stack([m.encode(x, torch.Generator().manual_seed(s)) for s in range(200)])
    assert mean.shape == (4, 8) and torch.equal(mean, m.encode(x))  # no generator: the mean, deterministic
    assert not torch.equal(draws[0], draws[1])
    log_std = m.to_z(m.backbone(x)).chunk(2, dim=1)[1].clamp(-5, 2)
    torch.testing.assert_close(draws.mean(0), mean, atol=4 * log_std.exp().max().item() / 200 ** 0.5, rtol=0)
    m.train()
    history = fit(m, torch.randint(0, 256, (32, 16, 16, 3), dtype=torch.uint8), 3,
                  torch.optim.Adam(m.parameters(), lr=2e-4))
    assert all(torch.isfinite(h["loss"]) for h in history)


def test_reconstruction_adds_the_cycle_term_for_encoder_and_generator_only():
    m = _bigan()
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    start = copy.deepcopy(m.state_dict())

    def step(weight):
        m.load_state_dict(start)
        m.zero_grad()
        m.cfg.reconstruction = weight
        torch.manual_seed(5)
        out = m(Batch(images, torch.arange(8), torch.Generator().manual_seed(3)))
        out["loss"].backward()
        return out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain, plain_grads = step(0.0)
    cycled, cycled_grads = step(2.0)
    assert "rec_loss" not in plain and cycled["rec_loss"] > 0
    torch.testing.assert_close(cycled["loss"], plain["loss"] + 2.0 * cycled["rec_loss"])
    for name, grad in plain_grads.items():
        if name.startswith("discriminator."):
            torch.testing.assert_close(cycled_grads[name], grad)  # D's objective is untouched
    changed = [n for n in plain_grads
               if n.startswith(("backbone.", "generator.")) and not torch.allclose(cycled_grads[n], plain_grads[n])]
    assert any(n.startswith("backbone.") for n in changed) and any(n.startswith("generator.") for n in changed)

"""BiGAN (Donahue, Kraehenbuehl, Darrell, ICLR 2017): a GAN that also learns the inverse map, image -> latent.

A generator G maps z ~ N(0, I) to an image, an encoder E (the backbone and a linear layer) maps an image
to z, and a discriminator D scores (image, latent) pairs: (x, E(x)) from the data is "real", (G(z), z) is
"fake". D learns to tell them apart while G and E learn to fool it; at the optimum E inverts G, and E's
layers are the features that get probed.

Choices for stable training on CIFAR-size images (documented because the paper leaves them open there):
- Non-saturating losses: D minimises BCE(D(x, E(x)), 1) + BCE(D(G(z), z), 0); G and E minimise the
  swapped labels.
- A DCGAN generator (linear to 4x4, transposed convs with batch-norm, tanh) and a discriminator with
  spectral normalisation on every layer and dropout 0.2, image and latent paths joined by an MLP.
- One optimizer for all three nets (Adam, beta1 = 0.5 in the recipes): each loss sees the other
  side's nets frozen (D's loss gets detached E(x) and G(z); G and E's loss calls D with detached
  weights), so one backward pass gives every net exactly the gradient of its own objective.
- `bigan.stochastic_encoder`: E gives a mean and a log-std and z is drawn from them (ALI, Dumoulin et
  al. 2017), so E(x) covers the latent space even when the backbone's features are narrower than z;
  reconstructions and features use the mean.
- `bigan.reconstruction`: a weight on ||x - G(E(x))||^2 for E and G (ALICE's explicit cycle consistency,
  Li et al. 2017). Off by default (the paper's BiGAN). At a 2-core CPU budget the plain game left E
  collapsed (one reconstruction for every image) and this term undid that (README, pretext tasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from selfsup.augmentation import MEAN, STD, to_input
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, Method, call_frozen
from selfsup.methods.registry import register_method
from selfsup.nets import eval_mode


@dataclass
class BiGANConfig:
    """BiGAN: latent size and the widths of the generator and discriminator."""

    RANGES: ClassVar[dict[str, str]] = {"z_dim": "[1, inf)", "generator_width": "[1, inf)",
                                        "discriminator_width": "[1, inf)", "reconstruction": "[0, inf)"}

    z_dim: int = 128
    generator_width: int = 256
    discriminator_width: int = 64
    stochastic_encoder: bool = False  # E gives a mean and a log-std and z is drawn from them (as ALI does)
    reconstruction: float = 0.0  # weight of ALICE's cycle term ||x - G(E(x))||^2 on E and G (0: the paper's BiGAN)


class Generator(nn.Module):
    """z -> image in the network's normalised input range (DCGAN layout; tanh output mapped to [0,1], normalised)."""

    def __init__(self, z_dim: int, size: int, width: int = 256):
        super().__init__()
        self.start = 4
        ups = []
        c, s = width, self.start
        while s < size:
            ups += [nn.ConvTranspose2d(c, max(32, c // 2), 4, 2, 1, bias=False), nn.BatchNorm2d(max(32, c // 2)),
                    nn.ReLU(True)]
            c, s = max(32, c // 2), s * 2
        self.fc = nn.Sequential(nn.Linear(z_dim, width * self.start ** 2, bias=False),
                                nn.BatchNorm1d(width * self.start ** 2), nn.ReLU(True))
        self.net = nn.Sequential(*ups, nn.Conv2d(c, 3, 3, padding=1), nn.Tanh())
        self.width = width
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(self.fc(z).view(len(z), self.width, self.start, self.start))
        return ((x + 1) / 2 - self.mean) / self.std


class Discriminator(nn.Module):
    """(image, latent) -> logit: a strided conv path for the image, an MLP for z, an MLP on both."""

    def __init__(self, z_dim: int, size: int, width: int = 64, dropout: float = 0.2):
        super().__init__()
        layers, c, s = [], 3, size
        while s > 4:
            layers += [spectral_norm(nn.Conv2d(c, width, 4, 2, 1)), nn.LeakyReLU(0.2, True), nn.Dropout(dropout)]
            c, s, width = width, s // 2, width * 2
        self.image = nn.Sequential(*layers, nn.Flatten())
        self.latent = nn.Sequential(spectral_norm(nn.Linear(z_dim, 512)), nn.LeakyReLU(0.2, True), nn.Dropout(dropout))
        self.joint = nn.Sequential(spectral_norm(nn.Linear(c * s * s + 512, 1024)), nn.LeakyReLU(0.2, True),
                                   nn.Dropout(dropout), spectral_norm(nn.Linear(1024, 1)))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.image(x), self.latent(z)], 1)).squeeze(1)


@register_method("bigan", config=BiGANConfig)
class BiGAN(Method):
    """Encoder (backbone + linear to z), generator and joint discriminator, trained adversarially."""

    cfg: BiGANConfig

    def __init__(self, backbone, cfg: BiGANConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        cfg, input_size = self.cfg, self.data.input_size
        if input_size < 4 or input_size & (input_size - 1):
            raise SelfSupError(f"bigan needs a power-of-two model.input_size of at least 4 (its generator doubles 4x4 "
                               f"maps), got {input_size}")
        self.input_size = input_size
        self.to_z = nn.Linear(self.backbone.feature_dim, cfg.z_dim * (2 if cfg.stochastic_encoder else 1))
        self.generator = Generator(cfg.z_dim, input_size, cfg.generator_width)
        self.discriminator = Discriminator(cfg.z_dim, input_size, cfg.discriminator_width)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """E(x). A stochastic encoder draws z = mean + std * noise when given a generator, else returns the mean."""
        out = self.to_z(self.backbone(x)).float()
        if not self.cfg.stochastic_encoder:
            return out
        mean, log_std = out.chunk(2, dim=1)
        if generator is None:
            return mean
        noise = self.draw(lambda: torch.randn(mean.shape, generator=generator, device=mean.device), mean.device)
        return mean + log_std.clamp(-5, 2).exp() * noise

    def pairs(self, x: torch.Tensor, generator: torch.Generator) -> tuple[tuple, tuple]:
        """The discriminator's real pair (x, E(x)) and fake pair (G(z), z), z ~ N(0, I)."""
        z = self.draw(lambda: torch.randn(len(x), self.cfg.z_dim, generator=generator, device=x.device), x.device)
        return (x, self.encode(x, generator)), (self.generator(z).float(), z)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.view(batch).float()
        (x_real, z_real), (x_fake, z_fake) = self.pairs(x, batch.generator)
        ones, zeros = torch.ones(len(x), device=x.device), torch.zeros(len(x), device=x.device)
        # D's objective, with E and G frozen (detached inputs).
        d_real = self.discriminator(x_real, z_real.detach())
        d_fake = self.discriminator(x_fake.detach(), z_fake)
        d_loss = F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(d_fake, zeros)
        # E and G's objective (labels swapped), with D frozen: its weights enter as detached tensors.
        g_real = call_frozen(self.discriminator, x_real, z_real)
        g_fake = call_frozen(self.discriminator, x_fake, z_fake)
        ge_loss = F.binary_cross_entropy_with_logits(g_real, zeros) + F.binary_cross_entropy_with_logits(g_fake, ones)
        d_acc = ((d_real > 0).float().mean() + (d_fake < 0).float().mean()) / 2
        out = {"loss": d_loss + ge_loss, "d_loss": d_loss.detach(), "ge_loss": ge_loss.detach(),
               "d_accuracy": d_acc.detach()}
        if self.cfg.reconstruction > 0:
            # ALICE's cycle term: the adversarial game alone does not make E(x) say which x it came from (the two
            # nets can match the joint distributions only loosely), this ties G(E(x)) back to x.
            rec = F.mse_loss(self.generator(z_real).float(), x_real)
            out["loss"] = out["loss"] + self.cfg.reconstruction * rec
            out["rec_loss"] = rec.detach()
        return out

    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray:
        """Rows: samples G(z), real images x, their reconstructions G(E(x))."""
        from selfsup.report import image_rows, unnormalize  # matplotlib is imported only to make a picture

        with torch.no_grad(), eval_mode(self):
            x = to_input(images, self.input_size)
            z = torch.randn(len(x), self.cfg.z_dim, generator=generator, device=x.device)
            return image_rows([unnormalize(self.generator(z)), unnormalize(x),
                               unnormalize(self.generator(self.encode(x)))])


__all__ = ["BiGAN", "BiGANConfig", "Generator", "Discriminator"]

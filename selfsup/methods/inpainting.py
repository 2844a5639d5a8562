"""Context encoder (Pathak et al. 2016): fill in a missing region of an image from its surroundings.

An encoder (the backbone, up to its last spatial map) and a decoder (transposed convs back to full size)
predict the pixels of a masked region. The input has the region erased except for an `overlap`-pixel rim
just inside its border; the network predicts the whole region, rim included, and the L2 loss weights the rim
10x, as in the paper, so the fill blends with its context. Masks cover `mask_fraction` of the image (1/4
by default) and are one of:
- central: the centred square;
- blocks: squares of side S/4 at random places, added until they cover the fraction;
- regions: random blobs (smooth noise thresholded at the fraction), standing in for the paper's shapes
  taken from PASCAL segmentations, which are not available offline.

With `bottleneck` = channelwise the encoder's last map reaches the decoder through the paper's channel-wise fully
connected layer (Sec. 3.1), so every decoder unit can see the whole image, followed by a stride-1 1x1 convolution that
mixes the channels (see ChannelwiseFC).

With `adversarial` = w > 0 the loss is the paper's joint one, (1 - w) * reconstruction + w * adversarial
(the paper: w = 0.001), which sharpens the fill. A discriminator (strided 4x4 convs with spectral norm, as
BiGAN's) scores whole images: the original is real, the input with the predicted region pasted in is fake;
losses are non-saturating BCE. As in BiGAN one optimizer step trains both sides: D's loss sees detached
fakes and the encoder/decoder's adversarial term calls D with detached weights, so each net gets exactly
the gradient of its own objective (D's loss enters unweighted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from selfsup.augmentation import to_input
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, Method, call_frozen
from selfsup.methods.registry import register_method
from selfsup.nets import eval_mode

MASKS = ("central", "blocks", "regions")
BOTTLENECKS = ("none", "channelwise")


@dataclass
class InpaintingConfig:
    """Context encoder: which region is missing, and how the loss treats its rim (Pathak et al. 2016)."""

    RANGES: ClassVar[dict[str, str]] = {"mask_fraction": "(0, 1)", "overlap": "[0, inf)", "overlap_weight": "[0, inf)",
                                        "decoder_width": "[1, inf)", "adversarial": "[0, 1)"}

    mask: str = "central"  # central | blocks | regions
    mask_fraction: float = 0.25  # of the image area
    overlap: int = 2  # rim (pixels) inside the region that stays visible but is predicted; the paper: 4 at 128 px
    overlap_weight: float = 10.0
    decoder_width: int = 128
    adversarial: float = 0.0  # weight of the adversarial loss; the paper's joint loss: 0.001 (0.999 on reconstruction)
    # between encoder and decoder: none (the map as it is) | channelwise (the paper's channel-wise fully connected
    # layer, then a stride-1 1x1 convolution and ReLU)
    bottleneck: str = "none"


def make_masks(kind: str, n: int, size: int, fraction: float, generator: torch.Generator, device) -> torch.Tensor:
    """(n,1,size,size) float masks, 1 where the image is missing."""
    if kind == "central":
        side = round(size * fraction ** 0.5)
        start = (size - side) // 2
        m = torch.zeros(n, 1, size, size, device=device)
        m[..., start:start + side, start:start + side] = 1
        return m
    if kind == "blocks":
        side, tries = max(1, size // 4), 4 * max(1, round(fraction * 16)) + 4
        yx = torch.randint(0, size - side + 1, (n, tries, 2), generator=generator, device=device)
        ar = torch.arange(size, device=device)
        rows = (ar[None, None] >= yx[..., :1]) & (ar[None, None] < yx[..., :1] + side)  # (n, tries, size)
        cols = (ar[None, None] >= yx[..., 1:]) & (ar[None, None] < yx[..., 1:] + side)
        union = torch.cummax((rows[..., :, None] & cols[..., None, :]).float(), dim=1).values  # first k blocks
        enough = union.mean(dim=(2, 3)) >= fraction
        first = torch.where(enough.any(1), enough.float().argmax(1), torch.full((n,), tries - 1, device=device))
        return union[torch.arange(n, device=device), first][:, None]
    if kind == "regions":
        coarse = torch.rand(n, 1, max(2, size // 8), max(2, size // 8), generator=generator, device=device)
        smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        threshold = torch.quantile(smooth.flatten(1), 1 - fraction, dim=1)
        return (smooth > threshold[:, None, None, None]).float()
    raise SelfSupError(f"inpainting.mask must be one of {', '.join(MASKS)}, got {kind!r}")


def erode(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """The mask shrunk by `pixels` on every side (a min-filter)."""
    if pixels <= 0:
        return mask
    return -F.max_pool2d(-mask, 2 * pixels + 1, stride=1, padding=pixels)


class ChannelwiseFC(nn.Module):
    """The context encoder's channel-wise fully connected layer (Pathak et al. 2016, Sec. 3.1): on m feature maps of
    n x n, each map is fully connected to its own n x n output map and to no other ("a fully-connected layer with
    groups"): m * n^4 weights instead of a full layer's m^2 * n^4.

    The paper counts the weights "ignoring the bias term"; here each output unit has its own bias (per channel and
    position, m * n^2 numbers), as each channel's map is an nn.Linear(n*n, n*n), initialised as nn.Linear. The
    released code has no such layer (its inpainting net bottlenecks through a dense 4x4 convolution), so the paper's
    text is all there is to follow.
    """

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        area = height * width
        bound = 1 / area ** 0.5  # nn.Linear's default: uniform in +-1/sqrt(fan_in), weights and bias alike
        self.weight = nn.Parameter(torch.empty(channels, area, area).uniform_(-bound, bound))  # (C, in, out)
        self.bias = nn.Parameter(torch.empty(channels, area).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (C, B, in) @ (C, in, out): one batched matmul, a separate matrix per channel.
        out = torch.baddbmm(self.bias[:, None].to(x.dtype), x.flatten(2).transpose(0, 1), self.weight.to(x.dtype))
        return out.transpose(0, 1).reshape(b, c, h, w)


def channelwise_bottleneck(channels: int, height: int, width: int) -> nn.Sequential:
    """The paper's bottleneck: the channel-wise fully connected layer, then "a stride 1 convolution to propagate
    information across channels" (1x1 here: the paper gives no kernel size) and a ReLU. The paper names no
    non-linearity for these two layers (only "up-convolutional layers ..., each with a ReLU"); one ReLU after the
    convolution, none between the two linear layers (together a factorised fully connected layer), is our choice."""
    return nn.Sequential(ChannelwiseFC(channels, height, width), nn.Conv2d(channels, channels, 1),
                         nn.ReLU(inplace=True))


class Discriminator(nn.Module):
    """Image -> logit: strided 4x4 convs with spectral norm and LeakyReLU(0.2) down to 4x4, then a linear layer."""

    def __init__(self, size: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c, s = 3, size
        while s > 4:
            layers += [spectral_norm(nn.Conv2d(c, width, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            c, s, width = width, s // 2, min(512, width * 2)
        self.net = nn.Sequential(*layers, nn.Flatten(), spectral_norm(nn.Linear(c * s * s, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1).float()


@register_method("inpainting", config=InpaintingConfig)
class ContextEncoder(Method):
    """Backbone as encoder + a transposed-conv decoder to full resolution, trained to inpaint."""

    cfg: InpaintingConfig

    def __init__(self, backbone, cfg: InpaintingConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        cfg = self.cfg
        if cfg.mask not in MASKS:
            raise SelfSupError(f"inpainting.mask must be one of {', '.join(MASKS)}, got {cfg.mask!r}")
        if not 0 < cfg.mask_fraction < 1:
            raise SelfSupError(f"inpainting.mask_fraction must be between 0 and 1, got {cfg.mask_fraction}")
        if not 0 <= cfg.adversarial < 1:
            raise SelfSupError(f"inpainting.adversarial must be in [0, 1) (the paper: 0.001), got {cfg.adversarial}")
        if cfg.bottleneck not in BOTTLENECKS:
            raise SelfSupError(f"inpainting.bottleneck must be one of {', '.join(BOTTLENECKS)}, got {cfg.bottleneck!r}")
        self.input_size = input_size = self.data.input_size
        self.encoder_tap, shape = self.backbone.last_spatial_tap(input_size)
        channels, size = shape[0], shape[-1]
        self.bottleneck = channelwise_bottleneck(*shape) if cfg.bottleneck == "channelwise" else None
        layers: list[nn.Module] = []
        width = cfg.decoder_width
        cin = channels
        while size * 2 <= input_size:
            layers += [nn.ConvTranspose2d(cin, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            cin, size = width, size * 2
            width = max(16, width // 2)
        if size != input_size:
            # A map that does not double up to the image exactly (AlexNet's conv5 is 13 x 13 at 227 px: 208 after
            # four up-convolutions) is resized the rest of the way before the last convolution.
            layers.append(nn.Upsample(size=(input_size, input_size), mode="bilinear", align_corners=False))
        layers.append(nn.Conv2d(cin, 3, 3, padding=1))
        self.decoder = nn.Sequential(*layers)
        self.discriminator = Discriminator(input_size) if cfg.adversarial > 0 else None

    def masks(self, n: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(region to predict, region erased from the input): the second is the first minus its overlap rim."""
        region = make_masks(self.cfg.mask, n, self.input_size, self.cfg.mask_fraction, generator, device)
        return region, erode(region, self.cfg.overlap)

    def inpaint(self, x: torch.Tensor, erased: torch.Tensor) -> torch.Tensor:
        """The decoder's full-size prediction for normalised images x with `erased` pixels set to 0 (the mean)."""
        inp = x * (1 - erased)
        inp = inp.contiguous(memory_format=torch.channels_last) if self.channels_last else inp
        fmap = self.backbone.forward_taps(inp, [self.encoder_tap])[self.encoder_tap]
        if self.bottleneck is not None:
            fmap = self.bottleneck(fmap)
        return self.decoder(fmap).float()

    def adversarial_losses(self, x: torch.Tensor, filled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D's loss on real x vs. detached fakes, the inpainter's loss through D's detached weights)."""
        ones, zeros = torch.ones(len(x), device=x.device), torch.zeros(len(x), device=x.device)
        d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(x), ones)
                  + F.binary_cross_entropy_with_logits(self.discriminator(filled.detach()), zeros))
        g_loss = F.binary_cross_entropy_with_logits(call_frozen(self.discriminator, filled), ones)
        return d_loss, g_loss

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.view(batch).float()
        region, erased = self.draw(lambda: self.masks(len(x), batch.generator, x.device), x.device)
        pred = self.inpaint(x, erased)
        weight = erased + self.cfg.overlap_weight * (region - erased)  # the rim counts 10x
        rec = (weight * (pred - x) ** 2).sum() / (3 * region.sum()).clamp_min(1)
        if self.discriminator is None:
            return {"loss": rec}
        w = self.cfg.adversarial
        d_loss, adv = self.adversarial_losses(x, x * (1 - region) + pred * region)
        return {"loss": (1 - w) * rec + w * adv + d_loss, "rec_loss": rec.detach(), "adv_loss": adv.detach(),
                "d_loss": d_loss.detach()}

    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray:
        """Rows: the input (erased area grey), the prediction pasted into the region, the original."""
        from selfsup.report import image_rows, unnormalize  # matplotlib is imported only to make a picture

        with torch.no_grad(), eval_mode(self):
            x = to_input(images, self.input_size)
            region, erased = self.masks(len(x), generator, x.device)
            pred = self.inpaint(x, erased)
            filled = x * (1 - region) + pred * region
            return image_rows([unnormalize(x) * (1 - erased) + 0.5 * erased, unnormalize(filled), unnormalize(x)])


__all__ = ["ContextEncoder", "InpaintingConfig", "Discriminator", "ChannelwiseFC", "channelwise_bottleneck",
           "make_masks", "erode", "MASKS", "BOTTLENECKS"]

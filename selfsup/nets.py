"""Backbones with named taps, so every layer can be probed.

A backbone maps a normalised image batch to a flat representation (`forward`) and can return the
activations at any of its named taps (`forward_taps`), in network order. `build_backbone(name)` makes
selfsup's own; `wrap(module)` makes any torchvision or timm model a backbone (its classifier dropped, its
feature size found by one forward pass).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from selfsup.config import ModelConfig
from selfsup.errors import SelfSupError


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """The module in eval mode (running batch-norm statistics, no dropout) for the block, then back as it was."""
    training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(training)


class Backbone(nn.Module):
    """Base of every backbone: `taps` are the layer names in network order, `feature_dim` the output width.

    `model_config` says how build_backbone made it (so a run can rebuild it); None for a wrapped module.
    """

    taps: list[str]
    feature_dim: int
    model_config: ModelConfig | None = None

    def forward_taps(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations at the requested taps (all when None), in network order."""
        raise NotImplementedError

    def _check_taps(self, names: list[str] | None) -> list[str]:
        names = list(self.taps) if names is None else list(names)
        unknown = [n for n in names if n not in self.taps]
        if unknown:
            raise SelfSupError(f"unknown layer(s) {unknown}; this backbone has {', '.join(self.taps)}")
        return names

    @torch.no_grad()
    def tap_shapes(self, input_size: int, names: list[str] | None = None) -> dict[str, torch.Size]:
        """Per-image output shape of each requested tap (all when None) for input_size-pixel images."""
        device = next(self.parameters()).device
        with eval_mode(self):
            maps = self.forward_taps(torch.zeros(1, 3, input_size, input_size, device=device), names)
        return {name: m.shape[1:] for name, m in maps.items()}

    def last_spatial_tap(self, input_size: int) -> tuple[str, torch.Size]:
        """The deepest tap still a (C,H,W) map for input_size-pixel images, and its shape: an encoder's output."""
        spatial = [(name, shape) for name, shape in self.tap_shapes(input_size).items() if len(shape) == 3]
        if not spatial:
            raise SelfSupError("this method needs a backbone with a spatial (conv) layer")
        return spatial[-1]


class StagedBackbone(Backbone):
    """A sequence of named stages (the taps) and a head from the last stage's map to the flat representation."""

    def __init__(self, stages: dict[str, nn.Module], head: nn.Module, feature_dim: int):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.head = head
        self.taps = list(stages)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return self.head(x)

    def forward_taps(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations at the requested taps (all when None); stops after the deepest one asked for."""
        names = self._check_taps(names)
        last = max(self.taps.index(n) for n in names)
        out = {}
        for i, (name, stage) in enumerate(self.stages.items()):
            x = stage(x)
            if name in names:
                out[name] = x
            if i == last:
                break
        return out


def _conv_bn(cin: int, cout: int, k: int, bn: bool, stride: int = 1) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class ResNet(StagedBackbone):
    """A ResNet with taps conv1, layer1..layer4: torchvision's resnet18/50, or any given torchvision or timm ResNet
    (its modules are shared, not copied). `cifar_stem` swaps in a 3x3 stride-1 conv and drops the max-pool."""

    def __init__(self, depth: int = 18, cifar_stem: bool = False, net: nn.Module | None = None):
        net = net if net is not None else torchvision_resnet(depth, cifar_stem)
        act = getattr(net, "relu", None) or net.act1  # torchvision calls it relu, timm act1
        stem = nn.Sequential(net.conv1, net.bn1, act)
        stages = {"conv1": stem, "layer1": nn.Sequential(net.maxpool, net.layer1), "layer2": net.layer2,
                  "layer3": net.layer3, "layer4": net.layer4}
        super().__init__(stages, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), net.layer4[-1].conv1.in_channels)

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under torchvision's (and timm's) resnet key names, without fc: they load with strict=True
        into torchvision_resnet(depth, cifar_stem) (or timm_resnet), which gives the same features."""
        out = {}
        for key, value in self.state_dict().items():
            parts = key.split(".")  # stages.<tap>.<idx>.<rest>
            tap, idx, rest = parts[1], parts[2], parts[3:]
            if tap == "conv1":
                name = ["conv1", "bn1"][int(idx)]
                out[".".join([name] + rest)] = value
            elif tap == "layer1":
                out[".".join(["layer1"] + rest)] = value  # index 0 is the parameterless max-pool
            else:
                out[".".join([tap, idx] + rest)] = value
        return out


def torchvision_resnet(depth: int = 18, cifar_stem: bool = False) -> nn.Module:
    """The stock torchvision ResNet that an exported selfsup ResNet loads into with strict=True: `fc` is an identity
    (the representation is the pooled layer4, as selfsup's), and with `cifar_stem` conv1 is 3x3 stride 1, no max-pool.

    Example:
        >>> net = torchvision_resnet(18, cifar_stem=True)
        >>> net.load_state_dict(torch.load("backbone.pth"), strict=True)  # from selfsup export RUN --format torchvision
    """
    net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
    net = _cifar_stem(net, cifar_stem)
    net.fc = nn.Identity()
    return net


def _cifar_stem(net: nn.Module, cifar_stem: bool) -> nn.Module:
    """A torchvision or timm ResNet with, when asked, the CIFAR stem: conv1 3x3 stride 1 and no max-pool."""
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net


def timm_resnet(depth: int = 18, cifar_stem: bool = False) -> nn.Module:
    """timm's ResNet without classifier (num_classes=0), with the CIFAR stem when asked: loads a selfsup export with
    strict=True (needs timm: pip install timm)."""
    try:
        import timm
    except ImportError:
        raise SelfSupError("timm is not installed; pip install timm (or export --format torchvision)") from None
    return _cifar_stem(timm.create_model(f"resnet{depth}", pretrained=False, num_classes=0), cifar_stem)


class Sobel(nn.Module):
    """DeepCluster's fixed input filter: grayscale (the mean of the three channels), then the horizontal and vertical
    Sobel derivatives (3x3, zero padding 1): two channels, with colour gone (so that clustering cannot group images
    by colour alone). Both steps are linear, so they are one 3-to-2-channel convolution; its weights are a buffer, not
    a parameter: never trained, never decayed."""

    def __init__(self):
        super().__init__()
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("filters", torch.stack([gx, gx.T])[:, None].expand(2, 3, 3, 3) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filters.to(x.dtype), padding=1)


class AlexNetSmall(StagedBackbone):
    """AlexNet with batch-norm for small images (conv1..conv5): selfsup's fast CIFAR-size variant (SeLa's own CIFAR code
    runs the ImageNet AlexNet, alexnet_imagenet, on images upsampled to 224 px).

    Channel widths follow AlexNet (96-256-384-384-256); kernels are 5,5,3,3,3 with stride 1 and 3x3/2
    max-pools after conv1, conv2 and conv5, which maps 32x32 inputs to 4x4x256 before global pooling.
    `width` scales every layer's channels (0.5 costs about a quarter of the compute: CPU-sized studies).
    """

    def __init__(self, bn: bool = True, width: float = 1.0, sobel: bool = False):
        if width <= 0:
            raise SelfSupError(f"model.width must be positive, got {width}")
        c1, c2, c3, c4, c5 = (max(8, round(c * width)) for c in (96, 256, 384, 384, 256))
        pool = lambda: nn.MaxPool2d(3, 2, 1)  # noqa: E731
        stages = {
            "conv1": nn.Sequential(*([Sobel()] if sobel else []), *_conv_bn(2 if sobel else 3, c1, 5, bn)),
            "conv2": nn.Sequential(pool(), *_conv_bn(c1, c2, 5, bn)),
            "conv3": nn.Sequential(pool(), *_conv_bn(c2, c3, 3, bn)),
            "conv4": nn.Sequential(*_conv_bn(c3, c4, 3, bn)),
            "conv5": nn.Sequential(*_conv_bn(c4, c5, 3, bn)),
        }
        super().__init__(stages, nn.Sequential(pool(), nn.AdaptiveAvgPool2d(1), nn.Flatten()), c5)


def _alexnet_grid(input_size: int) -> int:
    """Side of the ImageNet AlexNet's conv5 map after its last 3x3/2 max-pool (6 at 224 px), 0 when too small."""
    side = (input_size + 2 * 2 - 11) // 4 + 1  # conv1: 11x11, stride 4, padding 2
    for _ in range(3):  # the max-pools after conv1, conv2 and conv5 (3x3, stride 2, no padding)
        side = (side - 3) // 2 + 1 if side >= 3 else 0
    return side


def _fc(cin: int, cout: int, bn: bool) -> list[nn.Module]:
    """A fully connected layer and its ReLU; with `bn` RotNet's: no bias (batch norm's shift replaces it), then
    BatchNorm1d."""
    if not bn:
        return [nn.Linear(cin, cout), nn.ReLU(inplace=True)]
    return [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]


class AlexNet(StagedBackbone):
    """The ImageNet-size AlexNet of DeepCluster and SeLa (and so of the linear-probes protocol): conv1 96x11x11 stride
    4, 3x3/2 max-pools after conv1, conv2 and conv5, conv2..conv5 of 256-384-384-256 (5x5, then 3x3), each with
    batch norm and ReLU; then fc6 and fc7, each dropout, a 4,096-wide linear layer and ReLU. Taps conv1..conv5, fc6,
    fc7; the representation is fc7. At 224 px conv5 is 13x13 and fc6 reads 256 x 6 x 6 = 9,216 numbers.

    As the authors' code: convolutions He-normal over fan-out, linear layers N(0, 0.01), biases zero. Dropout is
    `model.dropout` (their 0.5 is a recipe's choice; the default 0 keeps every run's other defaults). Differences:
    a convolution followed by batch norm has no bias (theirs keeps one, which batch norm cancels).

    `fc_bn` makes fc6 and fc7 RotNet's AlexNet classifier block (Gidaris et al. 2018, FeatureLearningRotNet
    architectures/AlexNet.py `fc_block`: `Linear(6*6*256, 4096, bias=False), BatchNorm1d(4096), ReLU`, twice, no
    dropout), with PyTorch's default initialisation of those layers, as theirs (their AlexNet.py sets none). The taps
    and the representation (fc7, after its ReLU) stay as they are.
    """

    def __init__(self, input_size: int = 224, bn: bool = True, dropout: float = 0.0, sobel: bool = False,
                 fc_bn: bool = False):
        side = _alexnet_grid(input_size)
        if side < 1:
            raise SelfSupError(f"alexnet_imagenet needs model.input_size of at least 63 px (conv1 strides by 4, then "
                               f"three 3x3/2 max-pools), got {input_size}; use alexnet_small for small images")
        if fc_bn and dropout:
            raise SelfSupError(f"model.fc_bn is RotNet's fc6/fc7, which have batch norm and no dropout; set "
                               f"model.dropout=0 (got {dropout})")
        pool = lambda: nn.MaxPool2d(3, 2)  # noqa: E731
        drop = lambda: [nn.Dropout(dropout)] if dropout else []  # noqa: E731 - one module per layer
        conv1 = [*([Sobel()] if sobel else []), nn.Conv2d(2 if sobel else 3, 96, 11, stride=4, padding=2, bias=not bn),
                 *([nn.BatchNorm2d(96)] if bn else []), nn.ReLU(inplace=True)]
        stages = {
            "conv1": nn.Sequential(*conv1),
            "conv2": nn.Sequential(pool(), *_conv_bn(96, 256, 5, bn)),
            "conv3": nn.Sequential(pool(), *_conv_bn(256, 384, 3, bn)),
            "conv4": nn.Sequential(*_conv_bn(384, 384, 3, bn)),
            "conv5": nn.Sequential(*_conv_bn(384, 256, 3, bn)),
            "fc6": nn.Sequential(pool(), nn.Flatten(), *drop(), *_fc(256 * side * side, 4096, fc_bn)),
            "fc7": nn.Sequential(*drop(), *_fc(4096, 4096, fc_bn)),
        }
        super().__init__(stages, nn.Identity(), 4096)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # std sqrt(2 / (k*k*out))
            elif isinstance(m, nn.Linear) and not fc_bn:
                nn.init.normal_(m.weight, 0.0, 0.01)
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)


class ExemplarNet(StagedBackbone):
    """The Exemplar-CNN nets (Dosovitskiy et al. 2014): 5x5 convs, 2x2 max-pool after the first two, one FC layer.

    E.g. widths (64, 64) and fc 128 is 64c5-64c5-128f. Convs are padded to keep size (the paper does not
    say); batch-norm is on by default for stable training with other methods' large learning rates
    (`bn=False` gives the paper's plain net). The FC layer is a tap, and its ReLU output the representation.
    """

    def __init__(self, widths: tuple[int, ...], fc: int, input_size: int = 32, bn: bool = True, dropout: float = 0.0):
        # Stage j of [conv1, conv2, ..., fc] starts with the 2x2 max-pool that follows conv j, for j = 1, 2.
        stages, cin, size = {}, 3, input_size
        for j, w in enumerate(widths):
            pool = [nn.MaxPool2d(2)] if j in (1, 2) else []
            size //= 2 if pool else 1
            stages[f"conv{j + 1}"] = nn.Sequential(*pool, *_conv_bn(cin, w, 5, bn))
            cin = w
        pool = [nn.MaxPool2d(2)] if len(widths) in (1, 2) else []
        size //= 2 if pool else 1
        fc_layers = [*pool, nn.Flatten(), nn.Linear(cin * size * size, fc, bias=not bn)]
        if bn:
            fc_layers.append(nn.BatchNorm1d(fc))
        fc_layers.append(nn.ReLU(inplace=True))
        if dropout:
            fc_layers.append(nn.Dropout(dropout))
        stages["fc"] = nn.Sequential(*fc_layers)
        super().__init__(stages, nn.Identity(), fc)


class NIN(StagedBackbone):
    """Network-in-Network as RotNet uses it on CIFAR (Gidaris et al. 2018): blocks of three conv-BN-ReLU layers.

    block1 = 192c5-160c1-96c1 then a 3x3/2 max-pool, block2 = 192c5-192c1-192c1 then a 3x3/2 average pool,
    block3 and any later block = 192c3-192c1-192c1; the representation is the last block, globally averaged.
    Each pool closes its block, as in the paper, so the taps are the paper's features: block1 is 96x16x16 and
    block2 192x8x8 at 32 px (the maps its non-linear and conv classifiers are trained on).
    """

    def __init__(self, blocks: int = 4, bn: bool = True):
        if blocks < 3:
            raise SelfSupError(f"NIN needs at least 3 blocks, got {blocks}")

        def block(cin: int, widths: tuple[int, int, int], k: int, pool: list[nn.Module]) -> nn.Sequential:
            return nn.Sequential(*_conv_bn(cin, widths[0], k, bn), *_conv_bn(widths[0], widths[1], 1, bn),
                                 *_conv_bn(widths[1], widths[2], 1, bn), *pool)

        stages = {"block1": block(3, (192, 160, 96), 5, [nn.MaxPool2d(3, 2, 1)]),
                  "block2": block(96, (192, 192, 192), 5, [nn.AvgPool2d(3, 2, 1)])}
        for i in range(3, blocks + 1):
            stages[f"block{i}"] = block(192, (192, 192, 192), 3, [])
        super().__init__(stages, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 192)


VITS = {  # hidden, layers, heads, MLP: DeiT's Tiny and Small, ViT-Base (Dosovitskiy et al. 2021)
    "vit_tiny": (192, 12, 3, 768),
    "vit_small": (384, 12, 6, 1536),
    "vit_base": (768, 12, 12, 3072),
}


def vit_patch_size(input_size: int, patch_size: int | None = None) -> int:
    """model.patch_size as given, or for None: 16 from 128 px up, 8 from 64 px, else 4 (8x8 patches at 32/64/128 px)."""
    if patch_size is not None:
        return patch_size
    return 16 if input_size >= 128 else 8 if input_size >= 64 else 4


def torchvision_vit(name: str, input_size: int = 224, patch_size: int | None = None) -> nn.Module:
    """The stock torchvision VisionTransformer that an exported selfsup ViT loads into with strict=True (`heads` is
    an identity: the representation is the normalised CLS token, as selfsup's).

    Example:
        >>> net = torchvision_vit("vit_small", 32, 4)
        >>> net.load_state_dict(torch.load("backbone_torchvision.pth"), strict=True)  # from selfsup export RUN
    """
    hidden, layers, heads, mlp = VITS[name]
    patch_size = vit_patch_size(input_size, patch_size)
    if input_size % patch_size:
        raise SelfSupError(f"model.input_size {input_size} is not a multiple of the patch size {patch_size}")
    net = torchvision.models.VisionTransformer(image_size=input_size, patch_size=patch_size, num_layers=layers,
                                              num_heads=heads, hidden_dim=hidden, mlp_dim=mlp)
    net.heads = nn.Identity()
    return net


class ViT(Backbone):
    """A Vision Transformer over a torchvision VisionTransformer's modules (shared, not copied; its heads dropped), so
    the state_dict has torchvision's key names. Taps block1..blockL: the CLS token after that block, passed through the
    final LayerNorm (as DINO's linear evaluation reads intermediate layers); the representation is the last one.

    Any input whose sides are multiples of the patch size runs (multi-crop's small local crops): the patch position
    embeddings are resized bicubically to its grid, the CLS token's kept. model.cifar_stem, bn and dropout don't apply.
    """

    # torchvision rather than timm: timm is not a runtime dependency, and the keys then load into stock torchvision.
    # It costs a little speed: ViT-Small patch 4 at 32 px, batch 128, fwd+bwd on a shared 2-core CPU (2 threads),
    # median of 7 steps after 3 warm-up, the two interleaved, 2026-11-26: this class 7.28 s, timm.create_model(
    # "vit_small_patch16_224", img_size=32, patch_size=4, num_classes=0) 6.77 s (7% faster; same parameter count).

    def __init__(self, net: torchvision.models.VisionTransformer):
        super().__init__()
        if not isinstance(net.conv_proj, nn.Conv2d):
            raise SelfSupError("ViT: a torchvision VisionTransformer with a conv stem is not supported")
        self.conv_proj, self.class_token, self.encoder = net.conv_proj, net.class_token, net.encoder
        self.patch_size, self.grid = net.patch_size, net.image_size // net.patch_size
        self.feature_dim = net.hidden_dim
        self.taps = [f"block{i + 1}" for i in range(len(net.encoder.layers))]

    def pos_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The position embeddings (1, 1 + grid_h * grid_w, D) for a grid_h x grid_w patch grid: the stored ones at
        the native grid, else the patch ones resized bicubically (as DINO's interpolate_pos_encoding)."""
        pos = self.encoder.pos_embedding
        if (grid_h, grid_w) == (self.grid, self.grid):
            return pos
        patches = pos[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The representation: the normalised CLS token after the last block, (B, hidden)."""
        return self.forward_taps(x, self.taps[-1:])[self.taps[-1]]

    def forward_taps(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations at the requested taps (all when None); stops after the deepest one asked for."""
        names = self._check_taps(names)
        last = max(self.taps.index(n) for n in names)
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise SelfSupError(f"ViT: a {h}x{w} input is not a multiple of the patch size {self.patch_size}")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, patches, D), row-major as torchvision's
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.encoder.dropout(x + self.pos_embedding(h // self.patch_size, w // self.patch_size))
        out = {}
        for i, (name, block) in enumerate(zip(self.taps, self.encoder.layers)):
            x = block(x)
            if name in names:
                out[name] = self.encoder.ln(x[:, 0])  # LayerNorm is per token: the same as torchvision's ln(x)[:, 0]
            if i == last:
                break
        return out


EXEMPLAR_NETS = {
    "exemplar_small": ((64, 64), 128),  # 64c5-64c5-128f
    "exemplar_medium": ((64, 128, 256), 512),  # 64c5-128c5-256c5-512f
    "exemplar_large": ((92, 256, 512), 1024),  # 92c5-256c5-512c5-1024f
}
ALIASES = {"64c5-64c5-128f": "exemplar_small", "64c5-128c5-256c5-512f": "exemplar_medium",
           "92c5-256c5-512c5-1024f": "exemplar_large", "alexnet": "alexnet_small"}
BACKBONES = ("resnet18", "resnet50", "alexnet_small", "alexnet_imagenet", "nin", *EXEMPLAR_NETS, *VITS)


def check_backbone(name: str) -> None:
    """A one-line error naming model.backbone and the valid names, unless build_backbone knows `name`."""
    if ALIASES.get(name, name) not in BACKBONES:
        raise SelfSupError(f"model.backbone: unknown backbone {name!r}; use one of {', '.join(BACKBONES)} or "
                           f"{', '.join(k for k in ALIASES if 'c5' in k)}")


def build_backbone(name: str, cifar_stem: bool = False, input_size: int = 32, bn: bool = True, dropout: float = 0.0,
                   width: float = 1.0, patch_size: int | None = None, sobel: bool = False,
                   fc_bn: bool = False) -> Backbone:
    """Build a backbone by name: resnet18, resnet50, alexnet_small, alexnet_imagenet, nin, exemplar_small/medium/large
    (or 64c5-...), vit_tiny/small/base.

    `width` (a channel multiplier) applies to alexnet_small only, `patch_size` to the ViTs only (None: see
    vit_patch_size; the model_config records the size used, so a rule change never changes a saved run's net),
    `fc_bn` (RotNet's batch-normalised fc6/fc7) to alexnet_imagenet only.

    Example:
        >>> net = build_backbone("resnet18", cifar_stem=True)
        >>> net(torch.zeros(2, 3, 32, 32)).shape, net.taps
        (torch.Size([2, 512]), ['conv1', 'layer1', 'layer2', 'layer3', 'layer4'])
    """
    check_backbone(name)  # first: an unknown name is the problem, not the width it is given
    key = ALIASES.get(name, name)
    if width != 1.0 and key != "alexnet_small":
        raise SelfSupError(f"model.width applies to alexnet_small only, not {name!r}")
    if sobel and key not in ("alexnet_small", "alexnet_imagenet"):
        raise SelfSupError(f"model.sobel applies to alexnet_small and alexnet_imagenet only, not {name!r}")
    if patch_size is not None and key not in VITS:
        raise SelfSupError(f"model.patch_size applies to {', '.join(VITS)} only, not {name!r}")
    if fc_bn and key != "alexnet_imagenet":
        raise SelfSupError(f"model.fc_bn applies to alexnet_imagenet only, not {name!r}")
    if key in ("resnet18", "resnet50"):
        net: Backbone = ResNet(int(key[6:]), cifar_stem)
    elif key == "alexnet_small":
        net = AlexNetSmall(bn, width, sobel)
    elif key == "alexnet_imagenet":
        net = AlexNet(input_size, bn, dropout, sobel, fc_bn)
    elif key == "nin":
        net = NIN(4, bn)
    elif key in VITS:
        patch_size = vit_patch_size(input_size, patch_size)
        net = ViT(torchvision_vit(key, input_size, patch_size))
    else:
        widths, fc = EXEMPLAR_NETS[key]
        net = ExemplarNet(widths, fc, input_size, bn, dropout)
    net.model_config = ModelConfig(name, cifar_stem, input_size, bn, dropout, width, patch_size, sobel, fc_bn)
    return net


def backbone_from(model: ModelConfig) -> Backbone:
    """The backbone a config's model section describes, freshly initialised."""
    if model.backbone == CUSTOM:
        raise SelfSupError("this run's backbone was a module given to selfsup.fit, which a config cannot rebuild; "
                           "build it again and pass it: selfsup.load_run(RUN, method=...)")
    return build_backbone(model.backbone, model.cifar_stem, model.input_size, model.bn, model.dropout, model.width,
                          model.patch_size, model.sobel, model.fc_bn)


CUSTOM = "custom"  # model.backbone of a run whose backbone was a wrapped module
CLASSIFIER_NAMES = ("fc", "head", "heads", "classifier")


def _drop_classifier(module: nn.Module) -> str | None:
    """Replace the module's final classification layer by an identity, in place; its name, or None when there is none.

    The classifier is the last child named fc, head, heads or classifier that is a Linear layer, or a Sequential ending
    in one (torchvision's VGG, ViT, MobileNet, ConvNeXt keep theirs there); timm models are asked to reset theirs."""
    if hasattr(module, "reset_classifier") and hasattr(module, "num_classes"):
        module.reset_classifier(0)
        return "reset_classifier(0)"
    children = dict(module.named_children())
    for name in reversed(list(children)):
        if name not in CLASSIFIER_NAMES:
            continue
        child = children[name]
        if isinstance(child, nn.Linear):
            setattr(module, name, nn.Identity())
            return name
        if isinstance(child, nn.Sequential) and len(child) and isinstance(child[-1], nn.Linear):
            last = list(child._modules)[-1]
            child._modules[last] = nn.Identity()
            return f"{name}.{last}"
    return None


class Wrapped(Backbone):
    """Any nn.Module as a backbone (see wrap): its output, globally average-pooled if it is a map, is the representation
    (tap "features"); other taps are submodules by name, read with forward hooks."""

    def __init__(self, module: nn.Module, feature_dim: int, taps: list[str], pool: bool):
        super().__init__()
        self.module = module
        self.feature_dim = feature_dim
        self.taps = [*taps, "features"]
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        return out.mean(dim=(2, 3)) if self.pool else out.flatten(1)

    def forward_taps(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        names = self._check_taps(names)
        caught: dict[str, torch.Tensor] = {}
        modules = dict(self.module.named_modules())
        hooks = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: caught.__setitem__(n, out))
                 for n in names if n != "features"]
        try:
            features = self(x)
        finally:
            for h in hooks:
                h.remove()
        caught["features"] = features
        return {n: caught[n] for n in self.taps if n in names}


def wrap(module: nn.Module, input_size: int = 224, taps: list[str] | None = None) -> Backbone:
    """Make any torchvision or timm model (or any nn.Module mapping images to features) a selfsup backbone.

    A ResNet (torchvision's or timm's) becomes selfsup's ResNet over the same modules, with taps conv1, layer1..layer4.
    Any other module has its classifier replaced by an identity in place (see _drop_classifier), and its feature size
    is found by one forward pass of an `input_size` image; `taps` names submodules to probe besides the output.

    Example:
        >>> backbone = wrap(torchvision.models.resnet18(), input_size=32)
        >>> backbone.feature_dim, backbone.taps
        (512, ['conv1', 'layer1', 'layer2', 'layer3', 'layer4'])
    """
    if isinstance(module, Backbone):
        return module
    if not isinstance(module, nn.Module):
        raise SelfSupError(f"wrap needs a torch.nn.Module, got {type(module).__name__}")
    if all(hasattr(module, a) for a in ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4")) \
            and hasattr(module.layer4[-1], "conv1") and (hasattr(module, "relu") or hasattr(module, "act1")):
        return ResNet(net=module)
    _drop_classifier(module)
    known = dict(module.named_modules())
    missing = [t for t in taps or [] if t not in known or t == ""]
    if missing:
        raise SelfSupError(f"wrap: {type(module).__name__} has no submodule(s) {missing} to tap")
    try:
        param = next(module.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    with torch.no_grad(), eval_mode(module):
        out = module(torch.zeros(1, 3, input_size, input_size, device=device, dtype=dtype))
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 4):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SelfSupError(f"wrap: {type(module).__name__} returns {shape} for an image batch; a backbone must return "
                           "features (B,D) or maps (B,C,H,W)")
    return Wrapped(module, out.shape[1], list(taps or []), pool=out.dim() == 4)


def as_backbone(module: nn.Module, input_size: int = 224) -> Backbone:
    """module itself when it is a Backbone, else wrap(module, input_size)."""
    return module if isinstance(module, Backbone) else wrap(module, input_size)


def model_config_of(backbone: Backbone) -> ModelConfig:
    """How a config rebuilds the backbone: build_backbone's record, or model.backbone=custom for a wrapped one."""
    if backbone.model_config is not None:
        return dataclasses.replace(backbone.model_config)
    return ModelConfig(backbone=CUSTOM)


__all__ = ["Backbone", "StagedBackbone", "ResNet", "AlexNetSmall", "AlexNet", "Sobel", "ExemplarNet", "NIN", "Wrapped",
           "build_backbone", "backbone_from", "wrap", "as_backbone", "eval_mode", "torchvision_resnet", "timm_resnet",
           "BACKBONES", "model_config_of", "CUSTOM", "check_backbone", "ViT", "VITS", "vit_patch_size",
           "torchvision_vit"]

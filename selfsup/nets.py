"""Backbones with named taps, so every layer can be probed.

A backbone maps a normalised image batch to a flat representation (`forward`) and can return the
activations at any of its named taps (`forward_taps`), in network order.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from selfsup.config import ModelConfig
from selfsup.errors import SelfSupError


class Backbone(nn.Module):
    """A sequence of named stages; `taps` are the stage names in order, `feature_dim` the output width."""

    taps: list[str]
    feature_dim: int

    def __init__(self, stages: dict[str, nn.Module], head: nn.Module, feature_dim: int):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.head = head  # from the last stage's map to the flat representation
        self.taps = list(stages)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return self.head(x)

    @torch.no_grad()
    def tap_shapes(self, input_size: int, names: list[str] | None = None) -> dict[str, torch.Size]:
        """Per-image output shape of each requested tap (all when None) for input_size-pixel images."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        maps = self.forward_taps(torch.zeros(1, 3, input_size, input_size, device=device), names)
        self.train(was)
        return {name: m.shape[1:] for name, m in maps.items()}

    def last_spatial_tap(self, input_size: int) -> tuple[str, torch.Size]:
        """The deepest tap that is still a (C,H,W) map for input_size-pixel images, and its shape: an encoder's output."""
        spatial = [(name, shape) for name, shape in self.tap_shapes(input_size).items() if len(shape) == 3]
        if not spatial:
            raise SelfSupError("this method needs a backbone with a spatial (conv) layer")
        return spatial[-1]

    def forward_taps(self, x: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations at the requested taps (all when None); stops after the deepest one asked for."""
        names = list(self.taps) if names is None else list(names)
        unknown = [n for n in names if n not in self.taps]
        if unknown:
            raise SelfSupError(f"unknown layer(s) {unknown}; this backbone has {', '.join(self.taps)}")
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


class ResNet(Backbone):
    """torchvision ResNet-18/50 with taps conv1, layer1..layer4; `cifar_stem` swaps in a 3x3 stride-1 conv and drops the max-pool."""

    def __init__(self, depth: int = 18, cifar_stem: bool = False):
        net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        stages = {"conv1": stem, "layer1": nn.Sequential(net.maxpool, net.layer1), "layer2": net.layer2,
                  "layer3": net.layer3, "layer4": net.layer4}
        super().__init__(stages, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), net.fc.in_features)

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under torchvision's resnet key names (no fc), loadable with strict=False."""
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


class AlexNetSmall(Backbone):
    """AlexNet with batch-norm for small images (conv1..conv5), as SeLa and the single-image paper use on CIFAR.

    Channel widths follow AlexNet (96-256-384-384-256); kernels are 5,5,3,3,3 with stride 1 and 3x3/2
    max-pools after conv1, conv2 and conv5, which maps 32x32 inputs to 4x4x256 before global pooling.
    `width` scales every layer's channels (0.5 costs about a quarter of the compute: CPU-sized studies).
    """

    def __init__(self, bn: bool = True, width: float = 1.0):
        if width <= 0:
            raise SelfSupError(f"model.width must be positive, got {width}")
        c1, c2, c3, c4, c5 = (max(8, round(c * width)) for c in (96, 256, 384, 384, 256))
        pool = lambda: nn.MaxPool2d(3, 2, 1)  # noqa: E731
        stages = {
            "conv1": nn.Sequential(*_conv_bn(3, c1, 5, bn)),
            "conv2": nn.Sequential(pool(), *_conv_bn(c1, c2, 5, bn)),
            "conv3": nn.Sequential(pool(), *_conv_bn(c2, c3, 3, bn)),
            "conv4": nn.Sequential(*_conv_bn(c3, c4, 3, bn)),
            "conv5": nn.Sequential(*_conv_bn(c4, c5, 3, bn)),
        }
        super().__init__(stages, nn.Sequential(pool(), nn.AdaptiveAvgPool2d(1), nn.Flatten()), c5)


class ExemplarNet(Backbone):
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


class NIN(Backbone):
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


EXEMPLAR_NETS = {
    "exemplar_small": ((64, 64), 128),  # 64c5-64c5-128f
    "exemplar_medium": ((64, 128, 256), 512),  # 64c5-128c5-256c5-512f
    "exemplar_large": ((92, 256, 512), 1024),  # 92c5-256c5-512c5-1024f
}
ALIASES = {"64c5-64c5-128f": "exemplar_small", "64c5-128c5-256c5-512f": "exemplar_medium",
           "92c5-256c5-512c5-1024f": "exemplar_large", "alexnet": "alexnet_small"}
BACKBONES = ("resnet18", "resnet50", "alexnet_small", "nin", *EXEMPLAR_NETS)


def build_backbone(name: str, cifar_stem: bool = False, input_size: int = 32, bn: bool = True, dropout: float = 0.0,
                   width: float = 1.0) -> Backbone:
    """Build a backbone by name: resnet18, resnet50, alexnet_small, exemplar_small/medium/large (or 64c5-64c5-128f ...).

    `width` (a channel multiplier) applies to alexnet_small only.
    """
    key = ALIASES.get(name, name)
    if width != 1.0 and key != "alexnet_small":
        raise SelfSupError(f"model.width applies to alexnet_small only, not {name!r}")
    if key == "resnet18":
        return ResNet(18, cifar_stem)
    if key == "resnet50":
        return ResNet(50, cifar_stem)
    if key == "alexnet_small":
        return AlexNetSmall(bn, width)
    if key == "nin":
        return NIN(4, bn)
    if key in EXEMPLAR_NETS:
        widths, fc = EXEMPLAR_NETS[key]
        return ExemplarNet(widths, fc, input_size, bn, dropout)
    raise SelfSupError(f"unknown backbone {name!r}; use one of {', '.join(BACKBONES)} or {', '.join(k for k in ALIASES if 'c5' in k)}")


def backbone_from(model: ModelConfig) -> Backbone:
    """The backbone a config's model section describes, freshly initialised."""
    return build_backbone(model.backbone, model.cifar_stem, model.input_size, model.bn, model.dropout, model.width)

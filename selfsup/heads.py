"""Heads that sit on a backbone's representation: projection heads (SimCLR's MLP), prediction heads (as the
Siamese methods use on top of a projection), SwAV's prototypes and DINO's head."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


class ProjectionHead(nn.Sequential):
    """An MLP from the representation to the embedding a loss compares: `num_layers` linear layers, each but the last
    followed by batch norm (when `batch_norm`) and ReLU; `last_bn` adds a batch norm without affine after the last.

    SimCLR's head (v1, as in its CIFAR code) is the default: Linear-BN-ReLU-Linear.

    Args:
        in_dim: width of the representation (a backbone's feature_dim).
        hidden_dim: width of the hidden layers.
        out_dim: width of the embedding.
        num_layers: linear layers in all (at least 1).
        batch_norm: batch norm after each hidden layer (their linear layers then have no bias).
        last_bn: a batch norm without affine parameters on the output.

    Example:
        >>> head = ProjectionHead(512, 2048, 128)
        >>> head(torch.randn(4, 512)).shape
        torch.Size([4, 128])
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                 batch_norm: bool = True, last_bn: bool = False):
        if num_layers < 1:
            raise ValueError(f"a projection head needs at least one layer, got num_layers={num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)


class PredictionHead(ProjectionHead):
    """A predictor on top of a projection (BYOL, SimSiam, MoCo v3): Linear-BN-ReLU-Linear by default, from and back
    to the embedding width.

    Example:
        >>> PredictionHead(128, 512)(torch.randn(4, 128)).shape
        torch.Size([4, 128])
    """

    def __init__(self, dim: int, hidden_dim: int = 512, out_dim: int | None = None, num_layers: int = 2):
        super().__init__(dim, hidden_dim, out_dim or dim, num_layers, batch_norm=True, last_bn=False)


class Prototypes(nn.Linear):
    """SwAV's prototypes: K unit vectors; scores are their dot products with an L2-normalised embedding.

    The vectors are trained like any weights and put back on the unit sphere after every optimizer step
    (`normalize_`), as the authors do before every forward pass.

    Example:
        >>> protos = Prototypes(128, 3000)
        >>> protos(F.normalize(torch.randn(4, 128), dim=1)).shape
        torch.Size([4, 3000])
    """

    def __init__(self, dim: int, count: int):
        super().__init__(dim, count, bias=False)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Every prototype back to unit length."""
        self.weight.copy_(F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    """DINO's head (Caron et al. 2021): an MLP to a bottleneck, L2 normalisation, then a weight-normalised linear
    layer to `out_dim` logits without bias.

    The MLP has `num_layers` linear layers (hidden width `hidden_dim`, GELU, batch norm when `batch_norm`), the last
    of them to `bottleneck_dim`; linear weights start from a truncated normal (std 0.02), biases at 0. With
    `norm_last_layer` the last layer's length (its weight-norm gain) is fixed at 1, so only its directions are
    trained, which the authors found steadies training.

    Args:
        in_dim: width of the representation.
        out_dim: number of logits (DINO: 65,536).
        hidden_dim, bottleneck_dim, num_layers, batch_norm: the MLP.
        norm_last_layer: fix the last layer's gain at 1.

    Example:
        >>> DINOHead(384, 1024)(torch.randn(4, 384)).shape
        torch.Size([4, 1024])
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a DINO head needs at least one layer, got num_layers={num_layers}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(width, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            width = hidden_dim
        layers.append(nn.Linear(width, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


__all__ = ["ProjectionHead", "PredictionHead", "Prototypes", "DINOHead"]

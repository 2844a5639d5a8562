"""Heads that sit on a backbone's representation: projection heads (SimCLR's MLP) and prediction heads (as the
Siamese methods use on top of a projection)."""

from __future__ import annotations

import torch.nn as nn


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


__all__ = ["ProjectionHead", "PredictionHead"]

"""SeLa (Asano, Rupprecht, Vedaldi, ICLR 2020): self-labelling by optimal transport.

The network has T heads of K clusters. It is trained with cross-entropy against self-labels, and at a
scheduled number of label steps the labels are re-optimised: the model's log-probabilities over the
dataset become the scores of an optimal-transport problem whose equal-partition constraint (every cluster
gets N/K images) rules out the collapsed solution; Sinkhorn-Knopp solves it (selfsup.ot).

Labelling pass: the model in eval mode (batch-norm running statistics) on the un-augmented images,
resized to the training size and normalised — the same centre view the evaluation uses. Labels live in
the checkpoint, so a resumed run continues with the labels it had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data.stream import device_budget
from selfsup.errors import SelfSupError
from selfsup.methods.base import EpochContext, gather_shards, shard_range
from selfsup.methods.pseudo_labels import PseudoLabelMethod
from selfsup.methods.registry import register_method
from selfsup.ot import sinkhorn


@dataclass
class SeLaConfig:
    """SeLa: heads, clusters, and the label-optimisation schedule."""

    RANGES: ClassVar[dict[str, str]] = {"num_clusters": "[1, inf)", "num_heads": "[1, inf)", "lam": "(0, inf)",
                                        "label_steps": "[1, inf)", "sinkhorn_iters": "[1, inf)",
                                        "sinkhorn_tol": "(0, inf)"}

    num_clusters: int = 128
    num_heads: int = 10
    lam: float = 10.0  # the paper uses 25 on ImageNet and 10 in its CIFAR code
    label_steps: int = 20  # label optimisations spread over training, the first at epoch 0
    spacing: str = "linear"  # linear | quadratic (more label steps early)
    sinkhorn_iters: int = 1000
    sinkhorn_tol: float = 1e-3


def label_schedule(epochs: int, steps: int, spacing: str = "linear") -> list[int]:
    """Epochs (0-based, at their start) where labels are re-optimised: `steps` of them, the first at epoch 0.

    Quadratic spacing puts more label steps early, when the features change fastest.
    """
    if steps < 1:
        raise SelfSupError(f"sela.label_steps must be >= 1, got {steps}")
    if spacing not in ("linear", "quadratic"):
        raise SelfSupError(f"sela.spacing must be linear or quadratic, got {spacing!r}")
    t = np.linspace(0, 1, steps, endpoint=False)
    if spacing == "quadratic":
        t = t ** 2
    return sorted({int(e) for e in np.floor(t * epochs)})


@register_method("sela", config=SeLaConfig)
class SeLa(PseudoLabelMethod):
    """Backbone + T linear heads of K clusters, trained on labels from Sinkhorn-Knopp."""

    cfg: SeLaConfig

    def initial_labels(self, data) -> tuple[torch.Tensor, int]:
        """Until the first label step: a random equal partition (every cluster the same size), different per head."""
        n, k = data.num_samples, self.cfg.num_clusters
        g = torch.Generator().manual_seed(0)
        base = torch.arange(n) % k
        return torch.stack([base[torch.randperm(n, generator=g)] for _ in range(self.cfg.num_heads)]), k

    @torch.no_grad()
    def relabel(self, images: torch.Tensor) -> None:
        """Re-optimise every head's labels over the whole training set with Sinkhorn-Knopp.

        The (N, heads, K) log-probabilities stay on the device when they fit its budget; otherwise (10 x 3,000 per
        image over ImageNet: 154 GB in fp32) they are kept on the host in fp16 and each head's (N, K) goes to the
        device for its own Sinkhorn-Knopp."""
        start, stop = shard_range(len(images))
        device = self.labels.device
        need = (stop - start) * self.num_heads * self.num_classes * 4
        log_p = self.dataset_pass(lambda x: F.log_softmax(self.logits(x).float(), dim=2), images, "SeLa labelling pass",
                                  on_host=need > device_budget(None, device))
        for t in range(self.num_heads):
            q = sinkhorn(log_p[:, t].to(device).float(), self.cfg.lam, tol=self.cfg.sinkhorn_tol,
                         max_iter=self.cfg.sinkhorn_iters)
            self.labels[t] = gather_shards(q.argmax(1), len(images))

    def on_epoch_start(self, ctx: EpochContext) -> None:
        if ctx.epoch in label_schedule(ctx.epochs, self.cfg.label_steps, self.cfg.spacing):
            self.relabel(ctx.images)


__all__ = ["SeLa", "SeLaConfig", "label_schedule"]

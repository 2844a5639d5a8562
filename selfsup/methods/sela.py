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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.augment import AugmentConfig
from selfsup.config import SeLaConfig
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, EpochContext, Method, dataset_pass, gather_shards
from selfsup.nets import Backbone
from selfsup.ot import sinkhorn


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


class SeLa(Method):
    """Backbone + T linear heads of K clusters, trained on labels from Sinkhorn-Knopp."""


    def __init__(self, backbone: Backbone, aug: AugmentConfig, cfg: SeLaConfig, num_samples: int):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.aug = aug
        self.heads = nn.Linear(backbone.feature_dim, cfg.num_heads * cfg.num_clusters)
        # Until the first label step: a random equal partition (every cluster the same size), different per head.
        g = torch.Generator().manual_seed(0)
        base = torch.arange(num_samples) % cfg.num_clusters
        # A buffer: it follows the module's device and is saved in (and restored from) every checkpoint.
        self.register_buffer("labels", torch.stack([base[torch.randperm(num_samples, generator=g)] for _ in range(cfg.num_heads)]))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, K) head logits."""
        return self.heads(self.backbone(x)).view(x.shape[0], self.cfg.num_heads, self.cfg.num_clusters)

    @torch.no_grad()
    def relabel(self, images: torch.Tensor) -> None:
        """Re-optimise every head's labels over the whole training set with Sinkhorn-Knopp."""
        was = self.training
        self.eval()
        log_p = dataset_pass(lambda x: F.log_softmax(self.logits(x).float(), dim=2), images, self.aug.size)
        self.train(was)
        for t in range(self.cfg.num_heads):
            q = sinkhorn(log_p[:, t], self.cfg.lam, tol=self.cfg.sinkhorn_tol, max_iter=self.cfg.sinkhorn_iters)
            self.labels[t] = gather_shards(q.argmax(1), len(images))

    def on_epoch_start(self, ctx: EpochContext) -> None:
        if len(ctx.images) != self.labels.shape[1]:
            raise SelfSupError(f"SeLa was built for {self.labels.shape[1]} samples but the data has {len(ctx.images)}")
        if ctx.epoch in label_schedule(ctx.epochs, self.cfg.label_steps, self.cfg.spacing):
            self.relabel(ctx.images)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.view(batch, self.aug)
        logits = self.logits(x).float()
        targets = self.labels[:, batch.index]  # (T, B)
        loss = torch.stack([F.cross_entropy(logits[:, t], targets[t]) for t in range(self.cfg.num_heads)]).mean()
        return {"loss": loss}


__all__ = ["SeLa", "label_schedule"]

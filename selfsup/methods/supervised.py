"""Supervised training on per-sample labels: the supervised baseline (true labels) and label transfer
(self-labels exported by `selfsup labels`, used to train a fresh network of another architecture)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.augment import AugmentConfig
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, Method
from selfsup.nets import Backbone


def read_labels_csv(path: str | Path, num_samples: int) -> torch.Tensor:
    """The (heads, N) label matrix of a CSV written by `selfsup labels` (columns index, label_0, confidence_0, ...)."""
    path = Path(path)
    if not path.is_file():
        raise SelfSupError(f"labels file {path} does not exist; write one with: selfsup labels RUN -o {path.name}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    heads = sorted(int(c.split("_", 1)[1]) for c in (rows[0] if rows else {}) if c.startswith("label_"))
    if not rows or not heads or "index" not in rows[0]:
        raise SelfSupError(f"{path} is not a labels file from `selfsup labels` (needs columns index and label_0)")
    if len(rows) != num_samples or [int(r["index"]) for r in rows] != list(range(num_samples)):
        raise SelfSupError(f"{path} labels {len(rows)} samples but the training data has {num_samples}; "
                           "use the same data source and split as the run that made the labels")
    return torch.tensor([[int(r[f"label_{t}"]) for r in rows] for t in heads], dtype=torch.long)


class Supervised(Method):
    """Backbone + one linear head per label set, trained with the mean cross-entropy (label -1 is ignored)."""


    def __init__(self, backbone: Backbone, aug: AugmentConfig, targets: torch.Tensor):
        super().__init__()
        if targets.dim() == 1:
            targets = targets[None]
        self.backbone = backbone
        self.aug = aug
        self.num_heads, self.num_classes = targets.shape[0], int(targets.max()) + 1
        self.heads = nn.Linear(backbone.feature_dim, self.num_heads * self.num_classes)
        self.register_buffer("labels", targets.long().clone())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, K) head logits."""
        return self.heads(self.backbone(x)).view(x.shape[0], self.num_heads, self.num_classes)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.view(batch, self.aug)
        logits = self.logits(x).float()
        targets = self.labels[:, batch.index]
        loss = torch.stack([F.cross_entropy(logits[:, t], targets[t], ignore_index=-1) for t in range(self.num_heads)]).mean()
        return {"loss": loss}

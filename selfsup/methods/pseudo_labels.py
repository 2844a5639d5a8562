"""The shared base of the methods that classify their training images into labels they keep: SeLa and DeepCluster
(labels they compute) and supervised training (labels given). One linear layer holds T heads of K classes; the
loss is the mean over heads of the cross-entropy against each sample's label (-1: no label)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.augmentation import to_input
from selfsup.methods.base import Batch, Method
from selfsup.nets import eval_mode


class PseudoLabelMethod(Method):
    """Backbone + T linear heads of K classes, trained on the labels in the `labels` buffer (T, N).

    The buffer follows the module's device and is saved in (and restored from) every checkpoint, so a resumed run
    continues with the labels it had. `selfsup labels RUN` exports them.
    """

    per_sample_state = True

    def __init__(self, backbone, cfg=None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        labels, self.num_classes = self.initial_labels(self.data)
        self.num_heads = labels.shape[0]
        self.heads = nn.Linear(self.backbone.feature_dim, self.num_heads * self.num_classes)
        self.register_buffer("labels", labels.long().clone())  # never the caller's tensor: relabelling writes here
        self._register_load_state_dict_pre_hook(_upgrade_state)

    def initial_labels(self, data) -> tuple[torch.Tensor, int]:
        """The (T, N) labels to start from, and the number of classes K of every head."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, K) head logits."""
        return self.heads(self.backbone(x)).view(x.shape[0], self.num_heads, self.num_classes)

    def label_loss(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Mean over heads of the cross-entropy of (B, T, K) logits against the labels of samples `index`."""
        targets = self.labels[:, index]
        return torch.stack([F.cross_entropy(logits[:, t], targets[t], ignore_index=-1)
                            for t in range(self.num_heads)]).mean()

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": self.label_loss(self.logits(self.view(batch)).float(), batch.index)}

    @torch.no_grad()
    def cluster_grid(self, images: torch.Tensor, limit: int = 10_000) -> np.ndarray:
        """The largest clusters of head 0 among the first `limit` training images, a row each, its images nearest
        the cluster's mean feature first (on this process alone: no collective)."""
        from selfsup.report import cluster_picture

        n = min(len(images), limit, self.labels.shape[1])
        with eval_mode(self):
            feats = torch.cat([self.backbone(to_input(images[i:min(i + 512, n)], self.data.input_size,
                                                      self.input_transform)).float() for i in range(0, n, 512)])
        return cluster_picture(images[:n].cpu().numpy(), feats.cpu(), self.labels[0, :n].cpu())


def _upgrade_state(state: dict, prefix: str, *_args) -> None:
    """Checkpoints from before the family shared this base: DeepCluster's `classifier` and (N,) labels."""
    for key in [k for k in state if k.startswith(prefix + "classifier.")]:
        state[prefix + "heads." + key[len(prefix + "classifier."):]] = state.pop(key)
    labels = state.get(prefix + "labels")
    if labels is not None and labels.dim() == 1:
        state[prefix + "labels"] = labels[None]


__all__ = ["PseudoLabelMethod"]

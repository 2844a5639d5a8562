"""Exemplar learning: Exemplar-CNN's softmax over seed patches, and its scalable non-parametric form.

`Exemplar` (Dosovitskiy et al. 2014): the training images are seed contexts (see selfsup.exemplar), seed i is
surrogate class i, and every step classifies fresh randomly transformed copies with a softmax over all seeds.
Its classifier holds N x feature_dim weights, which is what keeps it from reaching a million images.

`InstanceDiscrimination` (Wu et al. 2018) makes every training image its own class without that classifier:
each image keeps one L2-normalised embedding in a memory bank, and a copy is scored against its own entry and
`negatives` random entries with a sampled softmax. Memory grows with N x dim (128 floats per image), and the
time per step does not grow with N at all.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.augment import normalize
from selfsup.config import ExemplarConfig, InstanceConfig
from selfsup.distributed import all_gather_nograd
from selfsup.exemplar import pixel_pca, transform
from selfsup.methods.base import Batch, Method
from selfsup.nets import Backbone


class _Transformed(Method):
    """Shared by both: transformed copies of the batch with the colour statistics of the training images."""

    def __init__(self, backbone: Backbone, cfg: ExemplarConfig, out_size: int):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.out_size = out_size
        self.register_buffer("pca_axes", torch.eye(3))
        self.register_buffer("pixel_mean", torch.full((3,), 0.5))

    def on_train_start(self, images: torch.Tensor) -> None:
        axes, mean = pixel_pca(images)
        self.pca_axes.copy_(axes)
        self.pixel_mean.copy_(mean)

    def copies(self, batch: Batch) -> torch.Tensor:
        region = self.out_size / batch.images.shape[1]  # seed contexts: the central patch; whole images: all of it
        return self.make_input(lambda: normalize(transform(batch.images, self.cfg.transform, batch.generator, self.out_size,
                                                           region, self.pca_axes, self.pixel_mean)), batch.images.device)


class Exemplar(_Transformed):
    """Backbone + a linear softmax over the seeds; each epoch draws `samples_per_class` copies of every seed."""

    def __init__(self, backbone: Backbone, cfg: ExemplarConfig, num_seeds: int):
        super().__init__(backbone, cfg, cfg.patch)
        self.classifier = nn.Linear(backbone.feature_dim, num_seeds)
        self.passes_per_epoch = cfg.samples_per_class

    @staticmethod
    def num_samples_in(state: dict[str, torch.Tensor]) -> int | None:
        return state["classifier.weight"].shape[0]

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.backbone(self.copies(batch))).float()
        loss = F.cross_entropy(logits, batch.index)
        return {"loss": loss, "surrogate_acc": (logits.argmax(1) == batch.index).float().mean()}


class InstanceDiscrimination(_Transformed):
    """Backbone + linear map to a normalised embedding, scored against a memory bank of every image's embedding."""

    def __init__(self, backbone: Backbone, cfg: ExemplarConfig, icfg: InstanceConfig, num_samples: int, input_size: int):
        super().__init__(backbone, cfg, input_size)
        self.icfg = icfg
        self.embed = nn.Linear(backbone.feature_dim, icfg.dim)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("bank", F.normalize(torch.randn(num_samples, icfg.dim, generator=g), dim=1))

    @staticmethod
    def num_samples_in(state: dict[str, torch.Tensor]) -> int | None:
        return state["bank"].shape[0]

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        v = F.normalize(self.embed(self.backbone(self.copies(batch))).float(), dim=1)
        n = self.bank.shape[0]
        negatives = self.draw(lambda: torch.randint(n, (self.icfg.negatives,), generator=batch.generator, device=v.device),
                              v.device)
        pos = (v * self.bank[batch.index]).sum(1, keepdim=True)
        logits = torch.cat([pos, v @ self.bank[negatives].T], 1) / self.icfg.temperature
        loss = F.cross_entropy(logits, torch.zeros(len(v), dtype=torch.long, device=v.device))
        self._update_bank(v.detach(), batch.index)
        return {"loss": loss, "positive_similarity": pos.detach().mean()}

    @torch.no_grad()
    def _update_bank(self, v: torch.Tensor, index: torch.Tensor) -> None:
        # Every rank applies every rank's update, so the banks stay identical without a broadcast.
        v, index = all_gather_nograd(v), all_gather_nograd(index)
        m = self.icfg.momentum
        self.bank[index] = F.normalize(m * self.bank[index] + (1 - m) * v, dim=1)

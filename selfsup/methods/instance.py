"""Instance discrimination (Wu et al. 2018): every training image its own class, without Exemplar-CNN's classifier.

Each image keeps one L2-normalised embedding in a memory bank, and a transformed copy (Exemplar-CNN's
transformations, applied to whole images) is scored against its own entry and `negatives` random entries with a
sampled softmax. Memory grows with N x dim (128 floats per image), and the time per step does not grow with N at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.distributed import all_gather_nograd
from selfsup.methods.base import Batch
from selfsup.methods.exemplar import TransformedCopies
from selfsup.methods.exemplar.seeds import ExemplarTransformConfig
from selfsup.methods.registry import register_method


@dataclass
class InstanceConfig:
    """Instance discrimination: the memory bank, the sampled softmax, and the copies' transformations."""

    RANGES: ClassVar[dict[str, str]] = {"dim": "[1, inf)", "negatives": "[1, inf)", "temperature": "(0, inf)",
                                        "momentum": "[0, 1)"}  # momentum 1 would never update the bank

    dim: int = 128  # width of the normalised embedding kept per image
    negatives: int = 4096  # bank entries drawn per step for the sampled softmax
    temperature: float = 0.07
    momentum: float = 0.5  # bank entry <- normalise(momentum * entry + (1 - momentum) * new embedding)
    transform: ExemplarTransformConfig = field(default_factory=ExemplarTransformConfig)


@register_method("instance", config=InstanceConfig)
class InstanceDiscrimination(TransformedCopies):
    """Backbone + linear map to a normalised embedding, scored against a memory bank of every image's embedding."""

    per_sample_state = True  # a bank entry per image
    cfg: InstanceConfig

    def __init__(self, backbone, cfg: InstanceConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        self.embed = nn.Linear(self.backbone.feature_dim, self.cfg.dim)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("bank", F.normalize(torch.randn(self.data.num_samples, self.cfg.dim, generator=g), dim=1))

    @classmethod
    def upgrade_config(cls, saved: dict) -> dict:
        """Earlier versions kept the copies' transformations in the exemplar section, shared with Exemplar-CNN."""
        old = (saved.get("exemplar") or {}).get("transform")
        if old is not None and "transform" not in (saved.get("instance") or {}):
            saved["instance"] = {**(saved.get("instance") or {}), "transform": old}
        return saved

    @staticmethod
    def num_samples_in(state: dict[str, torch.Tensor]) -> int | None:
        return state["bank"].shape[0]

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        v = F.normalize(self.embed(self.backbone(self.copies(batch))).float(), dim=1)
        n = self.bank.shape[0]
        negatives = self.draw(
            lambda: torch.randint(n, (self.cfg.negatives,), generator=batch.generator, device=v.device), v.device)
        pos = (v * self.bank[batch.index]).sum(1, keepdim=True)
        logits = torch.cat([pos, v @ self.bank[negatives].T], 1) / self.cfg.temperature
        loss = F.cross_entropy(logits, torch.zeros(len(v), dtype=torch.long, device=v.device))
        self._update_bank(v.detach(), batch.index)
        return {"loss": loss, "positive_similarity": pos.detach().mean()}

    @torch.no_grad()
    def _update_bank(self, v: torch.Tensor, index: torch.Tensor) -> None:
        # Every rank applies every rank's update, so the banks stay identical without a broadcast.
        v, index = all_gather_nograd(v), all_gather_nograd(index)
        m = self.cfg.momentum
        self.bank[index] = F.normalize(m * self.bank[index] + (1 - m) * v, dim=1)


__all__ = ["InstanceDiscrimination", "InstanceConfig"]

"""MoCo v2 (He et al. 2020; Chen, Fan, Girshick & He 2020): momentum contrast with a queue of negatives.

A query encoder (backbone and MLP head) is trained to pick, for each image, the key its momentum copy gives another
view of it, among the keys of recent batches kept in a queue (65,536 on ImageNet). The key encoder follows the
query encoder by EMA (m = 0.999) and is never trained; the queue is what lets the negatives outnumber the batch.

Shuffled batch norm. The authors compute the keys on a batch shuffled across GPUs, so a query and its key never
share batch-norm statistics (which would let the net find the positive through them, not through the image). Here
every process splits its batch into batch-norm groups of `bn_group` samples (the authors' 32 per GPU) and
shuffles the keys' batch before grouping, so a query's group and its key's group differ whatever the number of
processes: one GPU emulates the authors' eight the way their single-GPU CIFAR notebook does (its split batch norm),
and under DDP nothing needs to cross processes. SyncBatchNorm would not do: it pools the statistics of every process
and brings the leak back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from selfsup.augmentation import MultiCropConfig
from selfsup.distributed import all_gather_nograd
from selfsup.errors import SelfSupError
from selfsup.heads import ProjectionHead
from selfsup.losses import info_nce
from selfsup.methods.base import Batch, EpochContext
from selfsup.methods.momentum import ema_update_, momentum_at, momentum_teacher
from selfsup.methods.registry import register_method
from selfsup.methods.siamese import TwoViewMethod, grouped_forward, symmetric_views


@dataclass
class MoCoConfig:
    """MoCo v2's head, queue, temperature, key encoder and views (defaults: the authors' ImageNet settings)."""

    RANGES: ClassVar[dict[str, str]] = {"proj_hidden": "[1, inf)", "proj_dim": "[1, inf)", "queue_length": "[1, inf)",
                                        "temperature": "(0, inf)", "momentum": "[0, 1]", "momentum_end": "[0, 1]",
                                        "bn_group": "[0, inf)"}

    proj_hidden: int = 2048
    proj_dim: int = 128
    queue_length: int = 65536  # keys of this many recent samples (every process's), newest first
    temperature: float = 0.2
    momentum: float = 0.999  # the key encoder's EMA momentum at the first step (constant, as the authors', ...
    momentum_end: float | None = None  # ... or along a cosine to this, as solo-learn's CIFAR setting: 0.99 -> 0.999)
    # Also contrast the second view's query with the first view's key, the two losses summed and both views' keys
    # queued (the authors' CIFAR demo's --symmetric; it learns about as fast as twice the epochs of the asymmetric).
    symmetric: bool = False
    bn_group: int = 32  # samples per batch-norm group in each process, the keys' batch shuffled first; 0: no groups
    crops: MultiCropConfig = field(default_factory=symmetric_views)


@register_method("moco", config=MoCoConfig)
class MoCo(TwoViewMethod):
    """Contrast each query with its momentum key against a queue of earlier keys.

    Example:
        >>> method = MoCo(build_backbone("resnet18", cifar_stem=True), MoCoConfig(queue_length=64, bn_group=4))
        >>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
        >>> method(Batch(images, torch.arange(8), torch.Generator()))["loss"]  # a scalar; selfsup.fit trains it
    """

    cfg: MoCoConfig

    def __init__(self, backbone, cfg: MoCoConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        c = self.cfg
        # MoCo v2's head: Linear-ReLU-Linear, no batch norm.
        self.head = ProjectionHead(self.backbone.feature_dim, c.proj_hidden, c.proj_dim, batch_norm=False)
        self.key_backbone = momentum_teacher(self.backbone)
        self.key_head = momentum_teacher(self.head)
        # Random unit keys to start with, as the authors' (the queue is full from the first step).
        self.register_buffer("queue", F.normalize(torch.randn(c.queue_length, c.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def on_epoch_start(self, ctx: EpochContext) -> None:
        batch = getattr(self.run_config, "batch_size", None)
        if batch:  # under fit: before any epoch is spent on a queue that cannot hold a step's keys
            self._check_queue(batch * (2 if self.cfg.symmetric else 1))

    def _check_queue(self, keys: int) -> None:
        """A one-line error when the queue cannot hold the `keys` keys one step adds."""
        if self.cfg.queue_length < keys:
            raise SelfSupError(f"moco.queue_length ({self.cfg.queue_length}) is smaller than the {keys} keys a step "
                               "queues (the batch, twice it with moco.symmetric); make it larger")

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_forward(lambda v: self.head(self.backbone(v)), x, self.cfg.bn_group)

    @torch.no_grad()
    def key(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The key encoder's embeddings of x, computed on a shuffled batch (see the module's note), in x's order."""
        shuffle = self.draw(lambda: torch.rand(len(x), generator=generator, device=x.device), x.device)
        order = torch.argsort(shuffle)
        k = grouped_forward(lambda v: self.key_head(self.key_backbone(v)), x[order], self.cfg.bn_group)
        return k[torch.argsort(order)]

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        x1, x2 = self.views(batch)
        queue = self.queue.clone()  # the loss keeps it for its backward pass; the enqueue below writes in place
        if self.cfg.symmetric:
            k1, k2 = self.key(x1, batch.generator), self.key(x2, batch.generator)
            loss = (info_nce(self.query(x1), k2, queue, self.cfg.temperature)
                    + info_nce(self.query(x2), k1, queue, self.cfg.temperature))
            self._enqueue(k1, k2)
        else:
            k2 = self.key(x2, batch.generator)
            loss = info_nce(self.query(x1), k2, queue, self.cfg.temperature)
            self._enqueue(k2)
        return {"loss": loss}

    @torch.no_grad()
    def _enqueue(self, *views: torch.Tensor) -> None:
        """Every process's keys of this step replace the oldest ones in the queue: view by view, each view's keys in
        process order (the joined batch's order, so the queue is one process's whatever the number of processes)."""
        keys = torch.cat([all_gather_nograd(F.normalize(k.float(), dim=1)) for k in views])
        self._check_queue(len(keys))
        where = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[where] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % len(self.queue))

    def on_step_end(self, step: int, total_steps: int) -> None:
        c = self.cfg
        m = c.momentum if c.momentum_end is None else momentum_at(step, total_steps, c.momentum, c.momentum_end)
        ema_update_(self.key_backbone, self.backbone, m)
        ema_update_(self.key_head, self.head, m)


__all__ = ["MoCo", "MoCoConfig"]

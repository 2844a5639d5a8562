"""SwAV (Caron et al. 2020): online clustering by swapped prediction, with multi-crop.

Each crop's embedding is scored against K prototypes. The codes of each global crop are an equal partition of the
batch over the prototypes, from three Sinkhorn-Knopp iterations (selfsup.ot.equipartition) on the current batch
(stacked on a queue of recent embeddings once the queue is full); every other crop must predict them. Unlike SeLa,
which relabels the whole dataset between epochs, SwAV labels each batch as it comes, so it needs no per-sample
state and no pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from selfsup.augmentation import MultiCropConfig, multi_crop_configs
from selfsup.distributed import all_gather_nograd, rank, world_size
from selfsup.errors import SelfSupError
from selfsup.heads import ProjectionHead, Prototypes
from selfsup.losses import swav
from selfsup.methods.base import Batch, EpochContext, Method, check_local_crops, run_crops
from selfsup.methods.registry import register_method


@dataclass
class SwAVConfig:
    """SwAV's head, prototypes, codes, queue and crops (defaults: the authors' ImageNet ResNet-50 settings)."""

    RANGES: ClassVar[dict[str, str]] = {
        "temperature": "(0, inf)", "epsilon": "(0, inf)", "sinkhorn_iterations": "[1, inf)", "prototypes": "[1, inf)",
        "proj_hidden": "[1, inf)", "proj_dim": "[1, inf)", "queue_length": "[0, inf)", "queue_start_epoch": "[0, inf)",
        "freeze_prototypes_epochs": "[0, inf)",
    }

    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    prototypes: int = 3000
    proj_hidden: int = 2048
    proj_dim: int = 128
    # Embeddings of the last queue_length samples (all processes together) of each global crop, stacked under the
    # batch's when computing codes, from epoch queue_start_epoch (counted from 0) and once full. 0: no queue.
    queue_length: int = 0
    queue_start_epoch: int = 15
    freeze_prototypes_epochs: int = 1  # the prototypes get no update in the first epochs (the authors: 313 steps)
    crops: MultiCropConfig = field(default_factory=MultiCropConfig)


@register_method("swav", config=SwAVConfig)
class SwAV(Method):
    """Swap the prediction of online equipartitioned codes between crops of each image.

    Example:
        >>> cfg = SwAVConfig(prototypes=100, crops=MultiCropConfig(local_crops=2, local_size=16))
        >>> method = SwAV(build_backbone("resnet18", cifar_stem=True), cfg)
        >>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
        >>> method(Batch(images, torch.arange(8), torch.Generator()))["loss"]  # a scalar; selfsup.fit trains it
    """

    cfg: SwAVConfig

    def __init__(self, backbone, cfg: SwAVConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        c = self.cfg
        self.crop_augs = multi_crop_configs(self.aug, c.crops, "swav.crops")
        check_local_crops(self.backbone, self.crop_augs[-1].size, c.crops.local_crops, "swav")
        self.head = ProjectionHead(self.backbone.feature_dim, c.proj_hidden, c.proj_dim)
        self.prototypes = Prototypes(c.proj_dim, c.prototypes)
        # Every process keeps the whole queue (each step adds every process's embeddings, gathered), so the queue is
        # the same everywhere and a checkpoint holds all of it; each process stacks only its own share of the rows
        # over its batch, so the codes are those of one process whose queue holds them all.
        self.register_buffer("queue", torch.zeros(c.crops.global_crops, c.queue_length, c.proj_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        # The fill count mirrored on the host, so a step never waits for the device to report it (None: read the
        # buffer once, after construction or a loaded checkpoint).
        self._filled: int | None = None
        self._register_load_state_dict_pre_hook(self._forget_filled)
        self.epoch = 0

    def _forget_filled(self, *_args) -> None:
        self._filled = None

    def on_epoch_start(self, ctx: EpochContext) -> None:
        self.epoch = ctx.epoch
        batch = getattr(self.run_config, "batch_size", None)
        if batch:
            self._check_queue(batch)  # under fit: before any epoch is spent on a queue that cannot hold a batch

    def _check_queue(self, batch: int) -> None:
        """A one-line error when a queue is asked for and cannot hold `batch` embeddings."""
        if self.cfg.queue_length and self.cfg.queue_length < batch:
            raise SelfSupError(f"swav.queue_length ({self.cfg.queue_length}) is smaller than the batch ({batch}); "
                               "make it a multiple of batch_size, or 0 for no queue")

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """L2-normalised embeddings of every view, stacked in view order."""
        return F.normalize(self.head(run_crops(self.backbone, views)), dim=1)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        views = self.crops(batch, self.crop_augs)
        b, g = len(batch.images), self.cfg.crops.global_crops
        z = self.embed(views)
        scores = self.prototypes(z).chunk(len(views))
        queued = self._queue_scores()
        loss = swav(scores[:g], scores[g:], self.cfg.temperature, self.cfg.epsilon, self.cfg.sinkhorn_iterations,
                    queued)
        if self.cfg.queue_length and self.epoch >= self.cfg.queue_start_epoch:
            self._enqueue(z[: g * b].detach().view(g, b, -1))
        return {"loss": loss, "queue_in_use": torch.tensor(float(queued is not None))}

    def _queue_scores(self) -> list[torch.Tensor] | None:
        """This process's share of the queue, scored by the current prototypes, once the queue is full."""
        length = self.cfg.queue_length
        if not length or self.epoch < self.cfg.queue_start_epoch:
            return None
        if self._filled is None:
            self._filled = int(self.queue_filled)
        if self._filled < length:
            return None
        per = -(-length // world_size())
        rows = self.queue[:, rank() * per:(rank() + 1) * per]
        with torch.no_grad():
            return [self.prototypes(q.to(self.prototypes.weight.dtype)) for q in rows]

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        """Newest first: every process's embeddings of this step (process order) go in front, the oldest fall out."""
        new = all_gather_nograd(z.transpose(0, 1).contiguous()).transpose(0, 1)  # (global crops, global batch, D)
        self._check_queue(new.shape[1])
        keep = self.queue.shape[1] - new.shape[1]
        self.queue[:, new.shape[1]:] = self.queue[:, :keep].clone()
        self.queue[:, :new.shape[1]] = new.to(self.queue.dtype)
        self.queue_filled.clamp_(max=self.queue.shape[1] - new.shape[1]).add_(new.shape[1])
        if self._filled is not None:
            self._filled = min(self._filled + new.shape[1], self.queue.shape[1])

    def on_before_step(self, step: int, total_steps: int) -> None:
        if self.epoch < self.cfg.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None  # no step at all, as the authors' (no weight decay either)

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.epoch >= self.cfg.freeze_prototypes_epochs:  # frozen ones did not move (and stay bit for bit)
            self.prototypes.normalize_()


__all__ = ["SwAV", "SwAVConfig"]

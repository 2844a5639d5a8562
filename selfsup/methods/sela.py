"""SeLa (Asano, Rupprecht, Vedaldi, ICLR 2020): self-labelling by optimal transport.

The network has T heads of K clusters. It is trained with cross-entropy against self-labels, and at a
scheduled number of label steps the labels are re-optimised: the model's log-probabilities over the
dataset become the scores of an optimal-transport problem whose equal-partition constraint (every cluster
gets N/K images) rules out the collapsed solution; Sinkhorn-Knopp solves it (selfsup.ot).

Labelling pass (`label_pass`): `center` (the default) puts the model in eval mode (batch-norm running statistics) on
the un-augmented images, resized to the training size and normalised — the same centre view the evaluation uses.
`augmented` is the authors' CIFAR code (self-label cifar.py, `opt_sk` called inside `train()`): the labels come from
augmented training views (the method's own augmentation) with the model in train mode (batch-norm batch statistics,
whose running averages it also updates, and dropout on). Its draws depend only on the seed and the epoch, so a
resumed run and any number of processes label alike. `relabel_heads=one` re-optimises one head per label step, as
their code (`nh = epoch % args.hc`). Labels live in the checkpoint, so a resumed run continues with the labels it had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.augmentation import augment_unit
from selfsup.data.stream import as_images, device_budget, gather_batches, host_buffer
from selfsup.errors import SelfSupError
from selfsup.methods.base import EpochContext, gather_shards, shard_range
from selfsup.methods.pseudo_labels import PseudoLabelMethod
from selfsup.methods.registry import register_method
from selfsup.ot import sinkhorn
from selfsup.progress import Progress

LABEL_PASSES = ("center", "augmented")
RELABEL_HEADS = ("all", "one")
LABEL_BATCH = 128  # the augmented pass's batch when the method runs outside selfsup.fit (the authors' CIFAR batch)


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
    # center: eval mode on the un-augmented images | augmented: the authors' CIFAR code, augmented views in train mode
    label_pass: str = "center"
    relabel_heads: str = "all"  # all | one: only head (label step mod num_heads) at each label step, as the authors


def label_schedule(epochs: int, steps: int, spacing: str = "linear") -> list[int]:
    """Epochs (0-based, at their start) where labels are re-optimised: `steps` of them, the first at epoch 0.

    Quadratic spacing puts more label steps early, when the features change fastest.
    """
    if steps < 1:
        raise SelfSupError(f"sela.label_steps must be >= 1, got {steps}")
    if spacing not in ("linear", "quadratic"):
        raise SelfSupError(f"sela.spacing must be linear or quadratic, got {spacing!r}")
    # floor(epochs * (i / steps)^p) in integers: in floats, 29 / 400 * 400 is 28.999..., and such steps fell together.
    i = np.arange(steps, dtype=np.int64)
    if spacing == "quadratic":
        return sorted({int(e) for e in (i * i * epochs) // (steps * steps)})
    return sorted({int(e) for e in (i * epochs) // steps})


def _seed_of(*key: int) -> int:
    """A 63-bit seed mixed from integers (seed, epoch, stream, block): neighbouring keys give unrelated streams."""
    return int(np.random.SeedSequence([k % 2**63 for k in key]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@register_method("sela", config=SeLaConfig)
class SeLa(PseudoLabelMethod):
    """Backbone + T linear heads of K clusters, trained on labels from Sinkhorn-Knopp."""

    cfg: SeLaConfig
    # (seed, epoch, label step) of the label step being taken: on_epoch_start sets it; it seeds the augmented pass
    # and picks the head that relabel_heads=one re-optimises.
    label_draw: tuple[int, int, int] = (0, 0, 0)

    def __init__(self, backbone, cfg: SeLaConfig | None = None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        if self.cfg.label_pass not in LABEL_PASSES:
            raise SelfSupError(f"sela.label_pass must be center or augmented, got {self.cfg.label_pass!r}")
        if self.cfg.relabel_heads not in RELABEL_HEADS:
            raise SelfSupError(f"sela.relabel_heads must be all or one, got {self.cfg.relabel_heads!r}")

    def initial_labels(self, data) -> tuple[torch.Tensor, int]:
        """Until the first label step: a random equal partition (every cluster the same size), different per head."""
        n, k = data.num_samples, self.cfg.num_clusters
        g = torch.Generator().manual_seed(0)
        base = torch.arange(n) % k
        return torch.stack([base[torch.randperm(n, generator=g)] for _ in range(self.cfg.num_heads)]), k

    def relabelled_heads(self) -> list[int]:
        """The heads this label step re-optimises: all, or (relabel_heads=one) head (label step mod num_heads)."""
        if self.cfg.relabel_heads == "one":
            return [self.label_draw[2] % self.num_heads]
        return list(range(self.num_heads))

    def head_logits(self, x: torch.Tensor, heads: list[int]) -> torch.Tensor:
        """(B, len(heads), K) logits of the given heads only (one head costs one head's matmul, as theirs)."""
        if len(heads) == self.num_heads:
            return self.logits(x)
        rows = torch.cat([torch.arange(t * self.num_classes, (t + 1) * self.num_classes) for t in heads])
        rows = rows.to(self.heads.weight.device)
        out = F.linear(self.backbone(x), self.heads.weight[rows], self.heads.bias[rows])
        return out.view(x.shape[0], len(heads), self.num_classes)

    @torch.no_grad()
    def relabel(self, images: torch.Tensor) -> None:
        """Re-optimise the labels of every head (or of one, relabel_heads=one) over the whole training set with
        Sinkhorn-Knopp.

        The (N, heads, K) log-probabilities stay on the device when they fit its budget; otherwise (10 x 3,000 per
        image over ImageNet: 154 GB in fp32) they are kept on the host in fp16 and each head's (N, K) goes to the
        device for its own Sinkhorn-Knopp."""
        heads = self.relabelled_heads()
        start, stop = shard_range(len(images))
        device = self.labels.device
        on_host = (stop - start) * len(heads) * self.num_classes * 4 > device_budget(None, device)

        def log_probs(x: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(self.head_logits(x, heads).float(), dim=2)

        order = None  # the augmented pass walks the rows in a seeded order: row order[i] is its i-th
        if self.cfg.label_pass == "augmented":
            seed, epoch, _ = self.label_draw
            log_p, order = self.augmented_pass(log_probs, images, seed, epoch, on_host)
        else:
            log_p = self.dataset_pass(log_probs, images, "SeLa labelling pass", on_host=on_host)
        for i, t in enumerate(heads):
            q = sinkhorn(log_p[:, i].to(device).float(), self.cfg.lam, tol=self.cfg.sinkhorn_tol,
                         max_iter=self.cfg.sinkhorn_iters)
            labels = gather_shards(q.argmax(1), len(images))
            if order is None:
                self.labels[t] = labels
            else:
                self.labels[t, order.to(device)] = labels

    def label_batch(self) -> int:
        """The augmented pass's batch: the run's batch_size (theirs labels with the training loader's batches)."""
        return self.run_config.batch_size if self.run_config is not None else LABEL_BATCH

    @torch.no_grad()
    def augmented_pass(self, fn, images, seed: int, epoch: int, on_host: bool = False,
                       batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """fn over augmented views of this rank's share of the training images, the model in train mode (as the
        authors' labelling pass); returns (fn's outputs in fp32 (fp16 on the host with on_host), the row order).

        The rows are walked in a random order (a permutation seeded by seed and epoch: theirs is a shuffled loader, and
        batch-norm batch statistics over consecutive rows, often one class, would be others than in training) in
        batches of `batch` (default: label_batch; the last batch takes the remainder, so no batch has a single row).
        Each batch's augmentation and dropout draw from generators seeded by (seed, epoch, batch number) alone; a
        rank computes every batch that overlaps its share of the order and keeps its share's rows, so each row's
        view, masks and batch statistics, hence its labels, are the same for any number of processes, chunking or
        resume (the running averages batch norm updates on the way are each process's own, as in training). Returns the
        outputs for positions [start, stop) of the order (shard_range), and the whole order (N,): position i is row
        order[i]."""
        if any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.modules()):
            raise SelfSupError("sela.label_pass=augmented runs batch norm on each process's own batches; it cannot "
                               "run with sync_bn=true (the processes label different numbers of batches)")
        n = len(images)
        batch = max(1, batch or self.label_batch())
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed_of(seed, epoch, 0)))
        start, stop = shard_range(n)
        count = max(1, n // batch)  # batches; the last one runs to n
        bounds = [b * batch for b in range(count)] + [n]
        first, last = min(start // batch, count - 1), min(max(stop - 1, 0) // batch, count - 1)
        todo = list(range(first, last + 1)) if stop > start else []
        source = as_images(images)
        kept, row = None, 0
        was_training = self.training
        self.train()
        device = self.labels.device
        try:
            with Progress(len(todo), f"SeLa labelling pass (augmented) over {stop - start:,} training images",
                          unit="batch") as bar:
                # Enumerated rather than zipped with todo, so the reader runs to its end and closes its prefetcher.
                for i, x in enumerate(gather_batches(source, [order[bounds[b]:bounds[b + 1]] for b in todo])):
                    b = todo[i]
                    generator = torch.Generator(device=x.device).manual_seed(_seed_of(seed, epoch, 1, b))
                    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                        torch.manual_seed(_seed_of(seed, epoch, 2, b))  # dropout masks
                        out = fn(self.input_transform(augment_unit(x, self.aug, generator))).float()
                    lo, hi = max(start, bounds[b]) - bounds[b], min(stop, bounds[b + 1]) - bounds[b]
                    out = out[lo:hi]
                    if kept is None:
                        shape = (stop - start, *out.shape[1:])
                        kept = (host_buffer(shape, torch.float16) if on_host
                                else torch.empty(shape, dtype=torch.float32, device=device))
                    kept[row:row + len(out)] = out.cpu().half() if on_host else out.to(device)
                    row += len(out)
                    bar.update()
        finally:
            self.train(was_training)
        return (kept if kept is not None else torch.empty(0)), order

    def on_epoch_start(self, ctx: EpochContext) -> None:
        schedule = label_schedule(ctx.epochs, self.cfg.label_steps, self.cfg.spacing)
        if ctx.epoch in schedule:
            self.label_draw = (ctx.seed, ctx.epoch, schedule.index(ctx.epoch))
            self.relabel(ctx.images)


__all__ = ["SeLa", "SeLaConfig", "label_schedule", "LABEL_PASSES", "RELABEL_HEADS"]

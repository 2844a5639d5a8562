"""Classifiers trained through a backbone on augmented images, each protocol a named set of the authors' settings:

linear-probes  the seeds' per-layer protocol (the linear-probes code that SeLa and the single-image paper use):
               each layer max-pooled to about 9,600 numbers, batch norm without affine parameters, a linear layer;
               SGD with the learning rate dropped at fixed epochs, random-resized crops and flips, ten-crop test.
simclr         SimCLR's linear evaluation: one linear layer (zero-initialised) on the pooled representation h,
               SGD with Nesterov momentum at 0.1 x batch / 256, no weight decay, cosine decay, crops and flips;
               100 epochs on CIFAR-size images, 90 at ImageNet size.
finetune       SimCLR's semi-supervised table: the whole backbone and a zero-initialised linear layer trained on a
               class-balanced, seeded share of the labels (1%, 10%, 100% or N per class); Nesterov at
               0.05 x batch / 256, no weight decay, crops and flips; 60 epochs with 1% of the labels, 30 with more.

Model selection never reads the test split: `val_fraction` of the labelled training images (seeded, class-balanced)
is held out, the classifier is checked on it a few times along training, the epoch where it did best is kept
(per layer), and the test split is read once, at the end, for that model's number. With val_fraction None the
last epoch is kept and every labelled training image trains.
"""

from __future__ import annotations

import copy
import math
from bisect import bisect_right
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.augmentation import AugmentConfig, augment_unit, normalize, resize, to_float
from selfsup.data import ImageArray
from selfsup.data.stream import gather_batches, placed
from selfsup.errors import SelfSupError
from selfsup.eval.features import Transform, _batches
from selfsup.nets import Backbone, eval_mode
from selfsup.progress import Progress

REPRESENTATION = "representation"  # the layer name of a classifier on the backbone's pooled output
PROBE_DIMS = 9600  # linear-probes: each layer max-pooled to about this many numbers
TEN_CROP_RESIZE = 256 / 224  # ten-crop test: the image resized to this times the crop side first, as at 224 px


@dataclass(frozen=True)
class Protocol:
    """One protocol's settings. lr is the authors' rate at `batch_size` (`lr_per_256`: it scales as lr x batch / 256
    when set, the SimCLR formula); the schedule is a step (x gamma at `milestones`, in epochs) or a cosine decay."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    lr_per_256: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    ten_crop: bool = False
    finetune: bool = False
    zero_init: bool = False

    def rate(self, batch_size: int) -> float:
        """The learning rate at `batch_size`."""
        return self.lr * batch_size / 256 if self.lr_per_256 else self.lr


PROTOCOLS = {
    # yukimasano/linear-probes: SGD 0.01, momentum 0.9, weight decay 1e-5, batch 192, x0.1 at epochs 10/20/30 of 36.
    "linear-probes": Protocol("linear-probes", epochs=36, batch_size=192, lr=0.01, momentum=0.9, weight_decay=1e-5,
                              schedule="step", milestones=(10, 20, 30), gamma=0.1, ten_crop=True),
    # google-research/simclr, the README's CIFAR-10 linear evaluation: lr 0.1 (x batch / 256), weight decay 0, 100
    # epochs, batch 512, no warm-up, cosine, a zero-initialised linear layer; Nesterov momentum 0.9.
    "simclr": Protocol("simclr", epochs=100, batch_size=512, lr=0.1, nesterov=True, lr_per_256=True, zero_init=True),
    # SimCLR, Appendix B.5: Nesterov 0.9, lr 0.05 x batch / 256, no warm-up, no weight decay; 30 epochs (10% of the
    # labels), 60 (1%). 100% is not stated there: 30 as for 10%.
    "finetune": Protocol("finetune", epochs=30, batch_size=512, lr=0.05, nesterov=True, lr_per_256=True,
                         finetune=True, zero_init=True),
}
SIMCLR_IMAGENET_EPOCHS = 90  # the simclr protocol's epochs from IMAGENET_SIZE px up (100 below)
IMAGENET_SIZE = 128
FINETUNE_FEW_EPOCHS = 60  # fine-tuning on at most 1% of the labels trains twice as long (SimCLR, Appendix B.5)


def parse_labels(spec: str) -> tuple[float | None, int | None]:
    """(share, None) for "1%", "10%", "100%"; (None, N) for "N-per-class"; anything else is a one-line error."""
    text = str(spec).strip()
    try:
        if text.endswith("%") and 0 < float(text[:-1]) <= 100:
            return float(text[:-1]) / 100, None
        if text.endswith("-per-class") and int(text[:-len("-per-class")]) >= 1:
            return None, int(text[:-len("-per-class")])
    except ValueError:
        pass
    raise SelfSupError(f"--labels takes a share such as 1%, 10% or 100%, or N-per-class such as 25-per-class; "
                       f"got {spec!r}")


def label_rows(labels: np.ndarray, spec: str, seed: int = 0, among: np.ndarray | None = None) -> np.ndarray:
    """Sorted rows of a class-balanced, seeded share of the labelled rows: "1%", "10%", "100%" (that share of every
    class's whole count, at least one image) or "N-per-class", drawn from the rows `among` (default: all), so a
    share keeps its size when a held-out part is set aside first (all of `among` at most)."""
    share, count = parse_labels(spec)
    among = np.flatnonzero(labels >= 0) if among is None else among
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels[labels >= 0]):
        take = count if share is None else max(1, round(share * int((labels == c).sum())))
        picks.append(rng.permutation(among[labels[among] == c])[:take])
    if not picks:
        raise SelfSupError("the training split has no labelled images to fine-tune on")
    return np.sort(np.concatenate(picks))


def protocol_for(name: str, input_size: int, labels: str | None = None) -> Protocol:
    """The named protocol's settings at this input size (and share of labels, for fine-tuning)."""
    if name not in PROTOCOLS:
        raise SelfSupError(f"unknown protocol {name!r}; use one of fast, {', '.join(p for p in PROTOCOLS)}")
    p = PROTOCOLS[name]
    if name == "simclr" and input_size >= IMAGENET_SIZE:
        p = replace(p, epochs=SIMCLR_IMAGENET_EPOCHS)
    if name == "finetune" and labels is not None:
        share, _ = parse_labels(labels)
        if share is not None and share <= 0.01:
            p = replace(p, epochs=FINETUNE_FEW_EPOCHS)
    return p


class _ProbeHead(nn.Module):
    """linear-probes: a map max-pooled to about PROBE_DIMS numbers (flat features pass), batch norm without affine
    parameters (a standardisation learned from the batches), a linear layer."""

    def __init__(self, shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(shape) == 3:
            c, h = shape[0], shape[1]
            side = max(1, min(h, round(math.sqrt(PROBE_DIMS / c))))
            self.pool: nn.Module = nn.Sequential(nn.AdaptiveMaxPool2d(side), nn.Flatten())
            dims = c * side * side
        else:
            self.pool, dims = nn.Flatten(), math.prod(shape)
        self.norm = nn.BatchNorm1d(dims, affine=False)
        self.linear = nn.Linear(dims, num_classes)
        nn.init.xavier_uniform_(self.linear.weight)  # as the authors' probe (a full-size conv, Xavier, bias 0)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(self.pool(x)))


def _heads(protocol: Protocol, shapes: dict[str, tuple[int, ...]], num_classes: int) -> nn.ModuleDict:
    heads = {}
    for name, shape in shapes.items():
        if protocol.name == "linear-probes":
            heads[name] = _ProbeHead(shape, num_classes)
        else:
            heads[name] = nn.Linear(math.prod(shape), num_classes)
            if protocol.zero_init:
                nn.init.zeros_(heads[name].weight)
                nn.init.zeros_(heads[name].bias)
    return nn.ModuleDict(heads)


def _features(backbone: Backbone, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    if layers == [REPRESENTATION]:
        return {REPRESENTATION: backbone(x)}
    return backbone.forward_taps(x, layers)


def _ten_crops(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The four corners and the centre of `size`, and their mirror images, from x resized to size x 256/224."""
    big = resize(x, max(size, round(size * TEN_CROP_RESIZE)))
    side = big.shape[-1]
    starts = [(0, 0), (0, side - size), (side - size, 0), (side - size, side - size),
              ((side - size) // 2, (side - size) // 2)]
    crops = [big[:, :, i:i + size, j:j + size] for i, j in starts]
    return crops + [c.flip(-1) for c in crops]


@torch.no_grad()
def _accuracy(backbone: Backbone, heads: nn.ModuleDict, layers: list[str], images, labels: np.ndarray,
              rows: np.ndarray | None, size: int, device: torch.device, transform: Transform, ten_crop: bool,
              what: str) -> dict[str, float]:
    """Top-1 (percent) per layer on the labelled `rows` of a split (all of it when None, read in order; else
    gathered in chunks, never copied whole): the centre view, or the mean logits of the ten crops."""
    rows = np.flatnonzero(labels >= 0) if rows is None and (labels < 0).any() else rows
    count = len(labels) if rows is None else len(rows)
    correct = dict.fromkeys(layers, 0)
    if rows is None:
        batches = _batches(images, 256, device, what)
    else:
        index = torch.from_numpy(rows)
        batches = gather_batches(images if not isinstance(images, np.ndarray) else placed(images, device, 0),
                                 list(index.split(256)))
    with eval_mode(backbone), eval_mode(heads):
        for start, x in zip(range(0, count, 256), batches):
            part = labels[start:start + len(x)] if rows is None else labels[rows[start:start + len(x)]]
            y = torch.from_numpy(part).long().to(device)
            img = to_float(x)
            views = _ten_crops(img, size) if ten_crop else [resize(img, size)]
            logits = dict.fromkeys(layers, 0.0)
            for v in views:
                for name, f in _features(backbone, transform(v), layers).items():
                    logits[name] = logits[name] + heads[name](f.float())
            for name in layers:
                correct[name] += (logits[name].argmax(1) == y).sum().item()
    return {name: 100.0 * c / max(1, count) for name, c in correct.items()}


def heads_step(features, heads: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               sched, train_backbone: bool = False) -> float:
    """One step of every layer's classifier on one batch: `features(x)` ({layer: activations}, through the backbone
    once, with gradients only when it trains too), the summed cross-entropy, the optimizer and schedule; bf16 autocast
    on CUDA. Returns the summed loss."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        with torch.set_grad_enabled(train_backbone):
            feats = features(x)
        loss = sum(F.cross_entropy(heads[name](f.float()), y) for name, f in feats.items())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def _batch_bounds(n: int, batch_size: int) -> list[int]:
    """Where each batch of an epoch of n images starts (and the end): a last batch of one joins the one before (batch
    norm cannot train on a single sample), so every image trains and every epoch has the same steps."""
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and n - bounds[-2] == 1:
        del bounds[-2]
    return bounds


def _checks(protocol: Protocol, epochs: int) -> set[int]:
    """Epochs (1-based, at their end) where the held-out part is scored: the end of every learning-rate stage for a
    step schedule, five evenly spaced points for a cosine one, and always the last."""
    if protocol.schedule == "step":  # the milestones move with a shorter or longer run, as the schedule's do
        points = {round(m * epochs / protocol.epochs) for m in protocol.milestones}
        points = {p for p in points if 0 < p < epochs}
    else:
        points = {max(1, round(epochs * k / 5)) for k in range(1, 5)}
    return points | {epochs}


def train_classifier(backbone: Backbone, protocol: Protocol, train: ImageArray, test: ImageArray, size: int,
                     device: torch.device | str, layers: list[str] | None = None, transform: Transform = normalize,
                     val_fraction: float | None = 0.1, seed: int = 0, epochs: int | None = None,
                     batch_size: int | None = None, budget_gb: float | None = None, progress: bool = True,
                     rows: np.ndarray | None = None, val_rows: np.ndarray | None = None) -> dict:
    """Train `protocol`'s classifier(s) on `train` and return the test top-1 of the model selected on a held-out part.

    Args:
        backbone: frozen (linear-probes, simclr) or fine-tuned (finetune; a copy is trained, `backbone` is untouched).
        protocol: see PROTOCOLS and protocol_for.
        train, test: labelled ImageArrays (unlabelled rows, -1, are left out of both).
        layers: linear-probes: the taps (all when None); the other protocols use the pooled representation.
        transform: RGB in [0,1] -> what the backbone sees (a method's input_transform).
        val_fraction: share of the labelled train rows held out for selecting the epoch (None: no selection).
        rows, val_rows: the rows of `train` to train on and to select on, given instead (fine-tuning sets the
            held-out rows aside before drawing its share of the labels); neither is ever copied out of `train`.
        epochs, batch_size: instead of the protocol's (its learning-rate milestones scale with the epochs).

    Returns:
        {"top1": {layer: test %}, "val_top1": {layer: held-out %}, "epoch": {layer: selected epoch}, "epochs",
         "batch_size", "lr", "train_images", "val_images"}.
    """
    from selfsup.eval import held_out_rows

    device = torch.device(device)
    epochs = protocol.epochs if epochs is None else epochs
    batch_size = protocol.batch_size if batch_size is None else batch_size
    if epochs < 1 or batch_size < 2:
        raise SelfSupError(f"a classifier needs epochs >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    for part, what in ((train, "training"), (test, "test")):
        if part.labels is None or not (part.labels >= 0).any():
            raise SelfSupError(f"the {what} split {part.name} has no labels")
    labelled = np.flatnonzero(train.labels >= 0)
    if rows is None:
        rows = labelled
        if val_rows is None and val_fraction:
            keep, val_rows = held_out_rows(train.labels, val_fraction)
            rows = np.intersect1d(keep, labelled)
    if protocol.finetune:
        # A copy trains (the caller's backbone stays as it was), every weight of it: a run's evaluated backbone may
        # be frozen (DINO's teacher, MoCo v3's patch projection), and fine-tuning means all of it.
        backbone = copy.deepcopy(backbone).requires_grad_(True)
    if protocol.name == "linear-probes":
        layers = layers or list(backbone.taps)
        shapes = {k: tuple(v) for k, v in backbone.tap_shapes(size, layers).items()}
    else:
        layers = [REPRESENTATION]
        shapes = {REPRESENTATION: (backbone.feature_dim,)}
    # From the training side alone (the test split is read only for the final number).
    num_classes = max(int(train.labels.max()) + 1, len(train.classes))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the heads' start must not depend on whatever ran before
        heads = _heads(protocol, shapes, num_classes).to(device)
    params = list(heads.parameters()) + (list(backbone.parameters()) if protocol.finetune else [])
    lr = protocol.rate(batch_size)
    opt = torch.optim.SGD(params, lr=lr, momentum=protocol.momentum, nesterov=protocol.nesterov,
                          weight_decay=protocol.weight_decay)
    rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    n = len(rows)
    if n < 2:
        raise SelfSupError(f"the training split has {n} labelled image(s); a classifier needs at least 2")
    bounds = _batch_bounds(n, batch_size)
    steps = len(bounds) - 1
    # The milestones move with a shorter or longer run, to whole epochs (where the held-out part is scored).
    drops = [round(m * epochs / protocol.epochs) * steps for m in protocol.milestones]
    total = epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: protocol.gamma ** bisect_right(drops, s)) if protocol.schedule == "step"
        else (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))))
    images = placed(train.images, device, budget_gb)
    labels = torch.from_numpy(train.labels[rows.numpy()]).long().to(device)
    aug = AugmentConfig(size=size, crop_scale=protocol.crop_scale, flip_p=0.5, jitter_p=0.0, grayscale_p=0.0)
    gen = torch.Generator(device=device).manual_seed(seed)
    rows_dev = rows.to(device)
    checks = _checks(protocol, epochs) if val_rows is not None and len(val_rows) else set()
    best: dict[str, tuple[float, int, dict]] = {}
    bar = Progress(epochs, f"{protocol.name} classifier{'s' * (len(layers) > 1)} on {n:,} images", unit="epochs",
                   enabled=progress)
    with bar:
        for epoch in range(1, epochs + 1):
            heads.train()
            backbone.train(protocol.finetune)  # frozen backbones keep their batch-norm statistics
            order = torch.randperm(n, generator=gen, device=device)
            batches = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            for idx, batch in zip(batches, gather_batches(images, [rows_dev[i] for i in batches])):
                x = transform(augment_unit(batch, aug, gen))
                loss = heads_step(lambda v: _features(backbone, v, layers), heads, x, labels[idx], opt, sched,
                                  protocol.finetune)
            bar.set(loss=f"{loss / len(layers):.3f}")
            bar.update()
            if epoch in checks:
                scores = _accuracy(backbone, heads, layers, images, train.labels, val_rows, size, device, transform,
                                   protocol.ten_crop, "held-out check")
                for name, acc in scores.items():
                    if name not in best or acc > best[name][0]:
                        best[name] = (acc, epoch, _state(heads[name], backbone if protocol.finetune else None))
    backbone.eval()
    if best:  # every layer back at its selected epoch
        for name, (_, _, state) in best.items():
            heads[name].load_state_dict(state["head"])
            if protocol.finetune:
                backbone.load_state_dict(state["backbone"])
    top1 = _accuracy(backbone, heads, layers, test.images, test.labels, None, size, device, transform,
                     protocol.ten_crop, "test")
    return {"top1": top1, "val_top1": {k: v[0] for k, v in best.items()},
            "epoch": {k: (best[k][1] if k in best else epochs) for k in layers}, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "train_images": n,
            "val_images": 0 if val_rows is None else len(val_rows)}


def _state(head: nn.Module, backbone: nn.Module | None) -> dict:
    """A copy of a head's (and a fine-tuned backbone's) weights, on the host."""
    copy_of = lambda m: {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}  # noqa: E731
    return {"head": copy_of(head), **({"backbone": copy_of(backbone)} if backbone is not None else {})}


def finetune_rows(labels: np.ndarray, spec: str, val_fraction: float | None, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """(training rows, held-out rows) for fine-tuning on `spec` of the labels: the held-out val_fraction is set aside
    first (HELDOUT_SEED), then label_rows draws the share (of each class's whole count: 1% of CIFAR-10's 5,000 per
    class is 50, as SimCLR's subsets of the whole split) from the rest; 100% is all of the rest."""
    from selfsup.eval import held_out_rows

    keep, held = held_out_rows(labels, val_fraction) if val_fraction else (np.flatnonzero(labels >= 0), None)
    return label_rows(labels, spec, seed, among=keep), held


__all__ = ["Protocol", "PROTOCOLS", "protocol_for", "train_classifier", "label_rows", "parse_labels", "finetune_rows",
           "heads_step", "REPRESENTATION"]

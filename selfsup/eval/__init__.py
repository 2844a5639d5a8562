"""Evaluation protocols on a frozen backbone: weighted kNN and per-layer linear probes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selfsup.augmentation import normalize
from selfsup.config import IN_MEMORY, Config
from selfsup.data import ImageArray, load_source
from selfsup.data.sources import kept_rows
from selfsup.errors import SelfSupError
from selfsup.eval.features import Transform, extract_features, extract_taps, probe_pool
from selfsup.eval.knn import knn_accuracy, knn_predict
from selfsup.eval.linear import train_linear_probes
from selfsup.nets import Backbone

HELDOUT = "heldout"  # eval.test_split=heldout: a held-out part of the train split stands in for the test split
HELDOUT_SEED = 0  # the same held-out rows for every run and seed, so selections made on them compare


def held_out_rows(labels: np.ndarray, fraction: float, seed: int = HELDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted row numbers of a labelled split: a seeded `fraction` of every class's rows held out
    (at least one of a class with two or more rows); unlabelled rows (-1) are always kept."""
    if not 0 < fraction < 1:
        raise SelfSupError(f"eval.val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == c)
        take = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if len(rows) > 1 else 0
        out.append(rng.permutation(rows)[:take])
    held = np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), held), held


def split_rows(arr: ImageArray, rows: np.ndarray, what: str) -> ImageArray:
    """The rows `rows` (sorted) of a split as an ImageArray named after `what`."""
    return ImageArray(f"{arr.name}[{what}]", kept_rows(arr.images, rows, what),
                      None if arr.labels is None else arr.labels[rows], arr.classes)


def held_out(arr: ImageArray, fraction: float) -> tuple[ImageArray, ImageArray]:
    """A labelled split cut into (train side, held-out part) by held_out_rows: the held-out part selects settings (an
    epoch, a temperature), so the test split is only ever read for the final number. The train side is the same
    images (never copied: ImageNet's would be 170 GB) with the held-out rows' labels set to -1, which every protocol
    leaves out; only the held-out part is copied."""
    if arr.labels is None or not (arr.labels >= 0).any():
        raise SelfSupError(f"{arr.name} has no labels to hold a labelled part out of")
    _, held = held_out_rows(arr.labels, fraction)
    if len(held) == 0:
        raise SelfSupError(f"{arr.name}: no class has two labelled images, so none can be held out")
    labels = arr.labels.copy()
    labels[held] = -1
    return (ImageArray(f"{arr.name}[less held-out {fraction:g}]", arr.images, labels, arr.classes),
            split_rows(arr, held, f"held-out {fraction:g}"))


def eval_splits(cfg: Config, required: bool = True) -> tuple[ImageArray, ImageArray] | None:
    """The labelled (train, test) splits evaluation uses: eval.source, else the training source. With
    eval.test_split=heldout, (the train split less a held-out part, that part): see held_out."""
    source = cfg.eval.source or cfg.data.source
    if source.startswith("image:") or source == IN_MEMORY:
        if required:
            what = "images given to selfsup.fit have" if source == IN_MEMORY else f"{source} has"
            raise SelfSupError(f"{what} no labelled splits to evaluate on; set eval.source (e.g. eval.source=digits)")
        return None
    # Evaluating on the training source: decode it at the same size as for training unless told otherwise.
    size = cfg.eval.size if cfg.eval.source else (cfg.eval.size or cfg.data.size)
    try:
        d = cfg.data
        train = load_source(source, cfg.eval.train_split, cfg.eval.root or d.root, d.download, size, d.bad_images,
                            d.workers)
        test = None if cfg.eval.test_split == HELDOUT else load_source(
            source, cfg.eval.test_split, cfg.eval.root or d.root, d.download, size, d.bad_images, d.workers)
    except SelfSupError:
        if required:
            raise
        return None
    for part in (train, test):
        if part is not None and (part.labels is None or (part.labels < 0).all()):
            if required:
                raise SelfSupError(f"{source} split has no labels; "
                                   "set eval.source to a labelled source (e.g. eval.source=digits)")
            return None
    return held_out(train, cfg.eval.val_fraction) if test is None else (train, test)


def run_knn(backbone: Backbone, cfg: Config, device: torch.device, splits: tuple[ImageArray, ImageArray] | None = None,
            transform: Transform = normalize) -> float:
    """Weighted kNN top-1 (percent) on the eval test split, the train split as the memory bank."""
    train, test = splits or eval_splits(cfg)
    size = cfg.model.input_size
    bank = extract_features(backbone, train.images, size, device, cfg.eval.batch_size, transform)
    queries = extract_features(backbone, test.images, size, device, cfg.eval.batch_size, transform)
    keep = torch.from_numpy(train.labels >= 0)
    labels = torch.from_numpy(train.labels)
    if not keep.all():  # unlabelled images (-1) are left out of the bank
        bank, labels = bank[keep.to(bank.device)], labels[keep]
    return knn_accuracy(bank, labels, queries, torch.from_numpy(test.labels),
                        max(train.num_classes, int(train.labels.max()) + 1), cfg.eval.knn_k, cfg.eval.knn_t,
                        device=device)


@dataclass
class TapFeatures:
    """Pooled tap features of a labelled train/test pair, extracted once and shared by the per-layer protocols."""

    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def tap_features(backbone: Backbone, cfg: Config, device: torch.device, layers: list[str] | None = None,
                 splits: tuple[ImageArray, ImageArray] | None = None, transform: Transform = normalize) -> TapFeatures:
    """Every requested tap (all when None), average-pooled to ~eval.probe_dims, for the eval train and test splits."""
    train, test = splits or eval_splits(cfg)
    layers = layers or list(backbone.taps)
    size, e = cfg.model.input_size, cfg.eval
    return TapFeatures(extract_taps(backbone, train.images, size, device, layers, e.probe_dims, e.batch_size,
                                    transform=transform),
                       extract_taps(backbone, test.images, size, device, layers, e.probe_dims, e.batch_size,
                                    transform=transform),
                       torch.from_numpy(train.labels), torch.from_numpy(test.labels),
                       max(train.num_classes, int(train.labels.max()) + 1))


def linear_probes(feats: TapFeatures, cfg: Config, device: torch.device) -> dict[str, float]:
    """Top-1 (percent) of a linear probe per tap, trained on the labelled training rows (-1: none, or held out)."""
    e = cfg.eval
    train, labels = feats.train, feats.train_labels
    if (labels < 0).any():
        keep = torch.nonzero(labels >= 0).flatten()
        train, labels = {k: v[keep] for k, v in train.items()}, labels[keep]
    return train_linear_probes(train, labels, feats.test, feats.test_labels, feats.num_classes,
                               e.probe_epochs, e.probe_lr, e.probe_weight_decay, e.probe_batch_size, device, cfg.seed)


def layer_knn(feats: TapFeatures, cfg: Config, device: torch.device) -> dict[str, float]:
    """Top-1 (percent) of weighted kNN (eval.knn_k, eval.knn_t) on each tap's pooled features, the labelled training
    rows as the bank."""
    keep = torch.nonzero(feats.train_labels >= 0).flatten()
    return {name: knn_accuracy(feats.train[name][keep], feats.train_labels[keep], feats.test[name], feats.test_labels,
                               feats.num_classes, cfg.eval.knn_k, cfg.eval.knn_t, device=device)
            for name in feats.train}


def few_label_subsets(labels: torch.Tensor, per_class: int, draws: int, seed: int = 0) -> list[torch.Tensor]:
    """`draws` class-balanced index sets of `per_class` labelled rows per class (seeded draws d = 0..draws-1; the
    same sets for every model, so their accuracies pair up). A class with fewer rows gives all it has."""
    labels = labels.long()
    subsets = []
    for d in range(draws):
        gen = torch.Generator().manual_seed(seed * 1_000 + d)
        picks = []
        for c in torch.unique(labels[labels >= 0]).tolist():
            rows = torch.nonzero(labels == c).flatten()
            picks.append(rows[torch.randperm(len(rows), generator=gen)[:per_class]])
        subsets.append(torch.cat(picks).sort().values)
    return subsets


def few_label_probes(feats: TapFeatures, cfg: Config, device: torch.device, per_class: int = 10, draws: int = 5,
                     epochs: int = 100) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation (over `draws` seeded class-balanced subsets) of a linear probe per tap trained on
    `per_class` labelled images per class and tested on the whole test split: how features do with few labels,
    where random features are weak. Each probe trains full-batch (`epochs` steps) with the eval section's AdamW
    settings; nothing is selected on the test split."""
    e = cfg.eval
    runs = []
    for subset in few_label_subsets(feats.train_labels, per_class, draws, cfg.seed):
        runs.append(train_linear_probes({k: v[subset] for k, v in feats.train.items()}, feats.train_labels[subset],
                                        feats.test, feats.test_labels, feats.num_classes, epochs, e.probe_lr,
                                        e.probe_weight_decay, len(subset), device, cfg.seed))
    out = {}
    for name in feats.train:
        acc = torch.tensor([r[name] for r in runs], dtype=torch.float64)
        out[name] = (acc.mean().item(), acc.std().item() if len(acc) > 1 else 0.0)
    return out


def run_linear(backbone: Backbone, cfg: Config, device: torch.device, layers: list[str] | None = None,
               splits: tuple[ImageArray, ImageArray] | None = None,
               transform: Transform = normalize) -> dict[str, float]:
    """Top-1 (percent) of a linear probe on every requested tap (all when None)."""
    return linear_probes(tap_features(backbone, cfg, device, layers, splits, transform), cfg, device)


__all__ = ["eval_splits", "held_out", "held_out_rows", "split_rows", "HELDOUT", "run_knn", "run_linear", "tap_features",
           "linear_probes", "layer_knn", "TapFeatures",
           "few_label_probes", "few_label_subsets",
           "extract_features", "extract_taps", "probe_pool", "knn_accuracy", "knn_predict", "train_linear_probes"]

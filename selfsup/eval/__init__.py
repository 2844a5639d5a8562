"""Evaluation protocols on a frozen backbone: weighted kNN and per-layer linear probes."""

from __future__ import annotations

import torch

from selfsup.config import Config
from selfsup.data import ImageArray, load_source
from selfsup.errors import SelfSupError
from selfsup.eval.features import extract_features, extract_taps, probe_pool
from selfsup.eval.knn import knn_accuracy, knn_predict
from selfsup.eval.linear import train_linear_probes
from selfsup.nets import Backbone


def eval_splits(cfg: Config, required: bool = True) -> tuple[ImageArray, ImageArray] | None:
    """The labelled (train, test) splits evaluation uses: eval.source, else the training source."""
    source = cfg.eval.source or cfg.data.source
    if source.startswith("image:"):
        if required:
            raise SelfSupError(f"{source} has no labels to evaluate on; set eval.source (e.g. eval.source=digits)")
        return None
    try:
        train = load_source(source, cfg.eval.train_split, cfg.eval.root or cfg.data.root, cfg.data.download, cfg.eval.size)
        test = load_source(source, cfg.eval.test_split, cfg.eval.root or cfg.data.root, cfg.data.download, cfg.eval.size)
    except SelfSupError:
        if required:
            raise
        return None
    for part in (train, test):
        if part.labels is None or (part.labels < 0).all():
            if required:
                raise SelfSupError(f"{source} split has no labels; set eval.source to a labelled source (e.g. eval.source=digits)")
            return None
    return train, test


def run_knn(backbone: Backbone, cfg: Config, device: torch.device, splits: tuple[ImageArray, ImageArray] | None = None) -> float:
    """Weighted kNN top-1 (percent) on the eval test split, the train split as the memory bank."""
    train, test = splits or eval_splits(cfg)
    size = cfg.model.input_size
    bank = extract_features(backbone, train.images, size, device, cfg.eval.batch_size)
    queries = extract_features(backbone, test.images, size, device, cfg.eval.batch_size)
    keep = torch.from_numpy(train.labels >= 0)
    return knn_accuracy(bank[keep.to(bank.device)], torch.from_numpy(train.labels)[keep], queries, torch.from_numpy(test.labels),
                        max(train.num_classes, int(train.labels.max()) + 1), cfg.eval.knn_k, cfg.eval.knn_t)


def run_linear(backbone: Backbone, cfg: Config, device: torch.device, layers: list[str] | None = None,
               splits: tuple[ImageArray, ImageArray] | None = None) -> dict[str, float]:
    """Top-1 (percent) of a linear probe on every requested tap (all when None)."""
    train, test = splits or eval_splits(cfg)
    layers = layers or list(backbone.taps)
    size = cfg.model.input_size
    e = cfg.eval
    tr = extract_taps(backbone, train.images, size, device, layers, e.probe_dims, e.batch_size)
    te = extract_taps(backbone, test.images, size, device, layers, e.probe_dims, e.batch_size)
    return train_linear_probes(tr, torch.from_numpy(train.labels), te, torch.from_numpy(test.labels),
                               max(train.num_classes, int(train.labels.max()) + 1), e.probe_epochs, e.probe_lr,
                               e.probe_weight_decay, e.probe_batch_size, device, cfg.seed)


__all__ = ["eval_splits", "run_knn", "run_linear", "extract_features", "extract_taps", "probe_pool",
           "knn_accuracy", "knn_predict", "train_linear_probes"]

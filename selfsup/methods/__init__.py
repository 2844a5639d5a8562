"""Methods by name."""

from __future__ import annotations

import torch

from selfsup.config import Config
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.deepcluster import DeepCluster
from selfsup.methods.sela import SeLa
from selfsup.methods.simclr import SimCLR
from selfsup.methods.supervised import Supervised
from selfsup.nets import build_backbone

METHODS = {"simclr": SimCLR, "sela": SeLa, "deepcluster": DeepCluster, "supervised": Supervised}
LABELLING = ("sela", "deepcluster", "supervised")  # methods that keep one label per training sample


def build_method(cfg: Config, num_samples: int | None = None, targets: torch.Tensor | None = None) -> Method:
    """The configured method around a freshly initialised backbone.

    Labelling methods need the dataset size; `supervised` needs its (heads, N) targets.
    """
    if cfg.method not in METHODS:
        raise SelfSupError(f"unknown method {cfg.method!r}; available: {', '.join(METHODS)}")
    backbone = build_backbone(cfg.model.backbone, cfg.model.cifar_stem, cfg.model.input_size, cfg.model.bn)
    if cfg.method == "simclr":
        return SimCLR(backbone, cfg.augment, cfg.simclr)
    if num_samples is None:
        raise AssertionError(f"{cfg.method} needs num_samples")
    if cfg.method == "sela":
        return SeLa(backbone, cfg.augment, cfg.sela, num_samples)
    if cfg.method == "supervised":
        if targets is None:
            raise AssertionError("supervised needs targets")
        return Supervised(backbone, cfg.augment, targets)
    return DeepCluster(backbone, cfg.augment, cfg.deepcluster, num_samples)


__all__ = ["Batch", "EpochContext", "Method", "METHODS", "LABELLING", "build_method"]

"""Methods by name."""

from __future__ import annotations

from selfsup.config import Config
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.simclr import SimCLR
from selfsup.nets import build_backbone

METHODS = {"simclr": SimCLR}


def build_method(cfg: Config) -> Method:
    """The configured method around a freshly initialised backbone."""
    if cfg.method not in METHODS:
        raise SelfSupError(f"unknown method {cfg.method!r}; available: {', '.join(METHODS)}")
    backbone = build_backbone(cfg.model.backbone, cfg.model.cifar_stem, cfg.model.input_size, cfg.model.bn)
    if cfg.method == "simclr":
        return SimCLR(backbone, cfg.augment, cfg.simclr)
    raise AssertionError(cfg.method)


__all__ = ["Batch", "EpochContext", "Method", "METHODS", "build_method"]

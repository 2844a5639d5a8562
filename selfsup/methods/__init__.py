"""Methods by name."""

from __future__ import annotations

import torch

from selfsup.config import Config
from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, EpochContext, Method
from selfsup.methods.bigan import BiGAN
from selfsup.methods.colorization import Colorization
from selfsup.methods.deepcluster import DeepCluster
from selfsup.methods.exemplar import Exemplar, InstanceDiscrimination
from selfsup.methods.inpainting import ContextEncoder
from selfsup.methods.rotnet import RotNet
from selfsup.methods.sela import SeLa
from selfsup.methods.simclr import SimCLR
from selfsup.methods.supervised import Supervised
from selfsup.nets import backbone_from

METHODS = {"simclr": SimCLR, "sela": SeLa, "deepcluster": DeepCluster, "supervised": Supervised, "exemplar": Exemplar,
           "instance": InstanceDiscrimination, "rotnet": RotNet, "colorization": Colorization,
           "inpainting": ContextEncoder, "bigan": BiGAN}
# Methods that keep something per training sample (a label, a class, a bank entry), so the samples must be fixed.
LABELLING = ("sela", "deepcluster", "supervised", "exemplar", "instance")


def build_method(cfg: Config, num_samples: int | None = None, targets: torch.Tensor | None = None) -> Method:
    """The configured method around a freshly initialised backbone.

    Labelling methods need the dataset size (for exemplar: the number of seeds); `supervised` needs its (heads, N) targets.
    """
    if cfg.method not in METHODS:
        raise SelfSupError(f"unknown method {cfg.method!r}; available: {', '.join(METHODS)}")
    backbone = backbone_from(cfg.model)
    if cfg.method == "simclr":
        return SimCLR(backbone, cfg.augment, cfg.simclr)
    if cfg.method == "rotnet":
        return RotNet(backbone, cfg.augment, cfg.rotnet)
    if cfg.method == "colorization":
        return Colorization(backbone, cfg.augment, cfg.colorization, cfg.model.input_size)
    if cfg.method == "inpainting":
        return ContextEncoder(backbone, cfg.augment, cfg.inpainting, cfg.model.input_size)
    if cfg.method == "bigan":
        return BiGAN(backbone, cfg.augment, cfg.bigan, cfg.model.input_size)
    if num_samples is None:
        raise AssertionError(f"{cfg.method} needs num_samples")
    if cfg.method == "sela":
        return SeLa(backbone, cfg.augment, cfg.sela, num_samples)
    if cfg.method == "supervised":
        if targets is None:
            raise AssertionError("supervised needs targets")
        return Supervised(backbone, cfg.augment, targets)
    if cfg.method == "exemplar":
        return Exemplar(backbone, cfg.exemplar, num_samples)
    if cfg.method == "instance":
        return InstanceDiscrimination(backbone, cfg.exemplar, cfg.instance, num_samples, cfg.model.input_size)
    return DeepCluster(backbone, cfg.augment, cfg.deepcluster, num_samples)


__all__ = ["Batch", "EpochContext", "Method", "METHODS", "LABELLING", "build_method"]

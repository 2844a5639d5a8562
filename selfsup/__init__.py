"""selfsup: self-supervised visual representation learning.

The public API, imported on first use (so `import selfsup` and the command line stay quick):

    backbones     build_backbone, wrap, Backbone
    augmentation  augment, AugmentConfig, MultiCropConfig, simclr_recipe, single_image_recipe
    heads, losses ProjectionHead, PredictionHead, Prototypes, DINOHead (selfsup.heads); nt_xent, info_nce,
                  contrastive_across_batch, negative_cosine, barlow_twins, vicreg, swav, dino, dino_center
                  (selfsup.losses)
    methods       SimCLR, MoCo, MoCoV3, BYOL, SimSiam, BarlowTwins, VICReg, SwAV, DINO, SeLa, DeepCluster, ...
                  (selfsup.methods), Method, register_method, build_method, METHODS
    optimal transport  sinkhorn, self_label, equipartition
    training      fit, pretrain, load_run, Config, load_config
    data          load_source, ImageArray
    evaluation    knn, linear_probe, finetune, evaluate_run, export_labels, export_backbone

Example:
    >>> import selfsup, torchvision
    >>> method = selfsup.SimCLR(selfsup.wrap(torchvision.models.resnet18(), input_size=32))
    >>> selfsup.fit(method, images, selfsup.load_config(overrides={"epochs": 10}), out="runs/mine")
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "selfsup.nets": ["build_backbone", "wrap", "Backbone", "torchvision_resnet", "timm_resnet"],
    "selfsup.augmentation": ["augment", "AugmentConfig", "MultiCropConfig", "simclr_recipe", "single_image_recipe",
                             "single_image_authors"],
    "selfsup.heads": ["ProjectionHead", "PredictionHead", "Prototypes", "DINOHead"],
    "selfsup.losses": ["nt_xent", "info_nce", "contrastive_across_batch", "negative_cosine", "barlow_twins", "vicreg",
                       "swav", "dino", "dino_center"],
    "selfsup.ot": ["sinkhorn", "self_label", "equipartition"],
    "selfsup.methods": ["Method", "register_method", "build_method", "METHODS", "DataInfo", "Batch", "SimCLR",
                        "SimCLRConfig", "SeLa", "SeLaConfig", "DeepCluster", "DeepClusterConfig", "Supervised",
                        "SupervisedConfig", "Exemplar", "ExemplarConfig", "InstanceDiscrimination", "InstanceConfig",
                        "RotNet", "RotNetConfig", "Colorization", "ColorizationConfig", "ContextEncoder",
                        "InpaintingConfig", "BiGAN", "BiGANConfig", "SwAV", "SwAVConfig", "DINO", "DINOConfig",
                        "MoCo", "MoCoConfig", "MoCoV3", "MoCoV3Config", "BYOL", "BYOLConfig", "SimSiam",
                        "SimSiamConfig", "BarlowTwins", "BarlowTwinsConfig", "VICReg", "VICRegConfig"],
    "selfsup.engine": ["fit", "pretrain", "load_run"],
    "selfsup.config": ["Config", "load_config"],
    "selfsup.data": ["load_source", "ImageArray"],
    "selfsup.eval.protocols": ["knn", "linear_probe", "finetune", "evaluate_run", "export_labels"],
    "selfsup.export": ["export_backbone"],
    "selfsup.errors": ["SelfSupError", "SelfSupWarning"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_MODULES = ("heads", "losses", "methods", "nets", "augmentation", "engine", "eval", "config", "data", "ot", "export")

__all__ = ["__version__", *_WHERE, *_MODULES]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"selfsup.{name}")
    else:
        raise AttributeError(f"module 'selfsup' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

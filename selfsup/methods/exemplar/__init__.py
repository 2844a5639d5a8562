"""Exemplar-CNN (Dosovitskiy et al. 2014): seed patches as surrogate classes, and a softmax over all of them.

The training images are seed contexts (see .seeds: patches at high-gradient places, each stored with the window
around it), seed i is surrogate class i, and every step classifies fresh randomly transformed copies (the paper's
six transformation families, .seeds.transform) with a softmax over all seeds. Its classifier holds N x feature_dim
weights, which is what keeps it from reaching a million images; selfsup.methods.instance is the scalable form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.errors import SelfSupError
from selfsup.methods.base import Batch, Method, RunInfo
from selfsup.methods.exemplar.seeds import (
    ExemplarTransformConfig,
    Seeds,
    load_seeds,
    pixel_pca,
    sample_seeds,
    save_seeds,
    transform,
)
from selfsup.methods.registry import register_method

SEEDS = "seeds.npz"  # in the run directory: the seed patches, sampled once and reused on --resume


@dataclass
class ExemplarConfig:
    """Exemplar-CNN: seed patches as surrogate classes, and their transformations."""

    RANGES: ClassVar[dict[str, str]] = {"num_seeds": "[1, inf)", "patch": "[1, inf)", "image_size": "[1, inf)",
                                        "samples_per_class": "[1, inf)"}

    num_seeds: int = 8000  # surrogate classes; the paper goes up to 32,000
    patch: int = 32
    image_size: int | None = None  # sources resized to this before seeds are cut; None: 64, or larger sources as is
    samples_per_class: int = 100  # transformed copies of every seed per epoch
    transform: ExemplarTransformConfig = field(default_factory=ExemplarTransformConfig)


class TransformedCopies(Method):
    """Shared by Exemplar-CNN and instance discrimination: transformed copies of the batch, with the colour
    statistics (principal axes and mean of the pixel colours) of the training images."""

    uses_augment = False  # the copies come from the paper's transformations, not the run's augment section

    def __init__(self, backbone, cfg, augment, data, out_size: int | None = None):
        super().__init__(backbone, cfg, augment, data)
        self.out_size = out_size or self.data.input_size
        self.register_buffer("pca_axes", torch.eye(3))
        self.register_buffer("pixel_mean", torch.full((3,), 0.5))

    def on_train_start(self, images: torch.Tensor) -> None:
        axes, mean = pixel_pca(images)
        self.pca_axes.copy_(axes)
        self.pixel_mean.copy_(mean)

    def copies(self, batch: Batch) -> torch.Tensor:
        region = self.out_size / batch.images.shape[1]  # seed contexts: the central patch; whole images: all of it
        return self.make_input(lambda: self.input_transform(transform(
            batch.images, self.cfg.transform, batch.generator, self.out_size, region, self.pca_axes, self.pixel_mean)),
            batch.images.device)


@register_method("exemplar", config=ExemplarConfig)
class Exemplar(TransformedCopies):
    """Backbone + a linear softmax over the seeds; each epoch draws `samples_per_class` copies of every seed."""

    per_sample_state = True  # a class per seed
    cfg: ExemplarConfig

    def __init__(self, backbone, cfg: ExemplarConfig | None = None, augment=None, data=None):
        cfg = cfg or ExemplarConfig()
        super().__init__(backbone, cfg, augment, data, cfg.patch)
        if cfg.patch != self.data.input_size:
            raise SelfSupError(f"exemplar.patch ({cfg.patch}) must equal model.input_size ({self.data.input_size})")
        self.classifier = nn.Linear(self.backbone.feature_dim, cfg.num_seeds)
        self.passes_per_epoch = cfg.samples_per_class

    @staticmethod
    def num_samples_in(state: dict[str, torch.Tensor]) -> int | None:
        return state["classifier.weight"].shape[0]

    def prepare_data(self, data, run: RunInfo):
        """The seed patches' context windows become the training images, one class each: sampled at the start of a
        run (and saved in it), read back on resume."""
        from selfsup.data import ImageArray

        path = run.out / SEEDS if run.out is not None else None
        if run.resume and path is not None:
            seeds = load_seeds(path)
        else:
            e = self.cfg
            size = e.image_size or max(64, *data.images.shape[1:3])  # CIFAR is upsampled to 64; STL-10 stays at 96
            seeds = sample_seeds(data.images, e.num_seeds, e.patch, size, run.seed)
            if run.is_main and path is not None:
                save_seeds(seeds, path)
        return ImageArray(f"{data.name}-seeds", seeds.context, None, [])

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.backbone(self.copies(batch))).float()
        loss = F.cross_entropy(logits, batch.index)
        return {"loss": loss, "surrogate_acc": (logits.argmax(1) == batch.index).float().mean()}


__all__ = ["Exemplar", "ExemplarConfig", "ExemplarTransformConfig", "TransformedCopies", "Seeds", "SEEDS",
           "sample_seeds", "load_seeds", "save_seeds", "pixel_pca", "transform"]

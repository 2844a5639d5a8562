"""Supervised training on per-sample labels: the supervised baseline (true labels) and label transfer
(self-labels exported by `selfsup labels`, used to train a fresh network of another architecture)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import SelfSupError
from selfsup.methods.base import DataInfo
from selfsup.methods.pseudo_labels import PseudoLabelMethod
from selfsup.methods.registry import register_method


@dataclass
class SupervisedConfig:
    """Where the labels come from: the source's own, or a labels file (label transfer)."""

    labels_file: str | None = None  # a CSV from `selfsup labels` instead of the source's labels


def read_labels_csv(path: str | Path, num_samples: int) -> torch.Tensor:
    """The (heads, N) label matrix of a CSV written by `selfsup labels` (columns index, label_0, confidence_0, ...)."""
    path = Path(path)
    if not path.is_file():
        raise SelfSupError(f"labels file {path} does not exist; write one with: selfsup labels RUN -o {path.name}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    heads = sorted(int(c.split("_", 1)[1]) for c in (rows[0] if rows else {}) if c.startswith("label_"))
    if not rows or not heads or "index" not in rows[0]:
        raise SelfSupError(f"{path} is not a labels file from `selfsup labels` (needs columns index and label_0)")
    if len(rows) != num_samples or [int(r["index"]) for r in rows] != list(range(num_samples)):
        raise SelfSupError(f"{path} labels {len(rows)} samples but the training data has {num_samples}; "
                           "use the same data source and split as the run that made the labels")
    return torch.tensor([[int(r[f"label_{t}"]) for r in rows] for t in heads], dtype=torch.long)


@register_method("supervised", config=SupervisedConfig)
class Supervised(PseudoLabelMethod):
    """Backbone + one linear head per label set, trained with the mean cross-entropy (label -1 is ignored)."""

    needs_targets = True
    cfg: SupervisedConfig

    def initial_labels(self, data) -> tuple[torch.Tensor, int]:
        """The given labels (DataInfo.targets, one row per label set)."""
        targets = data.targets if data.targets.dim() == 2 else data.targets[None]
        if targets.shape[1] != data.num_samples:
            raise SelfSupError(f"{targets.shape[1]} labels for {data.num_samples} training samples")
        return targets, int(targets.max()) + 1 if targets.numel() else 1

    @classmethod
    def data_info(cls, cfg, data):
        """The labels to learn: the labels file when set (label transfer), else the source's own labels."""
        labels_file = cfg.section("supervised").labels_file
        if labels_file:
            targets = read_labels_csv(labels_file, len(data))
        elif data.labels is None:
            raise SelfSupError(f"method supervised needs labels: {cfg.data.source} has none; "
                               "set supervised.labels_file=labels.csv")
        else:
            targets = torch.from_numpy(np.asarray(data.labels))[None]
        return DataInfo(len(data), cfg.model.input_size, targets)

    @classmethod
    def upgrade_config(cls, saved: dict) -> dict:
        """Earlier versions kept the labels file under data."""
        labels_file = (saved.get("data") or {}).get("labels_file")
        if labels_file is not None:
            saved["supervised"] = {**(saved.get("supervised") or {}), "labels_file": labels_file}
        return saved

    @classmethod
    def state_info(cls, state, cfg):
        return DataInfo(state["labels"].shape[-1], cfg.model.input_size, state["labels"])


def transfer(labels: str | Path, arch: str, source_run: str | Path, overrides: list[str] | None = None,
             out: str | Path | None = None, force: bool = False) -> dict:
    """Label transfer: train a fresh `arch` network on exported self-labels alone, with the data, augmentation and
    schedule of the run that made them; returns {"run": out, **the last epoch's metrics}."""
    from selfsup.config import apply_overrides, load_run_config
    from selfsup.engine import load_checkpoint, pretrain

    source = Path(source_run)
    cfg = load_run_config(load_checkpoint(source)["config"])
    cfg.method, cfg.model.backbone = "supervised", arch
    cfg.section("supervised").labels_file = str(labels)
    apply_overrides(cfg, overrides or [])
    out = Path(out) if out else source.parent / f"{source.name}-transfer-{arch}"
    return {"run": str(out), **pretrain(cfg, out, force=force)}


__all__ = ["Supervised", "SupervisedConfig", "read_labels_csv", "transfer"]

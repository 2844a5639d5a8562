"""The run directory: its checks, the atomic checkpoint, and the metrics log."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from selfsup.errors import SelfSupError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | Path) -> dict:
    """The run's last checkpoint, with a clear error when there is none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise SelfSupError(f"no checkpoint in {run_dir}; give the directory of a pretraining run")
    return torch.load(path, map_location="cpu", weights_only=True)


def check_run_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite an existing run unless `force`; `resume` needs a checkpoint to continue from."""
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise SelfSupError(f"cannot resume: no {CHECKPOINT} in {out}")
        return
    if out.exists() and any(out.iterdir()) and not force:
        raise SelfSupError(f"run directory {out} already exists; pass --resume to continue it or --force to "
                           "overwrite it")


def create_run_dir(out: Path, resume: bool) -> None:
    """An empty run directory for a new run (an existing one, already checked, is replaced); kept as is on resume."""
    if resume:
        return
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def append_metrics(out: Path, metrics: dict) -> None:
    """One line of metrics.jsonl."""
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(metrics) + "\n")


def read_metrics(out: Path) -> list[dict]:
    """Every line of a run's metrics.jsonl."""
    path = Path(out) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


__all__ = ["CHECKPOINT", "METRICS", "CONFIG", "save_atomic", "load_checkpoint", "check_run_dir", "create_run_dir",
           "append_metrics", "read_metrics"]

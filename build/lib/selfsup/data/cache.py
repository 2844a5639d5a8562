"""A decoded-array cache: one .npy of uint8 images (and labels) per source and split, memory-mapped on reuse."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np


def cache_dir() -> Path:
    """The cache root: $SELFSUP_CACHE, else ~/.cache/selfsup."""
    return Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup"))


def cache_key(*parts: object) -> str:
    """A short stable hash of what identifies a decoded array (source, split, file stats, options)."""
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def cached_arrays(
    name: str, key: str, decode: Callable[[], tuple[np.ndarray, np.ndarray | None, list[str]]]
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Return (images, labels, classes) from the cache, decoding and writing them on the first call."""
    root = cache_dir() / "arrays"
    stem = root / f"{name}-{key}"
    meta_path = stem.with_suffix(".json")
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        images = np.load(str(stem) + ".images.npy", mmap_mode="r")
        labels = np.load(str(stem) + ".labels.npy") if meta["has_labels"] else None
        return images, labels, meta["classes"]
    images, labels, classes = decode()
    images = np.ascontiguousarray(images, dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    _save_npy_atomic(Path(str(stem) + ".images.npy"), images)
    if labels is not None:
        _save_npy_atomic(Path(str(stem) + ".labels.npy"), np.asarray(labels, dtype=np.int64))
    # The metadata is written last: its presence means the arrays beside it are complete.
    tmp = meta_path.with_name(meta_path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"has_labels": labels is not None, "classes": classes, "shape": images.shape}))
    os.replace(tmp, meta_path)
    return np.load(str(stem) + ".images.npy", mmap_mode="r"), labels, classes

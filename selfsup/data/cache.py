"""A decoded-array cache: one .npy of uint8 images (and labels) per source and split, memory-mapped on reuse.

Each entry is verified on every load against its metadata (sizes, shape, checksums): a damaged entry is
reported in one warning line and decoded again, never used silently. A cache folder that cannot be written
is read when it holds a valid entry; otherwise the source is decoded without caching, with one warning.

An entry `<name>-<key>` is <stem>.images.npy, <stem>.labels.npy (when labelled), <stem>.skipped.txt (when images
were left out) and <stem>.json, written last: without it nothing else counts. A build in progress (build.py) keeps
<stem>.images.npy.partial, <stem>.progress and <stem>.lock beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from selfsup.errors import warn

# Part of every key: bump it when the cached layout or a decoder's output changes, so old entries simply miss.
CACHE_VERSION = 4  # 3: a folder's class numbers are shared by its splits; 4: folders decode in build.py (JPEG draft)

# The images checksum is a zlib.crc32 over the whole array up to this size, over a fixed spread of rows above it.
# Measured on 50,000x32x32x3 uint8 (150 MB, CIFAR-10 train) memory-mapped from a page-cached .npy, on one AMD EPYC
# core (zlib 1.2.13, SHA-NI present): crc32 50 ms (3.1 GB/s), sha256 86 ms (1.8 GB/s), blake2b 169 ms (0.9 GB/s);
# from a cold page cache crc32 41-50 ms, sha256 125 ms. crc32 is the fastest, and it only has to catch damage (torn
# writes, flipped bits), not tampering. At 512 MiB a full check costs ~0.2 s per load; past it (STL-10 unlabelled
# 2.8 GB, SVHN extra 1.6 GB) the rows add up to ~32 MiB (~10 ms) and the exact byte sizes are still checked.
FULL_CHECK_BYTES = 512 * 2**20
SAMPLE_BYTES = 32 * 2**20
MIN_SAMPLE_ROWS = 64

_warned_unwritable: set[str] = set()


def cache_dir() -> Path:
    """The cache root: $SELFSUP_CACHE, else ~/.cache/selfsup."""
    return Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup"))


def cache_key(*parts: object) -> str:
    """A short stable hash of what identifies a decoded array (source, split, file stats, options, cache version)."""
    return hashlib.sha1(json.dumps([str(CACHE_VERSION)] + [str(p) for p in parts]).encode()).hexdigest()[:16]


def _sample_rows(n: int, row_bytes: int) -> int | None:
    """How many evenly spread rows the images checksum covers: None means all of them (the array is small)."""
    if n * row_bytes <= FULL_CHECK_BYTES:
        return None
    return min(n, max(MIN_SAMPLE_ROWS, SAMPLE_BYTES // max(1, row_bytes)))


def _images_crc(images: np.ndarray, rows: int | None) -> int:
    """crc32 of the whole images array (rows=None) or of `rows` rows spread evenly from the first to the last."""
    if rows is None:
        return zlib.crc32(np.ascontiguousarray(images))
    picked = np.unique(np.linspace(0, len(images) - 1, rows).round().astype(np.int64))
    return zlib.crc32(np.ascontiguousarray(images[picked]))


def _labels_sha(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels)).hexdigest()


class _Damaged(Exception):
    """A cache entry whose files do not match its metadata (the message says which and how)."""


def _npy_paths(stem: Path) -> tuple[Path, Path, Path]:
    return Path(str(stem) + ".images.npy"), Path(str(stem) + ".labels.npy"), Path(str(stem) + ".json")


@dataclass(frozen=True)
class EntryFiles:
    """The files of one entry, and of a build of it in progress."""

    images: Path
    labels: Path
    meta: Path
    skipped: Path
    partial: Path
    progress: Path
    lock: Path

    def all(self) -> tuple[Path, ...]:
        return (self.images, self.labels, self.meta, self.skipped, self.partial, self.progress, self.lock)


def entry_files(stem: Path) -> EntryFiles:
    """The paths of the entry `stem` (cache folder / name-key)."""
    images, labels, meta = _npy_paths(stem)
    return EntryFiles(images, labels, meta, Path(f"{stem}.skipped.txt"), Path(f"{images}.partial"),
                      Path(f"{stem}.progress"), Path(f"{stem}.lock"))


def _load_npy(path: Path, size: int, mmap: bool) -> np.ndarray:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise _Damaged(f"{path.name} is missing") from None
    except OSError as e:
        raise _Damaged(f"cannot read {path.name}: {e.strerror or e}") from None
    if actual != size:
        raise _Damaged(f"{path.name} holds {actual} bytes but its metadata says {size}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 — np.load raises ValueError, OSError, EOFError... for a mangled file
        raise _Damaged(f"{path.name} is unreadable ({type(e).__name__})") from None


def _load_verified(stem: Path) -> tuple[np.ndarray, np.ndarray | None, list[str]] | None:
    """The cached arrays after checking them against their metadata; None when there is no entry (a miss)."""
    images_path, labels_path, meta_path = _npy_paths(stem)
    try:
        text = meta_path.read_text()
    except OSError:
        # No metadata (never written, or an interrupted write: it is written last) or no readable folder: a miss.
        return None
    try:
        meta = json.loads(text)
        shape, rows, crc = [int(s) for s in meta["shape"]], meta["images_rows"], int(meta["images_crc32"])
        rows = None if rows is None else int(rows)
        images_bytes, has_labels, classes = int(meta["images_bytes"]), bool(meta["has_labels"]), meta["classes"]
        if (meta["version"] != CACHE_VERSION or meta["dtype"] != "uint8" or not isinstance(classes, list)
                or (rows is not None and rows < 1)):
            raise ValueError("unexpected metadata")
        if has_labels:
            labels_bytes, labels_sha = int(meta["labels_bytes"]), str(meta["labels_sha256"])
    except (ValueError, KeyError, TypeError):
        raise _Damaged(f"{meta_path.name} is not valid metadata") from None
    images = _load_npy(images_path, images_bytes, mmap=True)
    if images.dtype != np.uint8 or list(images.shape) != shape:
        raise _Damaged(f"{images_path.name} holds {images.dtype} {images.shape} but its metadata says uint8 {shape}")
    if _images_crc(images, rows) != crc:
        raise _Damaged(f"{images_path.name} fails its checksum, so its bytes changed")
    labels = None
    if has_labels:
        labels = _load_npy(labels_path, labels_bytes, mmap=False)
        if labels.dtype != np.int64 or labels.shape != (shape[0],) or _labels_sha(labels) != labels_sha:
            raise _Damaged(f"{labels_path.name} fails its checksum, so its bytes changed")
    return images, labels, [str(c) for c in classes]


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) beside `path`, then rename it over `path`; the temporary file never outlives a failure."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def _save_npy_atomic(path: Path, array: np.ndarray | Path) -> None:
    """Put an .npy of an entry in place atomically: `array` written beside `path` then renamed over it, or a finished
    .npy file (a build's temporary array) renamed over it. Every array of an entry lands through here."""
    if isinstance(array, Path):
        os.replace(array, path)
        return

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file, not a name: np.save would append .npy to the temporary name
            np.save(f, array)

    _write_atomic(path, write)


def _write(stem: Path, images: np.ndarray, labels: np.ndarray | None, classes: list[str]) -> None:
    """Write the arrays, then their metadata, atomically and last: its presence means the arrays are complete."""
    images_path, labels_path, meta_path = _npy_paths(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    _save_npy_atomic(images_path, images)
    _write_rest(images_path, labels_path, meta_path, images, labels, classes)


def _write_rest(images_path: Path, labels_path: Path, meta_path: Path, images: np.ndarray,
                labels: np.ndarray | None, classes: list[str], before_meta: Callable[[], None] = lambda: None) -> None:
    """Given the images file in place: the labels, then the metadata with the checksums, atomically and last."""
    rows = _sample_rows(len(images), images[0].nbytes if len(images) else 0)
    meta = {"version": CACHE_VERSION, "has_labels": labels is not None, "classes": classes,
            "shape": list(images.shape), "dtype": "uint8", "images_bytes": images_path.stat().st_size,
            "images_rows": rows, "images_crc32": _images_crc(images, rows)}
    if labels is not None:
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        _save_npy_atomic(labels_path, labels)
        meta.update(labels_bytes=labels_path.stat().st_size, labels_sha256=_labels_sha(labels))
    before_meta()
    _write_atomic(meta_path, lambda tmp: tmp.write_text(json.dumps(meta)))


def finish(files: EntryFiles, labels: np.ndarray | None, classes: list[str], skipped: list[str]) -> None:
    """Turn a finished build (files.partial) into the entry: the images renamed into place, the labels, the list of
    skipped images, and the metadata last. Its old metadata goes first, so no moment pairs it with new arrays."""
    files.meta.unlink(missing_ok=True)
    files.skipped.unlink(missing_ok=True)
    _save_npy_atomic(files.images, files.partial)
    images = np.load(files.images, mmap_mode="r")
    labels = None if labels is None else np.ascontiguousarray(labels, dtype=np.int64)

    def write_skipped() -> None:
        if skipped:
            _write_atomic(files.skipped, lambda tmp: tmp.write_text("\n".join(skipped) + "\n"))

    _write_rest(files.images, files.labels, files.meta, images, labels, classes, write_skipped)


def _pointer(root: Path, name: str, source: str) -> Path:
    """The file naming the key a source was last cached under (so a changed source is noticed, not just missed)."""
    return root / f"{name}-source-{hashlib.sha1(source.encode()).hexdigest()[:16]}.key"


def _forget_stale(root: Path, name: str, source: str, key: str) -> None:
    """When `source` was cached under another key, say it changed and delete that entry (the cache would otherwise
    keep one stale copy per edit of the folder), and what a build of it left."""
    try:
        old = _pointer(root, name, source).read_text().strip()
    except OSError:
        return
    if old and old != key:
        warn(f"{source} changed since it was decoded (files added, removed, moved or replaced); decoding it again")
        for path in entry_files(root / f"{name}-{old}").all():
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass


forget_stale = _forget_stale


def remember(root: Path, name: str, source: str, key: str) -> None:
    """Record that `source` is cached (or being built) under `key`, for forget_stale."""
    _pointer(root, name, source).write_text(key)


def warn_unwritable(root: Path, e: OSError) -> None:
    """Say once per cache folder that it cannot be written (the source is decoded without caching)."""
    if str(root) not in _warned_unwritable:
        _warned_unwritable.add(str(root))
        warn(f"cannot write the decode cache in {root} ({e.strerror or e}); decoding without caching — "
             "set SELFSUP_CACHE to a writable folder")


def lookup(name: str, key: str) -> tuple[np.ndarray, np.ndarray | None, list[str]] | None:
    """The verified entry `name`-`key` (images memory-mapped); None when absent, or damaged (said in a warning)."""
    root = cache_dir() / "arrays"
    try:
        return _load_verified(root / f"{name}-{key}")
    except _Damaged as e:
        warn(f"damaged decode cache in {root}: {e}; decoding {name} again")
        return None


def cached_arrays(
    name: str, key: str, decode: Callable[[], tuple[np.ndarray, np.ndarray | None, list[str]]],
    source: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Return (images, labels, classes) from the verified cache, decoding (and caching) them when absent or damaged.

    `source` names what was decoded (path, split, settings): a source cached before under another key changed,
    which is said in a warning, and its old entry is deleted."""
    root = cache_dir() / "arrays"
    stem = root / f"{name}-{key}"
    found = lookup(name, key)
    if found is not None:
        return found
    if source is not None:
        _forget_stale(root, name, source, key)
    images, labels, classes = decode()
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = None if labels is None else np.ascontiguousarray(labels, dtype=np.int64)
    try:
        _write(stem, images, labels, classes)
        if source is not None:
            _pointer(root, name, source).write_text(key)
    except OSError as e:
        warn_unwritable(root, e)
        return images, labels, classes
    try:
        # Hand back the memory map, so the decoded copy can be freed and every later run shares the same pages.
        return np.load(_npy_paths(stem)[0], mmap_mode="r"), labels, classes
    except (OSError, ValueError):
        return images, labels, classes


def made_once(folder: str, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None], what: str
              ) -> np.ndarray:
    """A uint8 array too large for RAM, made once into `$SELFSUP_CACHE/<folder>/<key>.npy` by fill(memory map) and
    memory-mapped read-only from then on: the ranks of a torchrun job take turns on a lock (one makes it, the others
    find it), the disk is checked first, and a temporary left by a killed process is removed before starting again."""
    import fcntl
    import shutil

    from selfsup.errors import SelfSupError
    from selfsup.progress import say

    root = cache_dir() / folder
    path = root / f"{key}.npy"
    root.mkdir(parents=True, exist_ok=True)
    nbytes = int(np.prod(shape, dtype=np.int64))
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            for stale in root.glob(f"{key}.tmp*.npy"):
                stale.unlink(missing_ok=True)
            free = shutil.disk_usage(root).free
            if free < nbytes:
                raise SelfSupError(f"{what} needs {nbytes / 2**30:.1f} GB in {root}, which has {free / 2**30:.1f} GB "
                                   "free; free space there or set SELFSUP_CACHE to a larger disk")
            say(f"selfsup: {what} ({nbytes / 2**30:.1f} GB) into {path}")
            tmp = path.with_name(f"{key}.tmp{os.getpid()}.npy")
            try:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                fill(out)
                out.flush()
                del out
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


"""The one decode path of image folders, ImageNet and tar shards into the uint8 cache: parallel, resumable, atomic.

A source hands over a Plan (where each image's bytes are, labels, classes). The build

- announces itself (images, resolution, bytes on disk) and refuses up front when the disk is too small;
- preallocates the array as a temporary .npy beside its cache entry; `workers` processes decode chunks of images and
  write their rows straight into it, while the main process schedules chunks (and reads compressed archives, which
  only it can read in order) and shows one progress bar in images/s;
- records every finished chunk in a small progress file, so a build that was killed continues where it stopped when
  run again (same fingerprint, hence the same entry name); a changed source is another entry and starts over;
- renames the array into place and writes the metadata last (cache.finish), so a half-built cache is never used.

Concurrent builds of one entry (torchrun ranks) take turns on a lock file: the first builds, the others then find
the finished entry.
"""

from __future__ import annotations

import errno
import io
import json
import mmap
import multiprocessing
import os
import shutil
import sys
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from selfsup.data import cache
from selfsup.data.files import stream_tar, unreadable
from selfsup.errors import SelfSupError
from selfsup.progress import Progress, say

# Part of the key of every entry built here: bump it when the decoded pixels change.
# Resizing decodes JPEGs at reduced size (PIL's draft: libjpeg scales by 1/2, 1/4 or 1/8 inside the inverse DCT, to
# no less than the resized size) and resizes only the box that the centre crop keeps. Measured on one core of this
# machine (AMD EPYC, Pillow 13.0 with libjpeg-turbo, torchvision 0.29.1, best of 3), size 64, 2,000 fabricated
# JPEGs of 96-256 px (13.8 kB each, quality 90), decode + bicubic resize + centre crop to 64x64:
#   PIL full decode, resize, crop           1,748 img/s
#   PIL full decode, resize of the crop box 1,978 img/s
#   PIL draft, resize, crop                 2,404 img/s
#   PIL draft, resize of the crop box       2,824 img/s  (kept: 1.62x the full decode)
#   torchvision.io.decode_jpeg + PIL box    2,017 img/s  (its decode alone: 3,693 img/s against PIL's 3,001, but it
#                                                          cannot scale in the DCT, so it resizes 4x the pixels)
#   torchvision.io.decode_jpeg + bicubic    1,751 img/s  (torch interpolate, antialias)
# At ImageNet's sizes the gap widens: 300 JPEGs of 500x375 (78 kB): full 395 img/s, draft + box 1,029 img/s (2.6x),
# torchvision + box 433 img/s. Against full decode the draft differs by 1.4 grey levels on average (max 29 on
# noise-textured edges): the DCT's reduction is a sharper low-pass than the bicubic filter; the box alone by 0.03.
DECODER = "pil-draft-box-1"

# Images per task and per progress record: 512 ImageNet JPEGs are ~0.5 s of one core at size 64, so a killed build
# loses under a second per worker, the progress file gets a few lines a second, and a task's file list is ~50 kB.
CHUNK = 512
# A build of fewer images takes about a second and is not announced, so a bad file's error stays the only line.
ANNOUNCE_MIN = 2048


@dataclass
class Plan:
    """What to decode: for each image a name for messages and where its bytes are, plus labels and classes.

    Each `sources` entry is a file path (str), (path, offset, length) for a member of an uncompressed tar, the bytes
    themselves, or (archive index, ordinal) for a member of the compressed archive `archives[index]`, read in order by
    the main process (such members must come in ascending (archive, ordinal) order).
    """

    names: list[str]
    sources: list
    labels: np.ndarray | None
    classes: list[str]
    archives: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- decoding one image

SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(img: Image.Image, where: str) -> Image.Image:
    """8-bit RGB from any Pillow mode, scaling 16-bit grey down instead of clipping it.

    Pillow's convert('RGB') clips 16-bit grey (PNG opens as I;16; 16-bit PGM as I, rescaled by Pillow to 0..65535
    whatever its maxval) at 255: 99.6% of a 0..65535 gradient came out white. 16-bit RGB/RGBA/grey+alpha PNGs are
    already read as 8 bits by Pillow, keeping the high byte; grey keeps the high byte too, so every 8-bit level
    covers 256 of the 65536 values, and grey and colour 16-bit files agree.
    """
    if img.mode in SIXTEEN_BIT_GREY:
        grey = np.asarray(img)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise SelfSupError(f"image {where} holds 32-bit integer pixels (range {grey.min()}..{grey.max()}); "
                               "convert it to 8 or 16 bits")
        return Image.fromarray((grey.astype(np.uint32) >> 8).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def resized(w: int, h: int, size: int) -> tuple[int, int]:
    """The size an image of w x h takes when its shorter side is resized to `size`."""
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def resize_center_crop(img: Image.Image, size: int, original: tuple[int, int] | None = None) -> Image.Image:
    """Shorter side to `size` (bicubic), centre crop size x size; `original` is the size before a JPEG draft."""
    w0, h0 = original or img.size
    tw, th = resized(w0, h0, size)
    left, top = (tw - size) // 2, (th - size) // 2
    sx, sy = img.size[0] / tw, img.size[1] / th
    # Resampling only the box the crop keeps computes the same filter taps as resizing everything then cropping
    # (the box's pixels still draw on their neighbours outside it); it differs by float rounding (0.03 levels).
    return img.resize((size, size), Image.BICUBIC,
                      box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))


def decode_image(data: bytes, where: str, size: int | None) -> np.ndarray:
    """uint8 (H,W,3) pixels of an encoded image, resized and centre-cropped to size x size when `size` is set."""
    try:
        img = Image.open(io.BytesIO(data))
        if size:
            original = img.size
            img.draft("RGB", resized(*original, size))  # JPEG only (others ignore it); see DECODER
            return np.asarray(resize_center_crop(to_rgb(img, where), size, original), dtype=np.uint8)
        return np.asarray(to_rgb(img, where), dtype=np.uint8)
    except SelfSupError:
        raise
    except UnidentifiedImageError:  # its message names the BytesIO, not the file
        raise SelfSupError(f"cannot read image {where}: not an image format Pillow knows, or damaged; remove or "
                           "replace the file") from None
    except Exception as e:  # noqa: BLE001 — PIL raises many types for a bad file
        raise SelfSupError(f"cannot read image {where}: {e}; remove or replace the file") from None


# --------------------------------------------------------------------------- the workers' side

@dataclass(frozen=True)
class _Job:
    """What every chunk of one build shares."""

    path: str  # the temporary .npy the rows go into
    offset: int  # bytes of its header
    shape: tuple[int, int, int]  # one image
    size: int | None
    skip: bool
    source: str  # for messages
    first: str  # the image that set the shape (when size is None)


def _read(where: str, src, files: dict) -> bytes:
    if isinstance(src, bytes):
        return src
    try:
        if isinstance(src, str):
            with open(src, "rb") as f:
                return f.read()
        path, offset, length = src
        if path not in files:
            files[path] = open(path, "rb")
        f = files[path]
        f.seek(offset)
        data = f.read(length)
    except OSError as e:
        raise unreadable(f"image {where}", e) from None
    if len(data) != length:
        raise SelfSupError(f"archive {path} ends inside {where}; it is truncated: copy it again")
    return data


def _write_rows(job: _Job, first_row: int, rows: np.ndarray) -> None:
    """Write rows into the temporary array through a mapping of their byte range alone, and flush that range, so a
    chunk recorded as done is on disk even if the machine loses power (a kill -9 alone loses nothing)."""
    start = job.offset + first_row * rows[0].nbytes
    aligned = start - start % mmap.ALLOCATIONGRANULARITY
    with open(job.path, "r+b") as f, mmap.mmap(f.fileno(), start - aligned + rows.nbytes, offset=aligned) as mm:
        mm[start - aligned:] = rows.tobytes()
        mm.flush()


def _decode_chunk(job: _Job, first_row: int, entries: list[tuple[str, object]]) -> list[tuple[int, str, str]]:
    """Decode one chunk into its rows of the temporary array; returns the rows skipped as (row, name, reason)."""
    rows = np.zeros((len(entries), *job.shape), dtype=np.uint8)
    skipped, files = [], {}
    try:
        for i, (where, src) in enumerate(entries):
            try:
                img = decode_image(_read(where, src, files), where, job.size)
            except SelfSupError as e:
                if not job.skip:
                    raise SelfSupError(f"{e}, or set data.bad_images=skip to leave unreadable images out") from None
                skipped.append((first_row + i, where, str(e)))
                continue
            if img.shape != job.shape:
                raise SelfSupError(
                    f"images in {job.source} differ in size ({where} is {img.shape[1]}x{img.shape[0]}, {job.first} "
                    f"is {job.shape[1]}x{job.shape[0]}); pass data.cache_size=N (alias data.size) to resize them")
            rows[i] = img
    finally:
        for f in files.values():
            f.close()
    _write_rows(job, first_row, rows)
    return skipped


# --------------------------------------------------------------------------- the main process: scheduling

def _chunks(n: int) -> int:
    return (n + CHUNK - 1) // CHUNK


def _streamed(src) -> bool:
    return isinstance(src, tuple) and len(src) == 2


def _payloads(plan: Plan, todo: list[int]) -> Iterator[tuple[int, list[tuple[str, object]]]]:
    """(chunk, entries) for each chunk to do, in order; members of compressed archives come with their bytes, read
    here front to back (the members of chunks already done are passed over without being decoded)."""
    n = len(plan.names)
    wanted: dict[int, list[int]] = {}
    for k in todo if plan.archives else ():
        for src in plan.sources[k * CHUNK:(k + 1) * CHUNK]:
            if _streamed(src):
                wanted.setdefault(src[0], []).append(src[1])
    # Generators open their archive on first use and close it after its last wanted member: one open at a time.
    streams = {archive: stream_tar(plan.archives[archive], ordinals) for archive, ordinals in wanted.items()}
    for k in todo:
        entries = []
        for i in range(k * CHUNK, min(n, (k + 1) * CHUNK)):
            src = plan.sources[i]
            entries.append((plan.names[i], next(streams[src[0]]) if _streamed(src) else src))
        yield k, entries


def default_workers() -> int:
    """One process per core this process may run on (the affinity mask: a container's or job's share, not the
    machine's cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _context():
    # fork on Linux: workers start in milliseconds, inherit the decoder as loaded, and a script without an
    # `if __name__ == "__main__"` guard is not run again in each worker (spawn and forkserver import __main__).
    # They run only Pillow and numpy, never torch, so the parent's threads hold nothing they wait on.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)


class _Interrupted(SelfSupError):
    """The build stopped for a reason outside the source (a decoding process died): what is done stays, to resume."""


def _run(plan: Plan, job: _Job, todo: list[int], workers: int, done: Callable[[int, list], None]) -> None:
    """Decode the chunks `todo`, calling done(chunk, skipped) in the main process as each finishes."""
    payloads = _payloads(plan, todo)
    if workers <= 1:
        for k, entries in payloads:
            done(k, _decode_chunk(job, k * CHUNK, entries))
        return
    # A process pool that notices a worker killed from outside (the out-of-memory killer): multiprocessing.Pool
    # would wait forever for that worker's chunk.
    pool = ProcessPoolExecutor(workers, mp_context=_context())
    pending: dict = {}

    def collect(finished) -> None:
        for future in finished:
            k = pending.pop(future)
            try:
                skipped = future.result()
            except BrokenProcessPool:
                raise _Interrupted(f"a decoding process of {job.source} died (out of memory?); run again to resume, "
                                   "with fewer data.workers if memory is short") from None
            done(k, skipped)

    try:
        for k, entries in payloads:
            # Two chunks per worker in flight keep every worker busy and bound what the main process holds (the
            # bytes of the archive members it read).
            while len(pending) >= 2 * workers:
                collect(wait(pending, return_when=FIRST_COMPLETED).done)
            pending[pool.submit(_decode_chunk, job, k * CHUNK, entries)] = k
        while pending:
            collect(wait(pending, return_when=FIRST_COMPLETED).done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- resumable temporary files

def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _header(key: str, n: int, shape: tuple[int, int, int]) -> dict:
    return {"key": key, "images": n, "shape": list(shape), "chunk": CHUNK, "decoder": DECODER}


def _resume(files: cache.EntryFiles, header: dict) -> dict[int, list] | None:
    """The chunks a killed build of the same entry finished ({chunk: skipped rows}); None when there is nothing to
    continue (no progress file, another layout, a damaged or resized array, or a compaction that was cut short)."""
    try:
        lines = files.progress.read_text().splitlines()
        if not lines or json.loads(lines[0]) != header:
            return None
        partial = np.load(files.partial, mmap_mode="r")
        ok = partial.dtype == np.uint8 and partial.shape == (header["images"], *header["shape"])
        del partial
    except (OSError, ValueError):
        return None
    if not ok:
        return None
    done = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except ValueError:
            break  # the line being written when the build was killed
        if record.get("compacting"):
            return None
        done[int(record["chunk"])] = [tuple(s) for s in record["skipped"]]
    return done


def _start(files: cache.EntryFiles, header: dict, what: str) -> int:
    """A fresh temporary array, its disk space reserved, and progress file; returns the array's header size."""
    for path in (files.partial, files.progress):
        path.unlink(missing_ok=True)
    array = np.lib.format.open_memmap(files.partial, mode="w+", dtype=np.uint8,
                                      shape=(header["images"], *header["shape"]))
    offset = array.offset
    del array
    # Rows arrive through memory maps, and a write into a sparse file on a full disk is a SIGBUS that kills the
    # process, not an error; reserving every block now turns a disk that fills up meanwhile into this one-line
    # error. It costs nothing where the filesystem has fallocate (2 GB in 6 ms on this machine's ext4).
    if hasattr(os, "posix_fallocate"):
        fd = os.open(files.partial, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                files.partial.unlink(missing_ok=True)
                raise SelfSupError(f"not enough disk space for the decode cache of {what} in {files.partial.parent}; "
                                   "free some space, set SELFSUP_CACHE to a larger disk, or lower data.cache_size")
            # Other errors: a filesystem that cannot reserve space; the file stays sparse.
        finally:
            os.close(fd)
    files.progress.write_text(json.dumps(header) + "\n")
    return offset


def _set_rows(path: Path, rows: int) -> None:
    """Rewrite a uint8 .npy's header for `rows` images (the header keeps its length, so the data stays in place) and
    cut the file there."""
    array = np.load(path, mmap_mode="r")
    shape, offset, row_bytes = array.shape, array.offset, array[0].nbytes if len(array) else 0
    del array
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % ((rows, *shape[1:]),)
    with open(path, "r+b") as f:
        major, _ = np.lib.format.read_magic(f)
        prefix = 10 if major == 1 else 12  # magic, version, then a 2- or 4-byte header length
        f.seek(prefix)
        f.write((header.ljust(offset - prefix - 1) + "\n").encode("latin1"))
        f.truncate(offset + rows * row_bytes)


def _compact(path: Path, skipped: list[int]) -> int:
    """Move the kept rows down over the skipped ones, in place; returns the number kept."""
    array = np.load(path, mmap_mode="r+")
    n = len(array)
    bounds = sorted(set(skipped)) + [n]
    dst = bounds[0]
    for gap, end in zip(bounds[:-1], bounds[1:]):
        for src in range(gap + 1, end, 1024):
            m = min(1024, end - src)
            array[dst:dst + m] = array[src:src + m]  # numpy copies through a buffer when the two overlap
            dst += m
    array.flush()
    del array
    _set_rows(path, dst)
    return dst


# --------------------------------------------------------------------------- the build

def _first_shape(plan: Plan, size: int | None, skip: bool, what: str) -> tuple[tuple[int, int, int], str]:
    """The shape every image must have, and the image it comes from (the first readable one when size is None)."""
    if size:
        return (size, size, 3), ""
    files: dict = {}
    streams = {a: stream_tar(path, [src[1] for src in plan.sources if _streamed(src) and src[0] == a])
               for a, path in enumerate(plan.archives)}
    try:
        for name, src in zip(plan.names, plan.sources):
            data = next(streams[src[0]]) if _streamed(src) else None  # outside the try: a damaged archive stops
            try:
                return decode_image(_read(name, src, files) if data is None else data, name, None).shape, name
            except SelfSupError:
                if not skip:
                    raise
    finally:
        for f in files.values():
            f.close()
        for stream in streams.values():
            stream.close()
    raise SelfSupError(f"none of the {len(plan.names)} images of {what} can be read; data.bad_images=error names the "
                       "first")


def _check_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise SelfSupError(f"not enough disk space for the decode cache of {what}: it needs {_gb(needed)} more but "
                           f"{folder} has {_gb(free)} free; free some space, set SELFSUP_CACHE to a larger disk, "
                           "or lower data.cache_size")


def _build(files: cache.EntryFiles, key: str, plan: Plan, size: int | None, skip: bool, workers: int,
           what: str, where: str) -> tuple[list[tuple[int, str, str]], int]:
    """Decode `plan` into files.partial, resuming a killed build of the same entry; returns (skipped, kept rows)."""
    n = len(plan.names)
    shape, first = _first_shape(plan, size, skip, what)
    header = _header(key, n, shape)
    total = n * int(np.prod(shape))
    done = _resume(files, header)
    # What a resumed build has written is on disk already (the array is sparse until rows arrive).
    allocated = 0 if done is None else getattr(files.partial.stat(), "st_blocks", 0) * 512
    todo = [k for k in range(_chunks(n)) if k not in (done or {})]
    left = sum(min(n, (k + 1) * CHUNK) - k * CHUNK for k in todo)
    workers = max(1, min(workers, len(todo)))
    resuming = f"; resuming: {n - left:,} already done" if done else ""
    if n >= ANNOUNCE_MIN or done:
        say(f"decoding {n:,} image{'s' if n != 1 else ''} of {what} at {shape[1]}x{shape[0]} into the cache: "
            f"{_gb(total)} in {where}, {workers} process{'es' if workers > 1 else ''}{resuming}")
    _check_space(files.partial.parent, max(0, total - allocated), what)
    if done is None:
        done = {}
        offset = _start(files, header, what)
    else:
        offset = np.load(files.partial, mmap_mode="r").offset
    job = _Job(str(files.partial), offset, shape, size, skip, what, first)
    with open(files.progress, "a") as log, Progress(left, f"decoding {what} into the cache", unit="img") as bar:
        def finished(k: int, skipped: list) -> None:
            done[k] = skipped
            # Flushed, not fsync'ed: a killed process loses nothing the kernel has; after a power cut a lost line
            # only means that chunk is decoded again (its rows were flushed by the worker before this line).
            log.write(json.dumps({"chunk": k, "skipped": skipped}) + "\n")
            log.flush()
            bar.update(min(n, (k + 1) * CHUNK) - k * CHUNK)

        try:
            _run(plan, job, todo, workers, finished)
        except SelfSupError as e:
            if not isinstance(e, _Interrupted):
                # A problem in the source (an unreadable image, mixed sizes): the next try follows a change by the
                # user (the file removed, data.bad_images or data.cache_size set), which is another entry, so the
                # rows decoded so far would only be left behind. An interruption (Ctrl-C, kill, a dead worker, a full
                # disk) keeps them to resume.
                files.partial.unlink(missing_ok=True)
                files.progress.unlink(missing_ok=True)
            raise
        skipped = sorted(s for chunk in done.values() for s in chunk)
        kept = n
        if skipped:
            if len(skipped) == n:
                raise SelfSupError(f"none of the {n} images of {what} can be read, e.g. {skipped[0][2]}")
            log.write(json.dumps({"compacting": True}) + "\n")
            log.flush()
            kept = _compact(files.partial, [row for row, _, _ in skipped])
    return skipped, kept


def _lock(path: Path):
    """An exclusive lock on `path`, held until the returned file is closed (where flock exists), and whether it
    had to wait for another holder."""
    handle = open(path, "a")
    try:
        import fcntl
    except ImportError:  # Windows: one build at a time is the user's business
        return handle, False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return handle, False
    except BlockingIOError:
        say(f"waiting for another process that is decoding into {path.with_suffix('')}")
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle, True


def build_cached(name: str, key: str, plan: Callable[[], Plan], size: int | None, bad_images: str = "error",
                 workers: int | None = None, what: str | None = None, source: str | None = None,
                 ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(images, labels, classes) of a source from its verified cache entry `name`-`key`, building it when absent.

    plan() lists the source (called only on a miss). `what` names it in messages; `source` identifies it across
    changes (see cache.forget_stale). bad_images: "error" stops at the first unreadable image, naming it; "skip"
    leaves unreadable images out and lists them in <entry>.skipped.txt. workers: processes (None: one per core).
    """
    skip = bad_images == "skip"
    workers = default_workers() if workers is None else int(workers)
    what = what or name
    found = cache.lookup(name, key)
    if found is not None:
        return found
    root = cache.cache_dir() / "arrays"
    files = cache.entry_files(root / f"{name}-{key}")
    damaged = files.meta.exists()  # the lookup said so in a warning; once is enough
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock, waited = _lock(files.lock)
    except OSError as e:
        cache.warn_unwritable(root, e)
        return _build_uncached(plan(), size, skip, workers, what)
    with lock:
        if waited or (not damaged and files.meta.exists()):  # built meanwhile by the process we waited for
            found = cache.lookup(name, key)
            if found is not None:
                return found
        if source is not None:
            cache.forget_stale(root, name, source, key)
            cache.remember(root, name, source, key)  # now: a source changed before this build ends frees its files
        p = plan()
        try:
            skipped, _ = _build(files, key, p, size, skip, workers, what, str(root))
        except OSError as e:  # the source's own read errors are SelfSupErrors already: this is the cache folder
            raise SelfSupError(f"writing the decode cache in {root} failed ({e.strerror or e}); fix that (or set "
                               "SELFSUP_CACHE to another folder) and load again: the build resumes where it stopped"
                               ) from None
        labels, names = _kept(p, skipped)
        try:
            cache.finish(files, labels, p.classes, names)
        except OSError as e:
            cache.warn_unwritable(root, e)
            images = np.load(files.partial if files.partial.exists() else files.images, mmap_mode="r")
            return images, labels, p.classes
        files.progress.unlink(missing_ok=True)
        # Safe to remove now: whoever waits on it, or comes later, finds the finished entry before building.
        files.lock.unlink(missing_ok=True)
    _say_skipped(skipped, what, files.skipped)
    # The memory map of the finished entry, as a later run gets it (finish checked what it wrote).
    return np.load(files.images, mmap_mode="r"), labels, p.classes


def _kept(plan: Plan, skipped: list[tuple[int, str, str]]) -> tuple[np.ndarray | None, list[str]]:
    """The labels of the images kept, and the lines of the skipped list."""
    labels = plan.labels
    if skipped and labels is not None:
        keep = np.ones(len(labels), dtype=bool)
        keep[[row for row, _, _ in skipped]] = False
        labels = labels[keep]
    return labels, [f"{name}\t{reason}" for _, name, reason in skipped]


def _say_skipped(skipped: list, what: str, listing: Path | None) -> None:
    if skipped:
        where = f"; they are listed in {listing}" if listing else f", e.g. {skipped[0][1]}"
        say(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''} of {what}{where}")


def _build_uncached(plan: Plan, size: int | None, skip: bool, workers: int, what: str
                    ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """The same build in a temporary folder that is gone when it returns (the array stays mapped until dropped)."""
    with tempfile.TemporaryDirectory(prefix="selfsup-decode-") as tmp:
        files = cache.entry_files(Path(tmp) / "entry")
        skipped, _ = _build(files, "uncached", plan, size, skip, workers, what, f"{tmp} (not kept)")
        images = np.load(files.partial, mmap_mode="r")  # still readable once its file is deleted (POSIX)
    labels, _ = _kept(plan, skipped)
    _say_skipped(skipped, what, None)
    return images, labels, plan.classes

"""The training images as the loop and the methods see them: resident on the device, or streamed from the host.

A split that fits `data.device_budget_gb` is copied to the device once, as it always was (a batch is then one
index_select). A larger one stays where it is, normally the memory-mapped decode cache, and every batch is gathered
there: the rows are read in sorted order (locality in the file), put back in the batch's order, copied through
pinned memory with a non-blocking transfer, by a background thread a few batches ahead. Both modes hand the methods
the same uint8 (B,H,W,3) rows, so training is bit-identical either way (tests/test_streaming.py).

Rows are gathered from the cache's memory map by numpy (a C loop that releases the GIL, so the training thread
keeps running): on 2 CPU cores, 0.36 ms per batch of 512 random 32x32 rows against 2.2 ms for one pread(2) per row
from Python, and 1.1 against 6.7 ms for 256 rows of 112x112. Pages read through a map count in the process's
resident set until unmapped, so after every RELEASE_BYTES read the map's pages are dropped from this process
(madvise MADV_DONTNEED; the kernel's page cache keeps them): a streamed run's memory stays flat as the dataset grows.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import uuid
from typing import Iterable, Iterator

import numpy as np
import torch

from selfsup.errors import SelfSupError

DEFAULT_DEVICE_SHARE = 0.5  # of the free device memory (CUDA), for the resident training split
DEFAULT_RAM_SHARE = 0.25  # of the available RAM (CPU)
PREFETCH = 3  # batches read ahead by the streaming thread
RELEASE_BYTES = 64 * 2**20  # read through the memory map between two releases of its pages from the resident set


def available_ram() -> int:
    """Bytes of RAM available to new allocations (MemAvailable), or the total when /proc is absent."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_budget(budget_gb: float | None, device: torch.device) -> int:
    """The bytes of training images that may live on `device`: data.device_budget_gb, else a share of what is free."""
    if budget_gb is not None:
        return int(budget_gb * 2**30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(DEFAULT_DEVICE_SHARE * free)
    return int(DEFAULT_RAM_SHARE * available_ram())


class Images:
    """Training images, uint8 (N,H,W,3): on the device (`resident`) or read from host memory per batch.

    Indexing with a slice, an int or an index tensor gives those rows on the device as a tensor, in either mode, so
    hooks that walk the data in chunks (`images[i:i + 512]`) work unchanged; `chunks` and `Prefetcher` read ahead.

    Args:
        host: the images in host memory or a memory-mapped cache file (uint8 N,H,W,3).
        device: where batches go.
        resident: copy everything to the device now (True) or stream batches (False).
    """

    def __init__(self, host: np.ndarray | torch.Tensor, device: torch.device | str, resident: bool):
        self.device = torch.device(device)
        self.resident = resident
        self.host = host
        self.tensor: torch.Tensor | None = None
        if isinstance(host, torch.Tensor):
            self.tensor = host.to(self.device)
            self.resident = True
        elif resident:
            self.tensor = _to_device(host, self.device)
        self.shape = tuple(self.tensor.shape if self.tensor is not None else host.shape)
        # np.memmap's mmap object, whose pages a streaming read releases (where the system has madvise)
        self._map = getattr(host, "_mmap", None) if not self.resident and hasattr(mmap, "MADV_DONTNEED") else None
        self._read = 0  # bytes read through the map since its pages were last released
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def dim(self) -> int:
        return len(self.shape)

    # ------------------------------------------------------------------------------------------------ host reads

    def _pin(self) -> bool:
        return self.device.type == "cuda"

    def read_host(self, rows: np.ndarray) -> torch.Tensor:
        """Rows (any order, repeats allowed) as a host tensor in that order (pinned when the device is CUDA)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = torch.empty((len(rows), *self.shape[1:]), dtype=torch.uint8, pin_memory=self._pin())
        target = out.numpy()
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"image index {int(rows.max() if rows.max() >= len(self) else rows.min())} is out of "
                             f"range for {len(self)} training images")
        perm = np.argsort(rows, kind="stable")
        ordered = rows[perm]
        if np.all(perm == np.arange(len(rows))):  # already ascending (a chunk of a pass): read straight into place
            self._read_sorted(ordered, target)
            return out
        staged = np.empty_like(target)
        self._read_sorted(ordered, staged)
        target[perm] = staged  # back into the batch's order
        return out

    def _read_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        if np.all(np.diff(rows) == 1):  # one run of consecutive rows (no repeats): a slice
            out[:] = self.host[int(rows[0]):int(rows[-1]) + 1]
        else:
            np.take(self.host, rows, axis=0, out=out)
        if self._map is not None:
            with self._lock:
                self._read += out.nbytes
                if self._read >= RELEASE_BYTES:
                    self._read = 0
                    self._map.madvise(mmap.MADV_DONTNEED)  # the page cache keeps the pages; only this mapping drops

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        return host.to(self.device, non_blocking=True) if self.device.type != "cpu" else host

    # ---------------------------------------------------------------------------------------------- device rows

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """The rows `index` (a 1-d integer tensor, on any device) on the device, in that order."""
        if self.tensor is not None:
            return self.tensor.index_select(0, index.to(self.tensor.device))
        return self._to_device(self.read_host(index.cpu().numpy()))

    def __getitem__(self, key) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[key]
        if isinstance(key, int):
            if not -len(self) <= key < len(self):
                raise IndexError(f"image index {key} is out of range for {len(self)} training images")
            return self.gather(torch.tensor([key % len(self)]))[0]
        if isinstance(key, slice):
            return self.gather(torch.arange(*key.indices(len(self))))
        if isinstance(key, (torch.Tensor, np.ndarray, list)):
            return self.gather(torch.as_tensor(key).reshape(-1))
        raise SelfSupError(f"training images are indexed by a slice, an int or an index tensor, got {type(key)}")

    def chunks(self, start: int, stop: int, size: int) -> Iterator[torch.Tensor]:
        """Consecutive rows [start, stop) in chunks of `size`, on the device, read ahead in the background."""
        ranges = [torch.arange(i, min(i + size, stop)) for i in range(start, stop, size)]
        if self.tensor is not None:
            for r in ranges:
                yield self.tensor[int(r[0]):int(r[-1]) + 1]
            return
        yield from Prefetcher(self, ranges)

    def close(self) -> None:
        """Drop the pages this streaming read mapped (nothing to do for resident images)."""
        if self._map is not None and self._read:
            with self._lock:
                self._read = 0
                self._map.madvise(mmap.MADV_DONTNEED)


def _to_device(host: np.ndarray, device: torch.device, chunk_bytes: int = 256 * 2**20) -> torch.Tensor:
    """A host array (a memory map, maybe) as one tensor on `device`, copied in chunks: never a whole second copy in
    RAM on the way to a GPU."""
    if device.type == "cpu":
        return torch.from_numpy(np.array(host))  # resident on the CPU means in RAM: one copy of the map
    out = torch.empty(host.shape, dtype=torch.uint8, device=device)
    rows = max(1, chunk_bytes // max(1, int(np.prod(host.shape[1:]))))
    for start in range(0, len(host), rows):
        out[start:start + rows] = torch.from_numpy(np.array(host[start:start + rows])).to(device)
    return out


def host_buffer(shape: tuple[int, ...], dtype: torch.dtype, share: float = DEFAULT_RAM_SHARE) -> torch.Tensor:
    """An uninitialised host tensor: in RAM when it fits `share` of the available RAM, else backed by a file in the
    cache folder, its space reserved up front and its name removed at once (the mapping keeps it until the tensor
    is freed), so features of ImageNet-size splits need neither that much RAM nor a clean-up."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
    if nbytes <= share * available_ram():
        return torch.empty(shape, dtype=dtype)
    from selfsup.data.cache import cache_dir

    folder = cache_dir() / "spill"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}-{uuid.uuid4().hex}.npy"
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np_dtype, shape=shape)
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)  # a full disk fails here, not mid-pass
    except OSError as e:
        raise SelfSupError(f"cannot keep {nbytes / 2**30:.1f} GB of features in {folder} ({e.strerror or e}); free "
                           "disk space there or set SELFSUP_CACHE to a larger disk") from None
    finally:
        path.unlink(missing_ok=True)
    return torch.from_numpy(array)


def placed(host, device: torch.device | str, budget_gb: float | None = None) -> Images:
    """`host` images on the device when they fit the budget (data.device_budget_gb; None: a share of what is free),
    else streamed from where they are."""
    device = torch.device(device)
    if isinstance(host, (Images, torch.Tensor)):
        return as_images(host, device)
    return Images(host, device, resident=int(np.prod(host.shape, dtype=np.int64)) <= device_budget(budget_gb, device))


def gather_batches(images: Images, index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The rows of each index set in turn, on the device: gathered there when resident, else read ahead of use by
    a Prefetcher."""
    if images.resident:
        for index in index_batches:
            yield images.gather(index)
        return
    rows = Prefetcher(images, [index.cpu() for index in index_batches])
    try:
        yield from rows
    finally:
        rows.close()


def as_images(images, device: torch.device | str | None = None) -> Images:
    """An Images from a device tensor or host array (kept resident), or the Images itself."""
    if isinstance(images, Images):
        return images
    if isinstance(images, torch.Tensor):
        return Images(images, device or images.device, True)
    return Images(np.asarray(images), device or "cpu", True)


def chunks(images, start: int, stop: int, size: int) -> Iterator[torch.Tensor]:
    """Rows [start, stop) of a tensor or an Images in chunks of `size` (read ahead when streamed)."""
    if isinstance(images, Images):
        yield from images.chunks(start, stop, size)
        return
    for i in range(start, stop, size):
        yield images[i:min(i + size, stop)]


class Prefetcher:
    """The rows of each index set in `batches`, in order, gathered by a background thread `depth` sets ahead.

    The thread reads the host rows (pinned on CUDA) and starts their non-blocking copy on a stream of its own; the
    consumer's stream waits on that copy's event before using the batch. Closing (or leaving the loop early) stops
    the thread. An error in the thread is raised in the consumer at the batch it belongs to.
    """

    _END = object()

    def __init__(self, images: Images, batches: Iterable[torch.Tensor], depth: int = PREFETCH):
        self.images = images
        self.batches = list(batches)
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.cuda = images.device.type == "cuda"
        self.stream = torch.cuda.Stream(images.device) if self.cuda else None
        self.thread = threading.Thread(target=self._work, name="selfsup-prefetch", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for index in self.batches:
                if self.stop.is_set():
                    return
                host = self.images.read_host(index.cpu().numpy())
                if self.cuda:
                    with torch.cuda.stream(self.stream):
                        dev = host.to(self.images.device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(self.stream)
                    item = (dev, event)
                else:
                    item = (host, None)
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 — handed to the consumer, which raises it in its own thread
            self._put(e)

    def __iter__(self) -> Iterator[torch.Tensor]:
        try:
            while True:
                item = self.queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.images.device)
                    current.wait_event(event)
                    batch.record_stream(current)  # its memory is not reused before the consumer's work is done
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        while True:  # unblock a thread waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=10)


__all__ = ["Images", "Prefetcher", "as_images", "chunks", "placed", "gather_batches", "device_budget", "available_ram",
           "host_buffer"]

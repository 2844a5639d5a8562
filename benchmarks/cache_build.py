"""Benchmark: the parallel cache build against one process decoding the same JPEGs with PIL, in one run.

    python benchmarks/cache_build.py --dir /data/fabricated            # 200,000 JPEGs of 96-256 px, size 64
    python benchmarks/cache_build.py --dir /tmp/fab --n 2000           # a quick check

It fabricates N JPEGs of mixed sizes (96-256 px a side, smooth colour fields with noise, quality 90) in class
folders under DIR/n<N>/ (reused when already there), reads them all once so both contenders find them in the page
cache, then times

  (a) load_source("folder:...", size=S, workers=W): the cache build (scan, fingerprint, W processes decoding with
      JPEG draft into the memory-mapped array, checksum and metadata), into an empty cache folder;
  (b) one process, PIL: open, full decode, RGB, bicubic resize of the shorter side to S, centre crop, into an array
      (what a per-sample loader does for each image),

and prints and writes (under --out) images/s of each and their ratio, with the machine's core count and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfsup.data import load_source  # noqa: E402
from selfsup.data.build import DECODER, default_workers  # noqa: E402

CLASSES = 100


def _fabricate(args: tuple[Path, int, int]) -> None:
    """Images [lo, hi) of the set: image i is c<i mod 100>/<i>.jpg, its size and pixels seeded by i."""
    folder, lo, hi = args
    for i in range(lo, hi):
        path = folder / f"c{i % CLASSES:03d}" / f"{i:07d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        w, h = (int(v) for v in rng.integers(96, 257, 2))
        field = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(field).astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
        tmp = path.with_suffix(".tmp")
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(tmp, "JPEG", quality=90)
        os.replace(tmp, path)  # a fabrication cut short never leaves half a JPEG behind


def fabricate(root: Path, n: int, workers: int) -> Path:
    """DIR/n<N>/ with N JPEGs in class folders; an existing complete set is reused as it is."""
    folder = root / f"n{n}"
    marker = folder / "fabricated.json"
    if marker.exists() and json.loads(marker.read_text()).get("n") == n:
        print(f"reusing {n:,} fabricated JPEGs in {folder}")
        return folder
    for c in range(CLASSES):
        (folder / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    step = 1000
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_fabricate, [(folder, lo, min(n, lo + step)) for lo in range(0, n, step)]))
    marker.write_text(json.dumps({"n": n, "sizes": "96-256", "quality": 90}))
    print(f"fabricated {n:,} JPEGs in {folder} in {time.perf_counter() - t0:.0f} s")
    return folder


def pil_single_process(files: list[str], size: int) -> np.ndarray:
    """(b): full decode, resize of the shorter side (bicubic), centre crop, one image after the other."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(files):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        out[i] = np.asarray(img.crop((left, top, left + size, top + size)))
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, type=Path, help="where the fabricated JPEGs are (or go): DIR/n<N>/")
    p.add_argument("--n", type=int, default=200_000, help="number of JPEGs")
    p.add_argument("--size", type=int, default=64, help="data.cache_size of the build")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core)")
    p.add_argument("--cache", type=Path, default=None, help="folder for the timed cache (default: a temporary one)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    cores = default_workers()
    workers = args.workers or cores
    folder = fabricate(args.dir.expanduser(), args.n, cores)
    files = sorted(str(f) for f in folder.glob("c*/*.jpg"))
    assert len(files) == args.n, f"{folder} holds {len(files)} JPEGs, not {args.n}"
    megabytes = sum(len(Path(f).read_bytes()) for f in files) / 1e6  # both contenders read from the page cache

    cache = Path(tempfile.mkdtemp(prefix="selfsup-bench-cache-", dir=args.cache))
    os.environ["SELFSUP_CACHE"] = str(cache)
    try:
        t0 = time.perf_counter()
        built = load_source(f"folder:{folder}", size=args.size, workers=workers)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = load_source(f"folder:{folder}", size=args.size, workers=workers)
        hit_s = time.perf_counter() - t0
        assert built.images.shape == again.images.shape == (args.n, args.size, args.size, 3)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    single = pil_single_process(files, args.size)
    single_s = time.perf_counter() - t0
    # The two decoders differ (JPEG draft against full decode): how much, for the record.
    diff = float(np.abs(single[: min(2000, args.n)].astype(np.int16)
                        - np.asarray(built.images[: min(2000, args.n)]).astype(np.int16)).mean())

    date = time.strftime("%Y-%m-%d")
    result = {
        "date": date, "device": f"cpu: {cores} cores ({cpu_name()})", "cores": cores, "workers": workers,
        "images": args.n, "size": args.size, "jpeg_mb": round(megabytes, 1), "decoder": DECODER,
        "cache_build_s": round(build_s, 2), "cache_build_img_s": round(args.n / build_s, 1),
        "cache_hit_s": round(hit_s, 3),
        "pil_single_process_s": round(single_s, 2), "pil_single_process_img_s": round(args.n / single_s, 1),
        "speedup": round(single_s / build_s, 2), "mean_abs_diff_vs_full_decode": round(diff, 3),
    }
    rows = [
        ("cache build (selfsup, parallel, JPEG draft)", build_s, workers),
        ("PIL one process (full decode + resize + crop)", single_s, 1),
    ]
    lines = [
        f"# Cache build: {args.n:,} JPEGs (96-256 px) to {args.size}x{args.size}, {date}", "",
        f"Device: CPU, {cores} cores ({cpu_name()}). Python {platform.python_version()}, decoder {DECODER}. "
        f"The JPEGs ({megabytes:,.0f} MB) were read once before timing, so both read from the page cache. "
        f"The cache build includes the folder scan, fingerprint, checksum and metadata; a second load (a cache hit) "
        f"took {hit_s:.2f} s.", "",
        "| contender | processes | seconds | images/s |", "|---|---:|---:|---:|",
        *[f"| {name} | {procs} | {s:.2f} | {args.n / s:,.0f} |" for name, s, procs in rows], "",
        f"Speed-up of the cache build over one PIL process: **{single_s / build_s:.2f}x** "
        f"({single_s / build_s / workers:.2f}x per process). Pixels differ from the full decode by {diff:.2f} grey "
        "levels on average (the JPEG draft's DCT reduction against a bicubic filter).", "",
    ]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cache_build-{cores}cpu-{date}"
    Path(f"{stem}.md").write_text("\n".join(lines))
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
    main()

"""Streamed against resident training: epoch time, and peak memory as the dataset grows.

    python benchmarks/streaming.py                        # the CPU measurement (about 15 minutes on 2 cores)
    python benchmarks/streaming.py --device cuda          # on a GPU: the *_cifar10_fast.yaml recipes
    python benchmarks/streaming.py --tiny                 # seconds-long sizes on digits (the tests run it)

1. Epoch time: SimCLR and SeLa on the CIFAR-10 JPEG copy, each trained once with the split on the device
   (resident, the default budget) and once with `data.device_budget_gb=0` (streamed from the decode cache a few
   batches ahead), alternately, `--repeats` times; the time of the whole fit (SeLa's labelling pass included) and
   of its training epochs. On the CPU SimCLR's epoch is cut to `--simclr-samples` images, SeLa's is the whole split
   (it keeps a label per image).
2. On a GPU (`--r50-sizes 112,160`): SimCLR with a ResNet-50 (ImageNet stem) on CIFAR-10 decoded at 112 and
   160 px (1.9 and 3.8 GB of uint8), resident and streamed; images/s of the second epoch.
3. Peak memory: SimCLR for a few steps on N = 50,000 and 200,000 images (CIFAR-10 repeated with shifts, as a
   memory-mapped .npy like the decode cache's), resident and streamed; the peak resident set size of the process.

Every measurement is a fresh process (`--child`), so one's memory never shows in another's. Results go to
`<out>/streaming-<device name>-<date>.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project itself, installed or not
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def child(spec: dict) -> dict:
    """One training run in this process, as `spec` says; its timings and peak memory."""
    import numpy as np

    from selfsup import fit, load_config
    from selfsup.data import ImageArray
    from selfsup.engine import read_metrics

    cfg = load_config(spec["recipe"], spec["overrides"])
    data = None
    if spec.get("npy"):
        data = ImageArray("fabricated", np.load(spec["npy"], mmap_mode="r"))
    t0 = time.time()
    fit(None, data, cfg, spec["out"], force=True, progress=False)
    wall = time.time() - t0
    metrics = read_metrics(spec["out"])
    return {"wall_seconds": round(wall, 2), "epoch_seconds": [m["epoch_seconds"] for m in metrics],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"streaming bench: a run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fabricate(n: int, folder: Path, source: str) -> Path:
    """n images as a .npy (the decode cache's format): the source's training images repeated, each repeat shifted
    by a few pixels so no two copies are the same bytes."""
    import numpy as np

    from selfsup.data import load_source

    path = folder / f"images-{n}.npy"
    if path.exists():
        return path
    base = np.asarray(load_source(source, "train").images)
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint8,
                                    shape=(n, *base.shape[1:]))
    for start in range(0, n, len(base)):
        k = start // len(base)
        part = np.roll(base, shift=(k % 5, k // 5 % 5), axis=(1, 2))
        out[start:start + len(base)] = part[:n - start]
    out.flush()
    del out
    os.replace(path.with_suffix(".tmp.npy"), path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--work", default=str(ROOT / "runs" / "streaming_bench"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--simclr-samples", type=int, default=12800)
    p.add_argument("--sizes", default=None, help="images in the memory part (default 50000,200000; --tiny 2000,8000)")
    p.add_argument("--r50-sizes", default=None, help="comma list of px for the ResNet-50 part (cuda default 112,160)")
    p.add_argument("--skip", default="", help="comma list of parts to leave out: epoch, r50, memory")
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gpu = args.device != "cpu"
    source = "digits" if args.tiny else f"folder:{args.data}"
    common = [f"device={args.device}", "eval.knn_every=0", "max_minutes=null", f"data.source={source}",
              "logger=[]", "optim.warmup_epochs=0"]
    if args.tiny:
        common += ["data.size=16", "model.input_size=16", "augment.size=16", "batch_size=64"]
    recipes = {m: str(ROOT / "recipes" / f"{m}_cifar10{'_fast' if gpu else '_cpu'}.yaml") for m in ("simclr", "sela")}
    per_method = {
        "simclr": ["epochs=2" if gpu else "epochs=1"]
        + ([] if gpu else [f"data.samples_per_epoch={64 * 8 if args.tiny else args.simclr_samples}"]),
        "sela": ["epochs=2" if gpu else "epochs=1", "sela.label_steps=1"]
        + (["sela.num_clusters=10", "sela.num_heads=2"] if args.tiny else []),
    }
    name = "cpu"
    if gpu:
        import torch

        name = torch.cuda.get_device_name().lower().replace(" ", "-")
    results: dict = {"device": name, "date": date.today().isoformat(), "cores": os.cpu_count(),
                     "epoch": {}, "memory": {}}
    skip = set(filter(None, args.skip.split(",")))
    if "epoch" not in skip:
        for method in ("simclr", "sela"):
            rows = {"resident": [], "streamed": []}
            for r in range(args.repeats):
                for mode in (("resident", "streamed") if r % 2 == 0 else ("streamed", "resident")):
                    budget = [] if mode == "resident" else ["data.device_budget_gb=0"]
                    spec = {"recipe": recipes[method], "overrides": common + per_method[method] + budget,
                            "out": str(work / f"{method}-{mode}")}
                    got = run_child(spec)
                    rows[mode].append(got)
                    print(f"streaming bench: {method} {mode} run {r + 1}: {got}", flush=True)
            results["epoch"][method] = rows
    r50 = args.r50_sizes if args.r50_sizes is not None else ("112,160" if gpu else "")
    if "r50" not in skip and r50:
        samples = 128 if args.tiny else 25600
        for px in [int(v) for v in r50.split(",")]:
            for mode in ("resident", "streamed"):
                budget = [] if mode == "resident" else ["data.device_budget_gb=0"]
                overrides = common + ["epochs=2", f"batch_size={64 if args.tiny else 256}",
                                      f"data.samples_per_epoch={samples}",
                                      "model.backbone=resnet50", "model.cifar_stem=false", f"data.size={px}",
                                      f"model.input_size={px}", f"augment.size={px}"] + budget
                got = run_child({"recipe": recipes["simclr"], "overrides": overrides,
                                 "out": str(work / f"r50-{px}-{mode}")})
                got["images_per_second"] = round(samples / got["epoch_seconds"][-1], 1)
                results.setdefault("r50", {}).setdefault(str(px), {})[mode] = got
                print(f"streaming bench: resnet50 {px} px {mode}: {got}", flush=True)
    if "memory" not in skip:
        sizes = [int(s) for s in (args.sizes or ("2000,8000" if args.tiny else "50000,200000")).split(",")]
        for n in sizes:
            npy = fabricate(n, work, source)
            for mode in ("resident", "streamed"):
                budget = [] if mode == "resident" else ["data.device_budget_gb=0"]
                overrides = common + ["epochs=1", f"data.samples_per_epoch={64 * 4 if args.tiny else 2560}"] + budget
                got = run_child({"recipe": recipes["simclr"], "overrides": overrides, "npy": str(npy),
                                 "out": str(work / f"memory-{n}-{mode}")})
                results["memory"].setdefault(str(n), {})[mode] = got
                print(f"streaming bench: memory N={n} {mode}: {got}", flush=True)
    write(results, Path(args.out))


def _best(rows: list[dict], key: str) -> float:
    values = [r[key] if key == "wall_seconds" else sum(r[key][1:] or r[key]) for r in rows]
    return min(values)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"streaming-{results['device']}-{results['date']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = [f"# Streamed against resident training: {results['device']}, {results['date']}", "",
             f"`{' '.join(['python', 'benchmarks/streaming.py', *sys.argv[1:]])}` ({results['cores']} CPU cores)", ""]
    if results["epoch"]:
        lines += ["## Epoch time (best of the repeats; on a GPU the first epoch, with cuDNN's tuning, is left out)",
                  "", "| method | resident fit s | streamed fit s | streamed / resident | resident epoch s | "
                  "streamed epoch s | streamed / resident |", "|---|---:|---:|---:|---:|---:|---:|"]
        for method, rows in results["epoch"].items():
            rw, sw = _best(rows["resident"], "wall_seconds"), _best(rows["streamed"], "wall_seconds")
            re, se = _best(rows["resident"], "epoch_seconds"), _best(rows["streamed"], "epoch_seconds")
            lines.append(f"| {method} | {rw:.1f} | {sw:.1f} | {sw / rw:.3f}x | {re:.2f} | {se:.2f} | {se / re:.3f}x |")
        lines.append("")
    if results.get("r50"):
        lines += ["## SimCLR, ResNet-50, batch 256, images/s of the second epoch (25,600 images; --tiny: 128)", "",
                  "| px | resident img/s | streamed img/s | streamed / resident (time) |", "|---:|---:|---:|---:|"]
        for px, modes in results["r50"].items():
            r, st = modes["resident"]["images_per_second"], modes["streamed"]["images_per_second"]
            lines.append(f"| {px} | {r:,.0f} | {st:,.0f} | {r / st:.3f}x |")
        lines.append("")
    if results["memory"]:
        lines += ["## Peak resident set size (MB) of a SimCLR process", "",
                  "| images | resident | streamed |", "|---:|---:|---:|"]
        for n, modes in results["memory"].items():
            lines.append(f"| {int(n):,} | {modes['resident']['peak_rss_mb']:,.0f} | "
                         f"{modes['streamed']['peak_rss_mb']:,.0f} |")
        lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

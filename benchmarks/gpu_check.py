"""The GPU check: what `benchmarks/gpu_check.sh` runs (see there for how to call it).

In one budget (9 minutes by default, sized for one H100):
1. `selfsup bench` for SimCLR, SeLa, RotNet and the newest methods (SwAV, DINO, BYOL, MoCo v2): selfsup's path
   against the compute floor and the per-sample DataLoader, Sinkhorn against POT (when installed) and the
   bandwidth bound, kNN and probes; each item's result is printed as it comes, and the results file rewritten;
2. `recipes/simclr_cifar10_fast.yaml` for as many epochs as the rest of the budget holds (from the bench's measured
   seconds per epoch; at least 60 on an H100), the cosine schedule fitted to them, kNN every 10 epochs;
3. both written to benchmarks/results/<device>-<date>.md (the bench's tables, then the SimCLR run's).

Safe to run blind: every step has its own time limit, partial results are printed and kept, and a missing package
or dataset is named before anything starts. `--tiny` rehearses the whole check on the CPU in about a minute (on
digits, at seconds-long sizes): the tests run it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("torch", "torchvision", "numpy", "PIL", "sklearn", "skimage", "scipy", "tqdm", "tensorboard",
            "safetensors", "yaml", "matplotlib", "kornia")
METHODS = "simclr,sela,rotnet,swav,dino,byol,moco"
TINY_METHODS = "simclr,sela"
DATA = ("../shared/data/cifar10-jpeg.tar.gz", ".data/cifar10-jpeg.tar.gz")


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} gpu_check: {message}", flush=True)


def missing_packages() -> list[str]:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def find_data(given: str | None) -> Path | None:
    for candidate in ([given] if given else list(DATA)):
        path = (ROOT / candidate) if not Path(candidate).is_absolute() else Path(candidate)
        if path.exists():
            return path.resolve()
    return None


def run(cmd: list[str], seconds: float, env: dict) -> int:
    """Run a step with its output streamed; stopped (SIGTERM, then SIGKILL) when its time is up."""
    log(f"$ {' '.join(cmd)}  (at most {seconds:.0f} s)")
    # A process group of its own: the step's own children (the bench runs every item in a fresh process) stop with
    # it, instead of competing with the next step for the GPU.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=max(1.0, seconds))
    except subprocess.TimeoutExpired:
        log(f"time is up for this step after {seconds:.0f} s; stopping it (what it measured so far is kept)")
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()


def simclr_epochs(bench_json: Path, seconds: float, tiny: bool) -> tuple[int, float | None]:
    """How many epochs of the SimCLR recipe fit in `seconds`, from the bench's measured seconds per epoch (plus
    15% for the kNN monitor and checkpoints)."""
    if tiny:
        return 1, None
    per_epoch = None
    try:
        results = json.loads(bench_json.read_text())["results"]
        per_epoch = next(r["result"]["seconds_per_epoch"] for r in results
                         if r["item"].get("method") == "simclr" and r["item"].get("mode") == "selfsup"
                         and "seconds_per_epoch" in r["result"])
    except (OSError, ValueError, KeyError, StopIteration):
        pass
    if per_epoch is None:
        return 60, None
    return max(1, min(200, math.floor(seconds / (per_epoch * 1.15)))), per_epoch


def simclr_section(run_dir: Path, command: str, per_epoch: float | None) -> str:
    lines_path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in lines_path.read_text().splitlines() if x.strip()] if lines_path.is_file() else []
    rows = [r for r in rows if "step" not in r]
    out = ["", "## SimCLR recipe", "", f"`{command}`", ""]
    if per_epoch is not None:
        out += [f"Epochs chosen from the bench's {per_epoch:.2f} s per epoch to fit the budget.", ""]
    if not rows:
        return "\n".join(out + ["No epoch finished (see the log)."])
    knn = [(r["epoch"], r["knn_top1"]) for r in rows if "knn_top1" in r]
    seconds = [r["epoch_seconds"] for r in rows]
    out += [f"{len(rows)} epochs in {sum(seconds) / 60:.1f} min of training: {sum(seconds) / len(seconds):.2f} s per "
            f"epoch on average ({rows[-1]['images_per_second']:.0f} img/s in the last), final loss "
            f"{rows[-1]['loss']:.4f}.", "", "| epoch | kNN top-1 (%) |", "|---:|---:|"]
    out += [f"| {e} | {v:.2f} |" for e, v in knn]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The one-command GPU check (bench + SimCLR recipe).")
    p.add_argument("--tiny", action="store_true", help="a CPU rehearsal at seconds-long sizes on digits")
    p.add_argument("--minutes", type=float, default=9.0, help="the whole check's budget")
    p.add_argument("--out", default="benchmarks/results", help="folder of the results file")
    p.add_argument("--runs", default="runs/gpu_check", help="folder of the SimCLR run")
    p.add_argument("--data", help="the CIFAR-10 JPEG copy (default ../shared/data or .data/cifar10-jpeg.tar.gz)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.minutes * 60

    missing = missing_packages()
    if missing:
        log(f"missing Python packages: {', '.join(missing)}; carry their wheels in .whl/ (benchmarks/gpu_wheels.sh "
            "downloads them) and run again")
        return 2
    import torch

    sys.path.insert(0, str(ROOT))
    from selfsup.bench import device_slug
    from selfsup.distributed import pick_device

    dev = pick_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    log(f"torch {torch.__version__}, device {dev} ({name}), budget {args.minutes:g} min{', tiny' if args.tiny else ''}")
    if dev.type != "cuda" and not args.tiny:
        log("no GPU here: run with --tiny for the CPU rehearsal")
        return 2
    data = None if args.tiny else find_data(args.data)
    if not args.tiny and data is None:
        log(f"the CIFAR-10 JPEG copy is not in {' or '.join(DATA)}; copy it there (or give --data) and run again")
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "SELFSUP_LOG_SECONDS": os.environ.get("SELFSUP_LOG_SECONDS", "20")}
    out = (ROOT / args.out).resolve()
    stem = f"{device_slug(dev)}-{date.today().isoformat()}"
    selfsup = [sys.executable, "-m", "selfsup"]

    # 1. The bench: at most 40% of the budget (the rest is the SimCLR run's).
    bench = [*selfsup, "bench", "--device", str(dev), "--out", str(out), "--force",
             "--methods", TINY_METHODS if args.tiny else METHODS]
    # The rehearsal skips the bench parts its own tests cover (tests/test_bench.py), to stay about a minute.
    bench += ["--tiny", "--skip", "dataloader,pot,sinkhorn"] if args.tiny else [f"source=folder:{data}"]
    code = run(bench, 0.4 * (deadline - time.monotonic()), env)
    log(f"bench finished with status {code}; its tables are in {out / (stem + '.md')}")

    # 2. The SimCLR recipe, its schedule fitted to the time left (a minute kept for the kNN and the report).
    left = deadline - time.monotonic() - 60
    epochs, per_epoch = simclr_epochs(out / f"{stem}.json", left - 45, args.tiny)
    run_dir = (ROOT / args.runs / "simclr_cifar10").resolve()
    overrides = [f"epochs={epochs}", f"max_minutes={max(0.1, (left - 45) / 60):.2f}", "eval.knn_every=10",
                 "optim.warmup_epochs=" + ("0" if args.tiny else str(min(10, max(1, epochs // 20))))]
    if args.tiny:
        overrides += ["data.source=digits", "data.num_images=128", "batch_size=64", "eval.source=digits"]
    else:
        overrides += [f"data.source=folder:{data}"]
    pretrain = [*selfsup, "pretrain", "recipes/simclr_cifar10_fast.yaml", *overrides, "--out", str(run_dir), "--force"]
    code = run(pretrain, left, env)
    log(f"SimCLR recipe finished with status {code}")

    # 3. One results file: the bench's tables, then the SimCLR run's.
    md = out / f"{stem}.md"
    text = md.read_text() if md.is_file() else f"# GPU check: {name}, {date.today()}\n\nThe bench wrote nothing.\n"
    text = text.split("\n## SimCLR recipe")[0].rstrip("\n") + "\n"
    command = "selfsup pretrain recipes/simclr_cifar10_fast.yaml " + " ".join(overrides)
    md.write_text(text + simclr_section(run_dir, command, per_epoch))
    log(f"results: {md} ({(time.monotonic() - start) / 60:.1f} min in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`selfsup bench`: speed and memory on whatever device is present; every comparison is a ratio from one run.

Pretraining throughput of every method, measured three ways with the same model, optimizer and batch:
  selfsup     the training loop's own path: an index batch of the uint8 dataset on the device, batched
              augmentation there, then the step;
  floor       the same step on ready tensors: one batch's draws (views, masks, latents, negatives) are recorded
              by a Tape and replayed, so only forward, backward and the optimizer remain;
  dataloader  the per-sample pipeline other libraries use: a torchvision DataLoader with cores - 1 workers that
              augment one PIL image at a time (random resized crop, flip, colour jitter, grayscale, blur), collate
              and hand the batch to the device. The method's other draws (masks, latents) are replayed for free,
              so this baseline is, if anything, flattered.
  compiled    (with --compile) the selfsup path with the backbone through torch.compile.
Then Sinkhorn-Knopp against POT and against the memory-bandwidth bound, and kNN and linear probes over cached
features. Every item runs in a fresh process, so the peak memory it reports is its own (CUDA: the most memory
allocated; CPU: the process's peak resident set).

The parts: settings.py (the sizes per device), items.py (what is measured), report.py (the markdown), and this
file (the harness: the plan of items, a fresh process for each, the results files).
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch

from selfsup.bench.report import write_report
from selfsup.bench.settings import MODES, cores, settings
from selfsup.errors import SelfSupError
from selfsup.progress import stamp


def _in_fresh_process(item: dict) -> dict:
    """run_item in a child interpreter (its own peak memory); a failure comes back as {'error': last line}."""
    proc = subprocess.run([sys.executable, "-m", "selfsup.bench", json.dumps(item)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------------- the harness


def device_slug(device: torch.device) -> str:
    """'cpu' or the GPU's name in lower case with dashes (e.g. nvidia-h100-80gb-hbm3)."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def plan(methods: list[str], s: dict, device: str, skip: set[str], compiled: bool = False) -> list[dict]:
    """Every item of a bench run, in order."""
    modes = [mode for mode in MODES if mode not in skip] + (["compiled"] if compiled else [])
    items = [{"kind": "throughput", "method": m, "mode": mode} for m in methods for mode in modes]
    if "sinkhorn" not in skip:
        items.append({"kind": "bandwidth"})
        main = dict(kind="sinkhorn", n=s["sinkhorn_n"], k=s["sinkhorn_k"], lam=25.0)
        items += [dict(main, solver="selfsup", iters=s["sinkhorn_iters"]),
                  dict(main, solver="plain", lam=1.0, iters=s["sinkhorn_iters"]),
                  dict(main, solver="log", iters=max(2, s["sinkhorn_iters"] // 10))]
        if "pot" not in skip:
            items += [dict(main, solver="pot", iters=s["pot_iters"]),
                      dict(main, solver="pot_log", iters=max(1, s["pot_iters"] // 2))]
        stable = dict(kind="sinkhorn", n=s["stable_n"], k=s["stable_k"], lam=100.0, iters=s["sinkhorn_iters"],
                      stability=True)
        items += [dict(stable, solver="selfsup"), dict(stable, solver="plain"),
                  dict(stable, solver="log", iters=max(2, s["sinkhorn_iters"] // 10))]
    if "knn" not in skip:
        items += [{"kind": "knn"}, {"kind": "linear"}]
    for it in items:
        it.update(device=device, settings=s)
    return items


def summary(item: dict, result: dict) -> str:
    """One line for a bench item's result: what was measured and its main numbers."""
    what = " ".join(str(item[k]) for k in ("kind", "method", "mode", "solver") if item.get(k))
    if "error" in result:
        return f"{what}: failed ({str(result['error']).splitlines()[0][:200]})"
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return f"{what}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def bench(methods: list[str], device: str = "auto", out: str | Path = "benchmarks/results", tiny: bool = False,
          skip: set[str] | None = None, overrides: dict | None = None, force: bool = False,
          command: str = "selfsup bench", progress: bool = True, compiled: bool = False) -> tuple[Path, list[dict]]:
    """Run every item in a fresh process and write <out>/<device>-<date>.md and .json; returns the markdown path."""
    from selfsup.distributed import pick_device
    from selfsup.methods import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SelfSupError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(METHODS)}")
    skip = set(skip or ())
    bad_skip = skip - {"dataloader", "sinkhorn", "pot", "knn"}
    if bad_skip:
        raise SelfSupError(f"unknown --skip item(s) {', '.join(sorted(bad_skip))}; "
                           "use dataloader, sinkhorn, pot or knn")
    dev = pick_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SelfSupError(f"--device {device} asked for CUDA, which this machine does not have")
    s = settings(dev, tiny)
    for key, value in (overrides or {}).items():
        if key not in s and key != "root":
            raise SelfSupError(f"unknown bench setting {key!r}; known: {', '.join(sorted(s))}")
        s[key] = type(s[key])(value) if key in s else value
    if "pot" not in skip:
        try:
            import ot  # noqa: F401
        except ImportError:
            skip.add("pot")
    stem = f"{device_slug(dev)}-{date.today().isoformat()}"
    out = Path(out)
    md_path, json_path = out / f"{stem}.md", out / f"{stem}.json"
    if md_path.exists() and not force:
        raise SelfSupError(f"{md_path} already exists; pass --force to measure again and replace it")
    out.mkdir(parents=True, exist_ok=True)
    if methods:  # the source must load (a one-line error otherwise), and its decoded cache then serves every child
        from selfsup.data import load_source

        load_source(s["source"], "train", s.get("root"))
    items = plan(methods, s, str(dev), skip, compiled)
    results = []
    meta = {"command": command, "date": date.today().isoformat(), "device": dev.type,
            "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                            else f"CPU ({platform.processor() or platform.machine()})"),
            "cores": cores(), "threads": torch.get_num_threads(), "torch": torch.__version__, "settings": s,
            "skipped": sorted(skip)}
    for i, item in enumerate(items, 1):
        results.append({"item": item, "result": _in_fresh_process(item)})
        # Each result is printed and both files rewritten as it comes: a bench stopped by a time limit (a GPU lent
        # for minutes) still leaves every number it measured.
        meta.update(partial=i < len(items), items=len(items))
        json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        write_report(results, meta, md_path)
        if progress:
            print(f"{stamp()} bench [{i}/{len(items)}] {summary(item, results[-1]['result'])}", flush=True)
    return md_path, results


__all__ = ["bench", "plan", "device_slug", "settings", "cores", "write_report", "MODES"]

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
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import SelfSupError

MODES = ("selfsup", "floor", "dataloader")
EPOCH = 50_000  # images in a CIFAR-10 epoch: seconds per epoch are quoted for it, whatever the source


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def settings(device: torch.device, tiny: bool = False) -> dict:
    """The default sizes: the issue's H100 set-up on CUDA, the CPU studies' set-up on CPU, seconds-long ones for tests."""
    if tiny:
        return dict(backbone="alexnet_small", width=0.25, batch_size=32, steps=2, warmup=1, source="digits", size=32,
                    sinkhorn_n=2000, sinkhorn_k=100, sinkhorn_iters=10, pot_iters=2, stable_n=1000, stable_k=500,
                    bandwidth_mb=32, knn_train=2000, knn_test=500, feature_dim=64, probe_epochs=1)
    common = dict(size=32, sinkhorn_n=50_000, sinkhorn_k=3_000, stable_n=50_000, stable_k=10_000, knn_train=50_000,
                  knn_test=10_000, feature_dim=512, source="cifar10")
    if device.type == "cuda":
        return dict(common, backbone="resnet18", width=1.0, batch_size=512, steps=40, warmup=10, sinkhorn_iters=200,
                    pot_iters=5, bandwidth_mb=2048, probe_epochs=10)
    return dict(common, backbone="alexnet_small", width=0.25, batch_size=256, steps=20, warmup=3, sinkhorn_iters=30,
                pot_iters=3, bandwidth_mb=1024, probe_epochs=3)


# ---------------------------------------------------------------------------------------------------- the items


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _method_config(item: dict):
    from selfsup.config import load_config

    s = item["settings"]
    size = s["size"]
    return load_config(overrides={
        "method": item["method"], "batch_size": s["batch_size"],
        "model": {"backbone": s["backbone"], "width": s["width"], "input_size": size},
        "augment": {"size": size}, "exemplar": {"patch": size}})


def _views_transform(aug, size: int):
    """torchvision's per-sample version of an AugmentConfig, as other libraries build it."""
    import torchvision.transforms as T

    from selfsup.augment import MEAN, STD

    steps = [T.RandomResizedCrop(size, scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio)),
             T.RandomHorizontalFlip(aug.flip_p),
             T.RandomApply([T.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)], p=aug.jitter_p),
             T.RandomGrayscale(aug.grayscale_p)]
    if aug.blur_p > 0:
        kernel = 2 * (size // 20) + 1  # about 10% of the image, odd, as SimCLR's
        steps.append(T.RandomApply([T.GaussianBlur(kernel, tuple(aug.blur_sigma))], p=aug.blur_p))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])


class PerSampleViews(torch.utils.data.Dataset):
    """(index, views) for one image at a time, each view from the torchvision transform: the usual per-sample path."""

    def __init__(self, images: np.ndarray, transform, views: int):
        self.images, self.transform, self.views = images, transform, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return i, tuple(self.transform(img) for _ in range(self.views))


def _is_view(draw, batch_size: int, size: int) -> bool:
    return isinstance(draw, torch.Tensor) and draw.ndim == 4 and tuple(draw.shape[:2]) == (batch_size, 3) \
        and draw.shape[-1] == size and draw.is_floating_point()


def throughput(item: dict, device: torch.device) -> dict:
    """Images per second of one method's training step in one mode (see the module docstring)."""
    from selfsup.data import load_source
    from selfsup.methods import Batch, build_method
    from selfsup.methods.base import Tape
    from selfsup.train import build_optimizer

    s, mode, name = item["settings"], item["mode"], item["method"]
    cfg = _method_config(item)
    data = load_source(s["source"], "train", s.get("root"))
    if name == "exemplar":  # one surrogate class per image; the seeds' count, not the dataset's, sizes the classifier
        data.images = data.images[:cfg.exemplar.num_seeds]
    host = np.ascontiguousarray(data.images)
    images = torch.from_numpy(host).to(device)
    n, bs = len(images), s["batch_size"]
    targets = torch.from_numpy(np.asarray(data.labels))[None] if name == "supervised" else None
    torch.manual_seed(0)
    method = build_method(cfg, n, targets).to(device)
    method.on_train_start(images)
    method.channels_last = True
    method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg)
    if mode == "compiled":  # what `compile: true` does in training: the backbone through torch.compile
        method.backbone = torch.compile(method.backbone)
    gen = torch.Generator(device=device).manual_seed(0)
    bf16 = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(batch: Batch) -> None:
        with torch.autocast(**bf16):
            loss = method(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def index_batch() -> Batch:
        idx = torch.randint(n, (bs,), device=device, generator=gen)
        return Batch(images.index_select(0, idx), idx, gen)

    fixed = index_batch()
    method.tape = Tape()
    step(fixed)  # records one step's draws (and warms up; compiles, in compiled mode)
    recorded = method.tape.draws
    if mode in ("selfsup", "compiled"):
        method.tape = None
        next_batch = index_batch
    elif mode == "floor":
        method.tape = Tape(recorded)
        next_batch = lambda: fixed  # noqa: E731
    else:
        view_slots = [i for i, d in enumerate(recorded) if _is_view(d, bs, s["size"])]
        loader = torch.utils.data.DataLoader(
            PerSampleViews(host, _views_transform(cfg.augment, s["size"]), len(view_slots)), batch_size=bs,
            shuffle=True, drop_last=True, num_workers=max(1, cores() - 1), pin_memory=device.type == "cuda",
            persistent_workers=True)
        batches = iter(loader)

        def next_batch() -> Batch:
            nonlocal batches
            try:
                idx, views = next(batches)
            except StopIteration:
                batches = iter(loader)
                idx, views = next(batches)
            draws = list(recorded)
            for slot, view in zip(view_slots, views):
                draws[slot] = view.to(device, non_blocking=True)
            method.tape = Tape(draws)
            idx = idx.to(device, non_blocking=True)
            return Batch(fixed.images, idx, gen)

    for _ in range(s["warmup"]):
        step(next_batch())
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(s["steps"]):
        step(next_batch())
    _sync(device)
    seconds = (time.perf_counter() - t0) / s["steps"]
    per_second = bs / seconds
    return {"images_per_second": round(per_second, 1), "seconds_per_epoch": round(EPOCH / per_second, 2)}


def _scores(n: int, k: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    return torch.log_softmax(3.0 * torch.randn(n, k, device=device, generator=g), dim=1)


def copy_bandwidth(item: dict, device: torch.device) -> dict:
    """Bytes read plus bytes written per second by a large device-to-device copy (the best of five)."""
    n = item["settings"]["bandwidth_mb"] * 2**20 // 4
    x = torch.ones(n, device=device)
    y = torch.empty_like(x)
    best = math.inf
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        y.copy_(x)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"bytes_per_second": 2 * 4 * n / best}


def _marginal_error(q: torch.Tensor) -> float:
    """L1 distance of the plan's row and column sums from the uniform marginals (each of mass 1); nan when not finite."""
    q = q.double()
    n, k = q.shape
    return float((q.sum(1) - 1 / n).abs().sum() + (q.sum(0) - 1 / k).abs().sum())


def _plain_sinkhorn(log_p: torch.Tensor, lam: float, iters: int) -> torch.Tensor:
    """The textbook scaling iteration on the kernel exp(lam log P): fast, but the kernel underflows for large lam."""
    n, k = log_p.shape
    kernel = torch.exp(lam * log_p)
    u, v = torch.ones(n, device=log_p.device), torch.ones(k, device=log_p.device)
    for _ in range(iters):
        u = (1 / n) / (kernel @ v)
        v = (1 / k) / (u @ kernel)
    return u[:, None] * kernel * v


def _log_sinkhorn(log_p: torch.Tensor, lam: float, iters: int) -> torch.Tensor:
    """The log-domain iteration (two logsumexp passes over the matrix): stable, but each pass is exp-bound."""
    n, k = log_p.shape
    s = lam * log_p
    f, g = torch.zeros(n, device=log_p.device), torch.zeros(k, device=log_p.device)
    for _ in range(iters):
        f = -math.log(n) - torch.logsumexp(s + g, dim=1)
        g = -math.log(k) - torch.logsumexp(s + f[:, None], dim=0)
    return torch.exp(s + f[:, None] + g)


def sinkhorn_item(item: dict, device: torch.device) -> dict:
    """Seconds per iteration of one Sinkhorn solver on the N x K problem, and its plan's marginal error."""
    import warnings

    from selfsup.ot import sinkhorn

    n, k, lam, iters, solver = item["n"], item["k"], item["lam"], item["iters"], item["solver"]
    log_p = _scores(n, k, device)
    if solver.startswith("pot"):
        import ot

        cost = (-log_p.double()).cpu().numpy()
        a, b = np.full(n, 1 / n), np.full(k, 1 / k)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = ot.sinkhorn(a, b, cost, reg=1 / lam, method="sinkhorn_log" if solver == "pot_log" else "sinkhorn",
                               numItermax=iters, stopThr=0.0)
        seconds = time.perf_counter() - t0
        return {"seconds_per_iteration": seconds / iters, "run_seconds": seconds,
                "marginal_error": _marginal_error(torch.from_numpy(plan))}
    solve = {"selfsup": lambda m: sinkhorn(log_p, lam, tol=1e-30, max_iter=m),  # a tolerance never met: m iterations
             "plain": lambda m: _plain_sinkhorn(log_p, lam, m),
             "log": lambda m: _log_sinkhorn(log_p, lam, m)}[solver]
    def timed(m: int) -> tuple[float, torch.Tensor]:
        _sync(device)
        t0 = time.perf_counter()
        plan = solve(m)
        _sync(device)
        return time.perf_counter() - t0, plan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solve(2)  # warm-up
        once, plan = timed(iters)
        twice, _ = timed(2 * iters)
    # The difference of two runs is the steady-state cost of `iters` iterations (set-up cancels out).
    per = (twice - once) / iters
    return {"seconds_per_iteration": per, "run_seconds": once, "marginal_error": _marginal_error(plan),
            "finite": bool(torch.isfinite(plan).all())}


def knn_item(item: dict, device: torch.device) -> dict:
    """Seconds of weighted kNN (k=200) of the test features against the training features."""
    from selfsup.eval.knn import knn_accuracy

    s = item["settings"]
    g = torch.Generator(device=device).manual_seed(0)
    train = torch.randn(s["knn_train"], s["feature_dim"], device=device, generator=g)
    test = torch.randn(s["knn_test"], s["feature_dim"], device=device, generator=g)
    y_train = torch.randint(10, (s["knn_train"],), device=device, generator=g)
    y_test = torch.randint(10, (s["knn_test"],), device=device, generator=g)
    knn_accuracy(train, y_train, test[:256], y_test[:256], 10)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    knn_accuracy(train, y_train, test, y_test, 10)
    _sync(device)
    return {"seconds": time.perf_counter() - t0}


def linear_item(item: dict, device: torch.device) -> dict:
    """Seconds per epoch of a linear probe trained over cached features (batch 256, AdamW)."""
    from selfsup.eval.linear import train_linear_probes

    s = item["settings"]
    g = torch.Generator().manual_seed(0)
    train = torch.randn(s["knn_train"], s["feature_dim"], generator=g)
    test = torch.randn(s["knn_test"], s["feature_dim"], generator=g)
    y_train, y_test = torch.randint(10, (s["knn_train"],), generator=g), torch.randint(10, (s["knn_test"],), generator=g)
    t0 = time.perf_counter()
    train_linear_probes({"features": train}, y_train, {"features": test}, y_test, 10, epochs=s["probe_epochs"], device=device)
    _sync(device)
    return {"seconds_per_epoch": (time.perf_counter() - t0) / s["probe_epochs"]}


ITEMS = {"throughput": throughput, "bandwidth": copy_bandwidth, "sinkhorn": sinkhorn_item, "knn": knn_item,
         "linear": linear_item}


def run_item(item: dict) -> dict:
    """Measure one item in this process; add its peak memory in MB."""
    import resource

    from selfsup.distributed import pick_device

    device = pick_device(item["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = ITEMS[item["kind"]](item, device)
    if device.type == "cuda":
        result["peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        result["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KB on Linux
    return result


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
        items += [dict(main, solver="selfsup", iters=s["sinkhorn_iters"]), dict(main, solver="plain", lam=1.0, iters=s["sinkhorn_iters"]),
                  dict(main, solver="log", iters=max(2, s["sinkhorn_iters"] // 10))]
        if "pot" not in skip:
            items += [dict(main, solver="pot", iters=s["pot_iters"]), dict(main, solver="pot_log", iters=max(1, s["pot_iters"] // 2))]
        stable = dict(kind="sinkhorn", n=s["stable_n"], k=s["stable_k"], lam=100.0, iters=s["sinkhorn_iters"], stability=True)
        items += [dict(stable, solver="selfsup"), dict(stable, solver="plain"), dict(stable, solver="log", iters=max(2, s["sinkhorn_iters"] // 10))]
    if "knn" not in skip:
        items += [{"kind": "knn"}, {"kind": "linear"}]
    for it in items:
        it.update(device=device, settings=s)
    return items


def _fmt(x: float, digits: int = 2, unit: str = "") -> str:
    """x with thousands separators and `digits` decimals, then unit; '-' for a missing (nan) value."""
    return f"{x:,.{digits}f}{unit}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def write_report(results: list[dict], meta: dict, md_path: Path) -> None:
    """The markdown tables beside the JSON: throughput ratios, Sinkhorn against POT and the bandwidth bound, eval."""
    s = meta["settings"]
    lines = [f"# selfsup bench: {meta['device_name']}, {meta['date']}", "",
             f"`{meta['command']}`", "",
             f"Device: {meta['device_name']} ({meta['cores']} CPU cores, torch {meta['torch']}, {meta['threads']} threads). "
             f"Throughput: {s['backbone']} (width {s['width']}), batch {s['batch_size']}, {s['size']} px, "
             f"{'bf16 autocast, ' if meta['device'] == 'cuda' else 'fp32, '}channels_last, {s['warmup']} warm-up and "
             f"{s['steps']} timed steps, source {s['source']}. An epoch is 50,000 images (CIFAR-10's training set). Peak memory: the most allocated on the GPU, or the process's peak resident "
             "set on the CPU (torch itself included); the DataLoader's workers are other processes and not counted.", ""]
    errors = [r for r in results if "error" in r["result"]]
    by = {(r["item"].get("method"), r["item"].get("mode")): r["result"] for r in results if r["item"]["kind"] == "throughput"}
    methods = list(dict.fromkeys(r["item"]["method"] for r in results if r["item"]["kind"] == "throughput"))
    if methods:
        lines += ["## Pretraining throughput", "",
                  "| method | selfsup img/s | s/epoch | floor img/s | s/epoch | DataLoader img/s | s/epoch "
                  "| selfsup / floor (time) | DataLoader / selfsup (time) | peak MB selfsup / floor / DataLoader |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in methods:
            row = [by.get((m, mode), {}) for mode in MODES]
            ips = [r.get("images_per_second", math.nan) for r in row]
            spe = [r.get("seconds_per_epoch", math.nan) for r in row]
            lines.append(f"| {m} | {_fmt(ips[0], 0)} | {_fmt(spe[0])} | {_fmt(ips[1], 0)} | {_fmt(spe[1])} | {_fmt(ips[2], 0)} "
                         f"| {_fmt(spe[2])} | {_fmt(ips[1] / ips[0], unit='x')} | {_fmt(ips[0] / ips[2], unit='x')} | "
                         + " / ".join(_fmt(r.get("peak_mb", math.nan), 0) for r in row) + " |")
        lines.append("")
        comp = {m: by[(m, "compiled")] for m in methods if (m, "compiled") in by}
        if comp:
            lines += ["With the backbone through `torch.compile` (`compile: true`; the first step, which compiles, is not timed):", "",
                      "| method | compiled img/s | s/epoch | compiled / selfsup (speed) | peak MB |", "|---|---:|---:|---:|---:|"]
            for m, r in comp.items():
                ips = r.get("images_per_second", math.nan)
                lines.append(f"| {m} | {_fmt(ips, 0)} | {_fmt(r.get('seconds_per_epoch', math.nan))} | "
                             f"{_fmt(ips / by.get((m, 'selfsup'), {}).get('images_per_second', math.nan), unit='x')} | "
                             f"{_fmt(r.get('peak_mb', math.nan), 0)} |")
            lines.append("")
    sink = [r for r in results if r["item"]["kind"] == "sinkhorn" and "error" not in r["result"]]
    bw = next((r["result"].get("bytes_per_second") for r in results if r["item"]["kind"] == "bandwidth"), None)
    if sink and bw:
        lines += ["## Sinkhorn-Knopp", "",
                  f"Device copy bandwidth: {bw / 1e9:,.1f} GB/s (bytes read + written per second, best of five copies of "
                  f"{s['bandwidth_mb']} MB). Bandwidth bound of one iteration: two reads of the N x K fp32 matrix at that "
                  "rate. The torch solvers are timed twice, for n and 2n iterations: the difference gives the steady cost of an "
                  "iteration (set-up cancels out), and the n-iteration run's time (set-up included) and plan's marginal error "
                  "are shown. POT runs on the CPU in float64 (its numpy backend), timed once: its ms per iteration include "
                  "its set-up. The plain iteration is timed at lambda = 1, "
                  "where its kernel does not underflow; at lambda = 100 it is shown failing.", "",
                  "| solver | N x K | lambda | iterations | ms / iteration | x bandwidth bound | n-iteration run, s | marginal error | finite | peak MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        names = {"selfsup": "selfsup.ot.sinkhorn (fp32)", "plain": "plain scaling iteration (torch, fp32)",
                 "log": "log-domain iteration (torch, fp32)", "pot": "POT ot.sinkhorn (fp64)",
                 "pot_log": "POT ot.sinkhorn, sinkhorn_log (fp64)"}
        for r in sink:
            it, res = r["item"], r["result"]
            bound = 2 * 4 * it["n"] * it["k"] / bw
            per = res["seconds_per_iteration"]
            lines.append(f"| {names[it['solver']]} | {it['n']:,} x {it['k']:,} | {it['lam']:g} | {it['iters']} | "
                         f"{_fmt(per * 1e3)} | {_fmt(per / bound, 1)} | {_fmt(res['run_seconds'])} | "
                         f"{res['marginal_error']:.2e} | "
                         f"{res.get('finite', '-')} | {_fmt(res['peak_mb'], 0)} |")
        lines.append("")
    ev = {r["item"]["kind"]: r["result"] for r in results if r["item"]["kind"] in ("knn", "linear") and "error" not in r["result"]}
    if ev:
        lines += ["## Evaluation over cached features", "",
                  f"{s['knn_train']:,} training x {s['knn_test']:,} test features of {s['feature_dim']} dimensions, 10 classes.", "",
                  "| what | seconds | peak MB |", "|---|---:|---:|"]
        if "knn" in ev:
            lines.append(f"| weighted kNN (k=200), all test features | {_fmt(ev['knn']['seconds'])} | {_fmt(ev['knn']['peak_mb'], 0)} |")
        if "linear" in ev:
            lines.append(f"| linear probe, one epoch (batch 256, AdamW) | {_fmt(ev['linear']['seconds_per_epoch'])} | "
                         f"{_fmt(ev['linear']['peak_mb'], 0)} |")
        lines.append("")
    if errors:
        lines += ["## Items that failed", ""] + [f"- `{json.dumps({k: v for k, v in r['item'].items() if k != 'settings'})}`: "
                                                 f"{r['result']['error']}" for r in errors] + [""]
    md_path.write_text("\n".join(lines))


def bench(methods: list[str], device: str = "auto", out: str | Path = "benchmarks/results", tiny: bool = False,
          skip: set[str] | None = None, overrides: dict | None = None, force: bool = False, command: str = "selfsup bench",
          progress: bool = True, compiled: bool = False) -> tuple[Path, list[dict]]:
    """Run every item in a fresh process and write <out>/<device>-<date>.md and .json; returns the markdown path."""
    from tqdm import tqdm

    from selfsup.distributed import pick_device
    from selfsup.methods import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SelfSupError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(METHODS)}")
    skip = set(skip or ())
    bad_skip = skip - {"dataloader", "sinkhorn", "pot", "knn"}
    if bad_skip:
        raise SelfSupError(f"unknown --skip item(s) {', '.join(sorted(bad_skip))}; use dataloader, sinkhorn, pot or knn")
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
    for item in tqdm(items, desc="bench", disable=not progress, dynamic_ncols=True):
        results.append({"item": item, "result": _in_fresh_process(item)})
    meta = {"command": command, "date": date.today().isoformat(), "device": dev.type,
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
            "cores": cores(), "threads": torch.get_num_threads(), "torch": torch.__version__, "settings": s,
            "skipped": sorted(skip)}
    json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_report(results, meta, md_path)
    return md_path, results


if __name__ == "__main__":  # the child process of _in_fresh_process
    print(json.dumps(run_item(json.loads(sys.argv[1]))))

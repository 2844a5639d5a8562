"""The markdown report of a `selfsup bench` run: throughput ratios, Sinkhorn against POT and the bandwidth bound,
evaluation timings, and the items that failed."""

from __future__ import annotations

import json
import math
from pathlib import Path

from selfsup.bench.settings import MODES


def _fmt(x: float, digits: int = 2, unit: str = "") -> str:
    """x with thousands separators and `digits` decimals, then unit; '-' for a missing (nan) value."""
    return f"{x:,.{digits}f}{unit}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def write_report(results: list[dict], meta: dict, md_path: Path) -> None:
    """The markdown tables beside the JSON: throughput ratios, Sinkhorn against POT and the bandwidth bound, eval."""
    s = meta["settings"]
    lines = [f"# selfsup bench: {meta['device_name']}, {meta['date']}", "",
             f"`{meta['command']}`", "",
             f"Device: {meta['device_name']} ({meta['cores']} CPU cores, torch {meta['torch']}, "
             f"{meta['threads']} threads). "
             f"Throughput: {s['backbone']} (width {s['width']}), batch {s['batch_size']}, {s['size']} px, "
             f"{'bf16 autocast, ' if meta['device'] == 'cuda' else 'fp32, '}channels_last, {s['warmup']} warm-up and "
             f"{s['steps']} timed steps, source {s['source']}. An epoch is 50,000 images (CIFAR-10's training set). "
             "Peak memory: the most allocated on the GPU, or the process's peak resident set on the CPU "
             "(torch itself included); the DataLoader's workers are other processes and not counted.", ""]
    if meta.get("partial"):
        lines += [f"**Partial**: {len(results)} of {meta['items']} items measured so far (this file is rewritten after "
                  "each item; a bench stopped early leaves what it had).", ""]
    errors = [r for r in results if "error" in r["result"]]
    by = {(r["item"].get("method"), r["item"].get("mode")): r["result"]
          for r in results if r["item"]["kind"] == "throughput"}
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
            lines.append(f"| {m} | {_fmt(ips[0], 0)} | {_fmt(spe[0])} | {_fmt(ips[1], 0)} | {_fmt(spe[1])} "
                         f"| {_fmt(ips[2], 0)} "
                         f"| {_fmt(spe[2])} | {_fmt(ips[1] / ips[0], unit='x')} | {_fmt(ips[0] / ips[2], unit='x')} | "
                         + " / ".join(_fmt(r.get("peak_mb", math.nan), 0) for r in row) + " |")
        lines.append("")
        comp = {m: by[(m, "compiled")] for m in methods if (m, "compiled") in by}
        if comp:
            lines += ["With the backbone through `torch.compile` (`compile: true`; the first step, which compiles, "
                      "is not timed):", "",
                      "| method | compiled img/s | s/epoch | compiled / selfsup (speed) | peak MB |",
                      "|---|---:|---:|---:|---:|"]
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
                  f"Device copy bandwidth: {bw / 1e9:,.1f} GB/s (bytes read + written per second, best of five "
                  f"copies of {s['bandwidth_mb']} MB). Bandwidth bound of one iteration: two reads of the N x K fp32 "
                  "matrix at that rate. The torch solvers are timed twice, for n and 2n iterations: the difference "
                  "gives the steady cost of an iteration (set-up cancels out), and the n-iteration run's time "
                  "(set-up included) and plan's marginal error are shown. POT runs on the CPU in float64 (its numpy "
                  "backend), timed once: its ms per iteration include "
                  "its set-up. The plain iteration is timed at lambda = 1, "
                  "where its kernel does not underflow; at lambda = 100 it is shown failing.", "",
                  "| solver | N x K | lambda | iterations | ms / iteration | x bandwidth bound | n-iteration run, s "
                  "| marginal error | finite | peak MB |",
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
    ev = {r["item"]["kind"]: r["result"] for r in results
          if r["item"]["kind"] in ("knn", "linear") and "error" not in r["result"]}
    if ev:
        lines += ["## Evaluation over cached features", "",
                  f"{s['knn_train']:,} training x {s['knn_test']:,} test features of {s['feature_dim']} dimensions, "
                  "10 classes.", "",
                  "| what | seconds | peak MB |", "|---|---:|---:|"]
        if "knn" in ev:
            lines.append(f"| weighted kNN (k=200), all test features | {_fmt(ev['knn']['seconds'])} | "
                         f"{_fmt(ev['knn']['peak_mb'], 0)} |")
        if "linear" in ev:
            lines.append(f"| linear probe, one epoch (batch 256, AdamW) | {_fmt(ev['linear']['seconds_per_epoch'])} | "
                         f"{_fmt(ev['linear']['peak_mb'], 0)} |")
        lines.append("")
    if errors:
        lines += (["## Items that failed", ""]
                  + [f"- `{json.dumps({k: v for k, v in r['item'].items() if k != 'settings'})}`: "
                     f"{r['result']['error']}" for r in errors] + [""])
    md_path.write_text("\n".join(lines))


"""Reports: a markdown table of per-layer probe accuracy and its plot, and picture grids.

Figures are matplotlib Figure objects drawn and saved without pyplot, so importing this module (or making a
plot) never switches the backend of a running notebook.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from selfsup.augmentation import MEAN, STD


def probe_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per model, one column per layer (top-1 %)."""
    layers = list(next(iter(results.values())))
    lines = ["| model | " + " | ".join(layers) + " |", "|---|" + "---:|" * len(layers)]
    for name, accs in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{accs[layer]:.1f}" for layer in layers) + " |")
    return "\n".join(lines)


def plot_probes(results: dict[str, dict[str, float]], path: Path, title: str = "") -> None:
    """Accuracy vs layer, one line per model."""
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for name, accs in results.items():
        ax.plot(list(accs), list(accs.values()), marker="o", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _curve(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def _within_epochs(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Per-step rows (log_steps) placed at fractional epochs: the k-th of an epoch's n rows at epoch - 1 + k/n."""
    by_epoch: dict[int, list[dict]] = {}
    for r in rows:
        if isinstance(r.get(key), (int, float)):
            by_epoch.setdefault(r["epoch"], []).append(r)
    xs, ys = [], []
    for epoch, group in sorted(by_epoch.items()):
        for k, r in enumerate(group, 1):
            xs.append(epoch - 1 + k / len(group))
            ys.append(r[key])
    return xs, ys


def plot_runs(runs: list[Path], path: Path, labels: list[str] | None = None) -> Path:
    """Loss, learning rate and kNN top-1 against epochs from the runs' metrics.jsonl, several runs overlaid (per-step
    rows, when the run wrote them, as a thin line under the epoch means); returns the PNG's path."""
    from selfsup.engine.checkpoint import read_metrics
    from selfsup.errors import SelfSupError

    runs = [Path(r) for r in runs]
    labels = labels or [r.name or str(r) for r in runs]
    fig = Figure(figsize=(13, 3.8), dpi=110)
    axes = fig.subplots(1, 3)
    titles = (("loss", "training loss"), ("lr", "learning rate"), ("knn_top1", "kNN top-1 (%)"))
    for i, (run, label) in enumerate(zip(runs, labels)):
        if not run.is_dir():
            raise SelfSupError(f"run directory {run} {'is not a directory' if run.exists() else 'does not exist'}")
        rows = read_metrics(run)
        if not rows:
            raise SelfSupError(f"{run} has no epochs in metrics.jsonl yet; plot a run that finished an epoch")
        steps = [r for r in read_metrics(run, steps=True) if "step" in r]
        for ax, (key, _) in zip(axes, titles):
            sx, sy = _within_epochs(steps, key) if key != "knn_top1" else ([], [])
            x, y = _curve(rows, key)
            colour = f"C{i % 10}"  # one colour per run on every panel
            if x:
                ax.plot(x, y, color=colour, marker="o" if len(x) < 30 else None, markersize=3, label=label)
            if sx:
                ax.plot(sx, sy, color=colour, alpha=0.3, linewidth=0.8)
    for ax, (key, title) in zip(axes, titles):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")
    if len(runs) > 1:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_probe_report(run_dir: Path, results: dict[str, dict[str, float]], title: str, note: str = "",
                       extra: str = "") -> Path:
    """Write report.md and probes.png into run_dir; returns the report path."""
    run_dir = Path(run_dir)
    plot_probes(results, run_dir / "probes.png", title)
    text = (f"# {title}\n\n{note}\n\nLinear probe top-1 (%) per layer:\n\n{probe_table(results)}\n\n"
            "![probes](probes.png)\n")
    if extra:
        text += "\n" + extra + "\n"
    path = run_dir / "report.md"
    path.write_text(text)
    return path


def cluster_grid(images: np.ndarray, features: torch.Tensor, labels: torch.Tensor, path: Path,
                 max_clusters: int = 16, per_cluster: int = 10, scale: int = 2) -> Path:
    """PNG grid: one row per cluster (largest first), its images closest to the cluster's mean feature."""
    Image.fromarray(cluster_picture(images, features, labels, max_clusters, per_cluster, scale)).save(path)
    return path


def cluster_picture(images: np.ndarray, features: torch.Tensor, labels: torch.Tensor, max_clusters: int = 16,
                    per_cluster: int = 10, scale: int = 2) -> np.ndarray:
    """uint8 (H,W,3) grid: one row per cluster (largest first), its images closest to the cluster's mean feature,
    upscaled `scale`x."""
    labels = labels.long()
    keep = labels >= 0  # -1: a sample without a label (given labels with gaps)
    rows_of = torch.nonzero(keep).flatten()  # row in `images` of each kept sample: the images (a memory map of the
    features, labels = features[keep], labels[keep]  # whole split, maybe) are read only where shown
    if not len(labels):
        h, w = images.shape[1:3]
        return np.zeros((h * scale, w * scale, 3), np.uint8)
    feats = F.normalize(features.float(), dim=1)
    sizes = torch.bincount(labels, minlength=int(labels.max()) + 1)
    rows = []
    h, w = images.shape[1:3]
    for c in torch.argsort(sizes, descending=True)[:max_clusters].tolist():
        if sizes[c] == 0:
            break
        members = torch.nonzero(labels == c).flatten()
        centre = F.normalize(feats[members].mean(0), dim=0)
        best = members[torch.argsort(feats[members] @ centre, descending=True)[:per_cluster]]
        row = np.zeros((h, w * per_cluster, 3), dtype=np.uint8)
        for j, i in enumerate(best.tolist()):
            row[:, j * w:(j + 1) * w] = images[int(rows_of[i])]
        rows.append(row)
    grid = np.concatenate(rows) if rows else np.zeros((h, w, 3), np.uint8)
    return grid.repeat(scale, 0).repeat(scale, 1)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Network-range images (augment.normalize's output) back to RGB in [0,1], for pictures."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def image_rows(rows: list[torch.Tensor], gap: int = 2, scale: int = 2) -> np.ndarray:
    """uint8 (H,W,3) grid: one row per (B,3,h,w) tensor of RGB in [0,1], one column per image, `gap` white pixels
    between, upscaled `scale`x (nearest) so that 32 px images stay legible."""
    n, (h, w) = len(rows), rows[0].shape[-2:]
    b = rows[0].shape[0]
    grid = torch.ones(3, n * h + (n - 1) * gap, b * w + (b - 1) * gap)
    for i, row in enumerate(rows):
        for j, image in enumerate(row.detach().float().cpu().clamp(0, 1)):
            grid[:, i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = image
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def study_table(rows: dict[str, dict]) -> str:
    """Markdown table of study cells: linear probe top-1 per layer, kNN on the final layer, training cost."""
    layers = list(next(iter(rows.values()))["linear"])
    lines = ["| cell | " + " | ".join(layers) + " | kNN | epochs | train min |", "|---|" + "---:|" * (len(layers) + 3)]
    for label, r in rows.items():
        accs = " | ".join(f"{r['linear'][layer]:.1f}" for layer in layers)
        lines.append(f"| {label} | {accs} | {r['knn']:.1f} | {r.get('epochs', '–')} | {r.get('train_minutes', '–')} |")
    return "\n".join(lines)


STUDY_METRICS = {"linear": "linear probe top-1 (%)", "layer_knn": "kNN top-1 (%)",
                 "few_labels": "few-label probe top-1 (%)"}


def layer_table(rows: dict[str, dict], key: str) -> str:
    """Markdown table of one per-layer result of study cells: `layer_knn`, or `few_labels` as mean ± std."""
    layers = list(next(iter(rows.values()))[key])
    lines = ["| cell | " + " | ".join(layers) + " |", "|---|" + "---:|" * len(layers)]
    for label, r in rows.items():
        cells = [f"{v[0]:.1f} ± {v[1]:.1f}" if isinstance(v, (list, tuple)) else f"{v:.1f}" for v in r[key].values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_study(rows: dict[str, dict], methods: list[str], path: Path) -> None:
    """Accuracy vs layer: one panel per method (columns) and measure (rows: the linear probe, and kNN and few-label
    probes when the cells have them, the latter with a band of one standard deviation), one line per training
    source, baselines dashed on every panel."""
    baselines = {label: r for label, r in rows.items() if r["method"] in ("random", "supervised")}
    metrics = [m for m in STUDY_METRICS if all(m in r for r in rows.values())]
    fig = Figure(figsize=(4.5 * len(methods), 3.6 * len(metrics)), dpi=120)
    axes = fig.subplots(len(metrics), len(methods), squeeze=False, sharey="row")

    def draw(ax, values: dict, style: str | None, label: str) -> None:
        layers = list(values)
        pairs = [v if isinstance(v, (list, tuple)) else (v, 0.0) for v in values.values()]
        mean = np.array([p[0] for p in pairs])
        line = ax.plot(layers, mean, *([style] if style else []), marker=None if style else "o", label=label)[0]
        spread = np.array([p[1] for p in pairs])
        if spread.any():
            ax.fill_between(layers, mean - spread, mean + spread, color=line.get_color(), alpha=0.15)

    for row, metric in enumerate(metrics):
        for ax, method in zip(axes[row], methods):
            for label, r in rows.items():
                if r["method"] == method:
                    draw(ax, r[metric], None, label.split(" · ", 1)[-1])
            for (label, r), style in zip(baselines.items(), ("k--", "k:")):
                draw(ax, r[metric], style, label)
            ax.set_title(method)
            ax.set_xlabel("layer")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[row][0].set_ylabel(STUDY_METRICS[metric])
    fig.tight_layout()
    fig.savefig(path)


def filter_grid(filters: dict[str, np.ndarray], path: Path, columns: int = 4) -> None:
    """Each model's first-layer filters (out, 3, k, k), each filter scaled to [0, 1] on its own, a panel per model."""
    rows = math.ceil(len(filters) / columns)
    fig = Figure(figsize=(3 * columns, 3.2 * rows), dpi=120)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (label, w) in zip(axes.flat, filters.items()):
        w = w - w.min(axis=(1, 2, 3), keepdims=True)
        w = w / np.maximum(w.max(axis=(1, 2, 3), keepdims=True), 1e-8)
        n, _, k, _ = w.shape
        per_row = math.ceil(math.sqrt(n))
        tile = np.ones((math.ceil(n / per_row) * (k + 1), per_row * (k + 1), 3))
        for i in range(n):
            y, x = divmod(i, per_row)
            tile[y * (k + 1):y * (k + 1) + k, x * (k + 1):x * (k + 1) + k] = w[i].transpose(1, 2, 0)
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)

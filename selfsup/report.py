"""Reports: a markdown table of per-layer probe accuracy and its plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def probe_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per model, one column per layer (top-1 %)."""
    layers = list(next(iter(results.values())))
    lines = ["| model | " + " | ".join(layers) + " |", "|---|" + "---:|" * len(layers)]
    for name, accs in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{accs[layer]:.1f}" for layer in layers) + " |")
    return "\n".join(lines)


def plot_probes(results: dict[str, dict[str, float]], path: Path, title: str = "") -> None:
    """Accuracy vs layer, one line per model."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, accs in results.items():
        ax.plot(list(accs), list(accs.values()), marker="o", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_probe_report(run_dir: Path, results: dict[str, dict[str, float]], title: str, note: str = "",
                       extra: str = "") -> Path:
    """Write report.md and probes.png into run_dir; returns the report path."""
    run_dir = Path(run_dir)
    plot_probes(results, run_dir / "probes.png", title)
    text = f"# {title}\n\n{note}\n\nLinear probe top-1 (%) per layer:\n\n{probe_table(results)}\n\n![probes](probes.png)\n"
    if extra:
        text += "\n" + extra + "\n"
    path = run_dir / "report.md"
    path.write_text(text)
    return path


def cluster_grid(images: np.ndarray, features: torch.Tensor, labels: torch.Tensor, path: Path,
                 max_clusters: int = 16, per_cluster: int = 10, scale: int = 2) -> Path:
    """PNG grid: one row per cluster (largest first), its images closest to the cluster's mean feature."""
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
            row[:, j * w:(j + 1) * w] = images[i]
        rows.append(row)
    grid = np.concatenate(rows) if rows else np.zeros((h, w, 3), np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    return path

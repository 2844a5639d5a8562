"""Reports: a markdown table of per-layer probe accuracy and its plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

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

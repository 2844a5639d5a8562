"""`selfsup demo`: its grid, and a finished demo being reused (the study machinery itself is tested in test_study).

A finished demo is written here as a real one leaves it, cell by cell (probes.json with the cell's config, conv1
filters), with numbers made up so that what the report and results.json show can be told from anything computed.
Nothing is trained: the check is that the demo's command finds its cells finished and reuses them.
"""

import json

import numpy as np

from selfsup.cli import main
from selfsup.config import config_to_dict
from selfsup.demo import demo_study

CELLS = ["rotnet__all", "rotnet__astronaut", "simclr__all", "simclr__astronaut", "random__all", "supervised__all"]


def test_demo_study_grid():
    cells = {c.name: c for c in demo_study().cells()}
    assert list(cells) == CELLS
    assert cells["rotnet__astronaut"].config.data.source == "image:skimage/astronaut"
    assert cells["simclr__all"].config.augment.jitter_p == 0.8 and cells["rotnet__all"].config.augment.jitter_p == 0
    assert cells["supervised__all"].config.epochs == 5 * cells["rotnet__all"].config.epochs == 20
    e = cells["simclr__all"].config.eval
    assert (e.probe_dims, e.knn_k, e.few_labels, e.few_label_draws) == (1, 20, 10, 5)  # layers as vectors
    assert {c.config.eval.source for c in cells.values()} == {"digits"}  # every cell probed on the same split


def _finished_demo(out, epochs: int) -> dict:
    rng = np.random.default_rng(0)
    saved = {}
    for i, cell in enumerate(demo_study(epochs).cells()):
        cell_dir = out / "cells" / cell.name
        cell_dir.mkdir(parents=True)
        np.save(cell_dir / "conv1_filters.npy", rng.normal(size=(16, 3, 5, 5)).astype(np.float32))
        if cell.method != "random":
            np.save(cell_dir / "conv1_change.npy", rng.normal(size=(16, 3, 5, 5)).astype(np.float32))
        saved[cell.name] = {"cell": cell.name, "label": cell.label, "method": cell.method, "source": cell.source,
                            "linear": {f"conv{j}": 11.0 * (i + 1) + j for j in range(1, 6)}, "knn": 30.5 + i,
                            "layer_knn": {f"conv{j}": 10.0 * (i + 1) + j for j in range(1, 6)},
                            "few_labels": {f"conv{j}": [5.0 * (i + 1) + j, 0.5] for j in range(1, 6)},
                            "epochs": epochs}
        (cell_dir / "probes.json").write_text(json.dumps({**saved[cell.name], "config": config_to_dict(cell.config)}))
    return saved


def test_a_finished_demo_is_reused_not_retrained(tmp_path, capsys):
    out = tmp_path / "demo"
    saved = _finished_demo(out, epochs=1)
    probes = {name: (out / "cells" / name / "probes.json").read_text() for name in CELLS}

    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == saved  # the cells' own numbers, nothing recomputed
    for name in CELLS:
        assert not (out / "cells" / name / "checkpoint.pt").exists()  # nothing trained
        assert (out / "cells" / name / "probes.json").read_text() == probes[name]
    report = (out / "report.md").read_text()
    assert "    selfsup demo --epochs 1\n" in report
    assert "| rotnet · 1 image (astronaut) | 23.0 | 24.0 | 25.0 | 26.0 | 27.0 | 31.5 |" in report
    assert "| random init | 56.0 |" in report and "| supervised · all images | 67.0 |" in report
    assert "| rotnet · 1 image (astronaut) | 21.0 | 22.0 |" in report  # kNN per layer
    assert "| random init | 26.0 ± 0.5 | 27.0 ± 0.5 |" in report  # few labels
    # The summary counts from the few-label table: the cells before random init in the grid are below it.
    assert "rotnet · all images: 0 of 5 layers; " in report and "simclr · 1 image (astronaut): 0 of 5 layers" in report
    # The demo prints its report (the tables and what they show), then where the pictures are.
    assert "What you are looking at:" in printed and "| random init | 26.0 ± 0.5 |" in printed
    assert "![" not in printed and f"report with pictures: {out / 'report.md'}" in printed
    for png in ("layers.png", "filters.png", "filter_changes.png", "sources.png"):
        assert (out / png).stat().st_size > 1000

    # The default demo (4 epochs) is another grid: the 1-epoch cells are neither reused as its results nor replaced.
    capsys.readouterr()
    assert main(["demo", "--out", str(out)]) == 2
    assert "6 of 6 cells failed" in capsys.readouterr().err
    assert all((out / "cells" / name / "probes.json").read_text() == probes[name] for name in CELLS)

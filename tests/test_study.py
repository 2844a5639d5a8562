import json

import numpy as np
import pytest

from selfsup.data import load_source
from selfsup.engine import load_checkpoint, load_run, save_checkpoint
from selfsup.errors import SelfSupError
from selfsup.eval.protocols import knn
from selfsup.study import make_study, run_study, source_slug, write_study_report

BASE = {"epochs": 1, "batch_size": 32, "log_every": 2,
        "data": {"source": "digits", "size": 16, "samples_per_epoch": 64},
        "model": {"backbone": "alexnet_small", "width": 0.125, "input_size": 16},
        "augment": {"size": 16},
        "eval": {"source": "digits", "size": 16, "knn_every": 0, "probe_dims": 64, "probe_epochs": 1}}


def _study(**kw):
    spec = {"methods": ["rotnet"], "sources": ["all", "image:skimage/astronaut"], "baselines": ["random"], "base": BASE}
    spec.update(kw)
    return make_study(spec)


def test_cells_and_their_configs():
    study = _study(sources=["all", "2", "image:skimage/coffee"], baselines=["random", "supervised"],
                   overrides={"supervised": {"epochs": 3}})
    cells = {c.name: c for c in study.cells()}
    assert list(cells) == ["rotnet__all", "rotnet__n2", "rotnet__coffee", "random__all", "supervised__all"]
    assert cells["rotnet__n2"].config.data.num_images == 2 and cells["rotnet__n2"].config.data.source == "digits"
    assert cells["rotnet__coffee"].config.data.source == "image:skimage/coffee"
    assert cells["rotnet__all"].config.data.samples_per_epoch == 64
    # supervised keeps a label per image: it trains on real epochs, with its own overrides
    assert (cells["supervised__all"].config.data.samples_per_epoch is None
            and cells["supervised__all"].config.epochs == 3)
    assert source_slug("image:photos/beach.jpg") == "beach"


@pytest.mark.parametrize("spec, message", [
    ({"methods": ["rotnet"], "sources": ["all"], "extra": 1}, "unknown study keys"),
    ({"methods": ["nope"], "sources": ["all"]}, "unknown study method"),
    ({"methods": ["supervised"], "sources": ["all"]}, "unknown study method"),
    ({"methods": ["rotnet"], "sources": ["half"]}, "source 'half'"),
    ({"methods": ["rotnet"], "sources": ["all"], "baselines": ["imagenet"]}, "unknown baseline"),
    ({"methods": ["rotnet"], "sources": []}, "at least one method"),
    ({"methods": ["rotnet"], "sources": ["all"], "base": {"epochz": 1}}, "unknown config key"),
])
def test_bad_study_files_fail_with_one_line(spec, message):
    with pytest.raises(SelfSupError, match=message):
        make_study(spec)


def test_study_resumes_without_redoing_finished_cells(tmp_path):
    study = _study()
    first = run_study(study, tmp_path, progress=False)
    assert set(first) == {"rotnet__all", "rotnet__astronaut", "random__all"}
    for r in first.values():
        assert list(r["linear"]) == ["conv1", "conv2", "conv3", "conv4", "conv5"] and 0 <= r["knn"] <= 100
    # Recomputed from the saved runs with the public kNN: the trained cell's number is its final weights', and the
    # random-init baseline is the backbone the runs started from (load_run(random_init=True)), not some other draw.
    digits = [load_source("digits", split, size=16) for split in ("train", "test")]
    cell = tmp_path / "cells" / "rotnet__all"
    assert first["rotnet__all"]["knn"] == round(knn(load_run(cell), *digits), 2)
    assert first["random__all"]["knn"] == round(knn(load_run(cell, random_init=True), *digits), 2)
    assert first["random__all"]["knn"] != first["rotnet__all"]["knn"]
    # The cell's probes also went to its TensorBoard, at the epoch of its checkpoint.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(cell / "tb"))
    events.Reload()
    logged = events.Scalars("eval/study/linear/conv1")
    assert [(e.step, round(e.value, 2)) for e in logged] == [(1, first["rotnet__all"]["linear"]["conv1"])]
    ckpt = tmp_path / "cells" / "rotnet__all" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    random_probes = (tmp_path / "cells" / "random__all" / "probes.json").stat().st_mtime_ns
    (tmp_path / "cells" / "rotnet__all" / "probes.json").unlink()  # interrupted while probing
    second = run_study(study, tmp_path, progress=False)
    assert ckpt.stat().st_mtime_ns == stamp  # probed again, not retrained
    assert second["rotnet__all"]["linear"] == first["rotnet__all"]["linear"]
    assert (tmp_path / "cells" / "random__all" / "probes.json").stat().st_mtime_ns == random_probes  # reused


def test_interrupted_cell_resumes_and_other_configs_need_force(tmp_path):
    one_epoch = _study(sources=["image:skimage/astronaut"], baselines=[])
    run_study(one_epoch, tmp_path, progress=False)
    cell = tmp_path / "cells" / "rotnet__astronaut"
    two_epochs = _study(sources=["image:skimage/astronaut"], baselines=[], overrides={"rotnet": {"epochs": 2}})
    with pytest.raises(SelfSupError, match="1 of 1 cells failed"):
        run_study(two_epochs, tmp_path, progress=False)  # a finished 1-epoch run is not silently replaced
    # As if the cell had been started with 2 epochs and stopped after the first: its checkpoint says so.
    (cell / "probes.json").unlink()
    state = load_checkpoint(cell)
    state["config"]["epochs"] = 2
    save_checkpoint(cell, state)
    result = run_study(two_epochs, tmp_path, progress=False)["rotnet__astronaut"]
    epochs = [json.loads(line)["epoch"] for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and result["epochs"] == 2  # continued from epoch 1, not restarted
    forced = run_study(one_epoch, tmp_path, force=True, progress=False)["rotnet__astronaut"]
    assert forced["epochs"] == 1
    assert [json.loads(x)["epoch"] for x in (cell / "metrics.jsonl").read_text().splitlines()] == [1]


def test_report_from_a_fake_grid(tmp_path):
    study = _study(sources=["all", "image:skimage/astronaut"], baselines=["random"])
    results = {}
    rng = np.random.default_rng(0)
    for i, cell in enumerate(study.cells()):
        (tmp_path / "cells" / cell.name).mkdir(parents=True)
        np.save(tmp_path / "cells" / cell.name / "conv1_filters.npy", rng.normal(size=(12, 3, 5, 5)).astype(np.float32))
        results[cell.name] = {"cell": cell.name, "label": cell.label, "method": cell.method, "source": cell.source,
                              "linear": {f"conv{j}": 50.0 + i + j for j in range(1, 6)}, "knn": 40.0 + i}
    report = write_study_report(study, results, tmp_path, command="selfsup study single-image fake.yaml").read_text()
    assert "| rotnet · all images | 51.0 | 52.0 | 53.0 | 54.0 | 55.0 | 40.0 |" in report
    assert "| rotnet · 1 image (astronaut) | 52.0 |" in report and "| random init | 53.0 |" in report
    assert "selfsup study single-image fake.yaml" in report
    for png in ("layers.png", "filters.png", "sources.png"):
        assert (tmp_path / png).stat().st_size > 2000


def test_report_with_few_label_probes_counts_what_it_shows(tmp_path):
    """kNN and few-label tables, and the summary sentence counted from them: a layer counts as beaten when the mean
    is higher by more than the larger standard deviation, and one image is level where it is within one."""
    study = _study(sources=["all", "image:skimage/astronaut"], baselines=["random"])
    study.base["eval"] = {**study.base.get("eval", {}), "few_labels": 10, "few_label_draws": 5}
    few = {"rotnet__all": [[60, 1], [70, 1], [80, 1], [80, 1], [80, 1]],
           "rotnet__astronaut": [[60, 1], [69.5, 1], [70, 2], [60, 1], [60, 1]],
           "random__all": [[59.5, 1], [60, 1], [65, 1], [70, 1], [79, 3]]}
    results = {}
    for cell in study.cells():
        (tmp_path / "cells" / cell.name).mkdir(parents=True)
        np.save(tmp_path / "cells" / cell.name / "conv1_filters.npy", np.ones((4, 3, 5, 5), np.float32))
        if cell.method != "random":
            np.save(tmp_path / "cells" / cell.name / "conv1_change.npy", np.full((4, 3, 5, 5), 0.5, np.float32))
        layers = [f"conv{j}" for j in range(1, 6)]
        results[cell.name] = {"cell": cell.name, "label": cell.label, "method": cell.method, "source": cell.source,
                              "linear": dict.fromkeys(layers, 50.0), "knn": 40.0,
                              "layer_knn": {layer: 70.0 + j for j, layer in enumerate(layers)},
                              "few_labels": dict(zip(layers, few[cell.name]))}
    report = write_study_report(study, results, tmp_path).read_text()
    assert "| rotnet · all images | 60.0 ± 1.0 | 70.0 ± 1.0 | 80.0 ± 1.0 | 80.0 ± 1.0 | 80.0 ± 1.0 |" in report
    assert "| random init | 70.0 | 71.0 | 72.0 | 73.0 | 74.0 |" in report  # the kNN table
    assert "rotnet · all images: 3 of 5 layers (conv2, conv3, conv4)" in report  # conv5: 80 vs 79 ± 3
    assert "rotnet · 1 image (astronaut): 2 of 5 layers (conv2, conv3)" in report  # conv3: 70 ± 2 vs 65 ± 1
    assert ("rotnet · 1 image (astronaut) is within a standard deviation of (or above) rotnet on all images on "
            "conv1, conv2.") in report
    assert "What you are looking at:" in report
    assert (tmp_path / "filter_changes.png").stat().st_size > 2000


def test_new_probe_settings_reprobe_without_retraining(tmp_path):
    run_study(_study(sources=["all"], baselines=[]), tmp_path, progress=False)
    ckpt = tmp_path / "cells" / "rotnet__all" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    base = {**BASE, "eval": {**BASE["eval"], "probe_epochs": 2}}
    result = run_study(_study(sources=["all"], baselines=[], base=base), tmp_path, progress=False)["rotnet__all"]
    assert ckpt.stat().st_mtime_ns == stamp and result["config"]["eval"]["probe_epochs"] == 2
    assert result["probe_minutes"] >= 0


def test_cell_without_checkpoint_starts_over(tmp_path):
    cell = tmp_path / "cells" / "rotnet__all"
    cell.mkdir(parents=True)
    (cell / "config.yaml").write_text("epochs: 1\n")  # a run stopped before its first checkpoint
    result = run_study(_study(sources=["all"], baselines=[]), tmp_path, progress=False)["rotnet__all"]
    assert result["epochs"] == 1 and (cell / "checkpoint.pt").is_file()


def test_cli_study_errors_are_one_line(tmp_path, capsys):
    from selfsup.cli import main

    assert main(["study", "single-image", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip() == (f"selfsup: error: study file {tmp_path / 'missing.yaml'} "
                                               "does not exist; give a YAML file such as recipes/single_image_cpu.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [rotnet]\nsources: [all]\nbase: {epochs: 1}\n")
    assert main(["study", "single-image", str(bad), "--methods", "rotnet,nope"]) == 2
    assert "unknown study method 'nope'" in capsys.readouterr().err


def test_a_failed_cell_does_not_stop_the_others(tmp_path):
    run_study(_study(sources=["all"], baselines=[]), tmp_path, progress=False)
    clash = _study(sources=["all", "image:skimage/astronaut"], overrides={"rotnet": {"optim": {"lr": 0.05}}},
                   baselines=["random"])
    with pytest.raises(SelfSupError, match=r"1 of 3 cells failed \(rotnet__all\)"):
        run_study(clash, tmp_path, progress=False)  # rotnet__all was trained with lr 0.1: kept, reported as failed
    assert (tmp_path / "cells" / "rotnet__astronaut" / "probes.json").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "- rotnet__all: " in report and "another config" in report and "| random init |" in report


def test_cli_runs_a_study_and_names_its_command(tmp_path, capsys):
    import yaml

    from selfsup.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"methods": ["rotnet"], "sources": ["all"], "base": BASE}))
    out = tmp_path / "study"
    assert main(["study", "single-image", str(spec), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-2])["rotnet__all"]["knn"] >= 0
    assert f"selfsup study single-image {spec} --out {out}" in (out / "report.md").read_text()

"""`selfsup bench` end to end at tiny sizes: every part measured in its own process, the files written, ratios sane."""

import json
import math

import pytest
import torch

from selfsup.augmentation import AugmentConfig
from selfsup.bench import MODES, bench
from selfsup.bench.items import PerSampleViews, _views_transform
from selfsup.errors import SelfSupError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    md, results = bench(["rotnet"], "cpu", out, tiny=True, skip={"pot"}, progress=False)
    return out, md, results


def test_every_item_runs_and_the_files_are_written(tiny_run):
    out, md, results = tiny_run
    assert [r for r in results if "error" in r["result"]] == []
    saved = json.loads(md.with_suffix(".json").read_text())
    assert saved["meta"]["device"] == "cpu" and saved["meta"]["skipped"] == ["pot"]
    assert len(saved["results"]) == len(results) == 3 + 1 + 3 + 3 + 2
    text = md.read_text()
    for heading in ("## Pretraining throughput", "## Sinkhorn-Knopp", "## Evaluation over cached features"):
        assert heading in text
    assert "| rotnet |" in text and "POT ot.sinkhorn" not in text


def test_throughput_is_measured_three_ways_with_memory(tiny_run):
    _, _, results = tiny_run
    modes = {r["item"]["mode"]: r["result"] for r in results if r["item"]["kind"] == "throughput"}
    assert set(modes) == set(MODES)
    for result in modes.values():
        assert result["images_per_second"] > 0 and result["peak_mb"] > 100  # torch alone is a few hundred MB
        assert result["seconds_per_epoch"] == pytest.approx(50_000 / result["images_per_second"], rel=0.01)


def test_sinkhorn_stability_rows_show_which_solvers_survive_lambda_100(tiny_run):
    _, _, results = tiny_run
    stable = {r["item"]["solver"]: r["result"] for r in results if r["item"].get("stability")}
    assert stable["selfsup"]["finite"] and stable["log"]["finite"]
    assert not stable["plain"]["finite"]  # the textbook kernel exp(100 log P) underflows and divides by zero
    main = [r["result"] for r in results if r["item"]["kind"] == "sinkhorn" and not r["item"].get("stability")]
    # Steady-state cost is a difference of two timings: at these sizes it is noise, but it must be a number.
    assert all(math.isfinite(r["seconds_per_iteration"]) and r["run_seconds"] > 0 for r in main)
    bandwidth = next(r["result"] for r in results if r["item"]["kind"] == "bandwidth")
    assert bandwidth["bytes_per_second"] > 1e8


def test_an_existing_results_file_is_kept_without_force(tiny_run):
    out, md, _ = tiny_run
    before = md.read_text()
    with pytest.raises(SelfSupError, match="--force"):
        bench(["rotnet"], "cpu", out, tiny=True, skip={"pot", "sinkhorn", "knn", "dataloader"}, progress=False)
    assert md.read_text() == before


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(SelfSupError, match="unknown method"):
        bench(["rotnet", "nope"], "cpu", tmp_path, tiny=True)
    with pytest.raises(SelfSupError, match="--skip"):
        bench(["rotnet"], "cpu", tmp_path, tiny=True, skip={"everything"})
    with pytest.raises(SelfSupError, match="bench setting"):
        bench(["rotnet"], "cpu", tmp_path, tiny=True, overrides={"stepz": "3"})
    assert list(tmp_path.iterdir()) == []


def test_the_dataloader_baseline_makes_normalised_views_one_image_at_a_time():
    images = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8).numpy()
    data = PerSampleViews(images, _views_transform(AugmentConfig(size=24), 24), views=2)
    index, views = data[3]
    assert index == 3 and len(views) == 2
    assert all(v.shape == (3, 24, 24) and v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1])  # two independent draws
    assert -3 < float(views[0].min()) < 0 < float(views[0].max()) < 3  # ImageNet-normalised, not [0, 255]

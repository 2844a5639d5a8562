"""`selfsup bench` at tiny sizes: the plan's items measured (here in this process), the files written, the ratios in
the report the ones measured; and one item in a fresh process, as bench runs each, reporting its own memory."""

import json
import math
import re

import pytest
import torch

import selfsup.bench
from selfsup.augmentation import AugmentConfig
from selfsup.bench import MODES, bench, plan, settings, write_report
from selfsup.bench.items import PerSampleViews, _views_transform, run_item
from selfsup.errors import SelfSupError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny bench run, every item in this process (the fresh process per item is tested once, below)."""
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SELFSUP_CACHE", str(tmp_path_factory.mktemp("cache")))  # module fixtures run before conftest's
        patch.setattr(selfsup.bench, "_in_fresh_process", run_item)
        md, results = bench(["rotnet"], "cpu", out, tiny=True, skip={"pot"}, progress=False)
    return out, md, results


def test_the_files_hold_every_planned_item(tiny_run):
    out, md, results = tiny_run
    saved = json.loads(md.with_suffix(".json").read_text())
    assert saved["meta"]["device"] == "cpu" and saved["meta"]["skipped"] == ["pot"]
    expected = plan(["rotnet"], settings(torch.device("cpu"), tiny=True), "cpu", {"pot"})
    assert len(expected) == 3 + 1 + 3 + 3 + 2
    assert [r["item"] for r in saved["results"]] == expected
    assert saved["results"] == json.loads(json.dumps(results))
    assert all("error" not in r["result"] and r["result"]["peak_mb"] > 0 for r in saved["results"])
    text = md.read_text()
    for heading in ("## Pretraining throughput", "## Sinkhorn-Knopp", "## Evaluation over cached features"):
        assert heading in text
    assert "POT ot.sinkhorn" not in text and "## Items that failed" not in text


def _cells(text: str, first: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith(f"| {first} |"))
    return [c.strip() for c in row.strip("|").split("|")][1:]


def test_the_reported_ratios_are_the_measured_ones(tiny_run):
    _, md, results = tiny_run
    ips = {r["item"]["mode"]: r["result"]["images_per_second"] for r in results if r["item"]["kind"] == "throughput"}
    assert set(ips) == set(MODES) and all(math.isfinite(v) and v > 0 for v in ips.values())
    cells = _cells(md.read_text(), "rotnet")
    assert [float(cells[i].replace(",", "")) for i in (0, 2, 4)] == [round(ips[m]) for m in MODES]
    floor_ratio, loader_ratio = (float(c.rstrip("x").replace(",", "")) for c in cells[6:8])
    # selfsup / floor in time is floor images/s over selfsup images/s: two measurements of one run, not a constant.
    assert floor_ratio == pytest.approx(ips["floor"] / ips["selfsup"], abs=0.006) and floor_ratio > 0
    assert loader_ratio == pytest.approx(ips["selfsup"] / ips["dataloader"], abs=0.006) and loader_ratio > 0


def test_sinkhorn_stability_rows_show_which_solvers_survive_lambda_100(tiny_run):
    _, _, results = tiny_run
    stable = {r["item"]["solver"]: r["result"] for r in results if r["item"].get("stability")}
    assert stable["selfsup"]["finite"] and stable["log"]["finite"]
    assert not stable["plain"]["finite"]  # the textbook kernel exp(100 log P) underflows and divides by zero
    main = [r["result"] for r in results if r["item"]["kind"] == "sinkhorn" and not r["item"].get("stability")]
    # Steady-state cost is a difference of two timings: at these sizes it is noise, but it must be a number.
    assert all(math.isfinite(r["seconds_per_iteration"]) and r["run_seconds"] > 0 for r in main)


def test_an_item_in_a_fresh_process_reports_its_own_peak_memory():
    s = settings(torch.device("cpu"), tiny=True)
    result = selfsup.bench._in_fresh_process({"kind": "bandwidth", "device": "cpu", "settings": s})
    assert "error" not in result, result
    assert result["bytes_per_second"] > 1e8
    assert result["peak_mb"] > 2 * s["bandwidth_mb"]  # the copy's source and destination were resident in it


def test_failed_items_are_listed_in_the_report(tmp_path):
    meta = {"device_name": "CPU", "date": "2024-01-01", "command": "selfsup bench", "cores": 2, "torch": "2",
            "threads": 2, "device": "cpu", "settings": settings(torch.device("cpu"), tiny=True)}
    item = {"kind": "throughput", "method": "rotnet", "mode": "floor", "settings": {}}
    write_report([{"item": item, "result": {"error": "RuntimeError: out of memory"}}], meta, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "## Items that failed" in text and "RuntimeError: out of memory" in text
    assert re.search(r"\| rotnet \| - \| - \| - \|", text)  # no number where nothing was measured


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
    view = _views_transform(AugmentConfig(size=24), 24)
    data = PerSampleViews(images, [view, view, _views_transform(AugmentConfig(size=24), 12)])  # + a local crop
    index, views = data[3]
    assert index == 3 and len(views) == 3
    assert [v.shape for v in views] == [(3, 24, 24), (3, 24, 24), (3, 12, 12)]
    assert all(v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1])  # two independent draws
    assert -3 < float(views[0].min()) < 0 < float(views[0].max()) < 3  # ImageNet-normalised, not [0, 255]

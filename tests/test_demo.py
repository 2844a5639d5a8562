import json

from selfsup.demo import demo_study, run_demo


def test_demo_study_grid():
    names = [c.name for c in demo_study().cells()]
    assert names == ["rotnet__all", "rotnet__astronaut", "simclr__all", "simclr__astronaut", "random__all",
                     "supervised__all"]


def test_demo_writes_study_report(tmp_path):
    results = run_demo(tmp_path / "demo", epochs=1, samples_per_epoch=256)
    assert len(results) == 6
    for r in results.values():
        assert list(r["linear"]) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
        assert all(0 <= a <= 100 for a in r["linear"].values()) and 0 <= r["knn"] <= 100
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| rotnet · 1 image (astronaut) |" in report and "| random init |" in report
    for png in ("layers.png", "filters.png", "sources.png"):
        assert (tmp_path / "demo" / png).stat().st_size > 1000
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {k: v["linear"] for k, v in saved.items()} == {k: v["linear"] for k, v in results.items()}

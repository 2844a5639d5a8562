import json

from selfsup.demo import run_demo


def test_demo_writes_report_with_both_nets(tmp_path):
    # A zero-minute budget stops pretraining after its first epoch; the rest of the demo runs as usual.
    results = run_demo(tmp_path / "demo", minutes=0.0)
    for protocol in ("linear", "knn"):
        assert set(results[protocol]) == {"single image (SimCLR)", "random init"}
        for accs in results[protocol].values():
            assert list(accs) == ["conv1", "conv2", "fc"] and all(0 <= a <= 100 for a in accs.values())
    report = (tmp_path / "demo" / "report.md").read_text()
    assert report.count("| single image (SimCLR) |") == 2 and report.count("| random init |") == 2
    assert (tmp_path / "demo" / "probes.png").stat().st_size > 1000
    assert json.loads((tmp_path / "demo" / "results.json").read_text()) == results

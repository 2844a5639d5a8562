"""benchmarks/gpu_check.sh: the one-command GPU check, rehearsed on the CPU with --tiny as it will run blind on a GPU
(the bench's results printed as they come, the SimCLR recipe after it, one results file)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_rehearsal_runs_every_step_and_writes_one_results_file(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "SELFSUP_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", "--out", str(tmp_path / "res"),
                           "--runs", str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # Partial results: each bench item on its own timestamped line, in order, before the SimCLR run starts.
    items = [int(m) for m in re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d bench \[(\d+)/\d+\]", out, re.M)]
    assert items and items == list(range(1, len(items) + 1))
    assert out.index("bench [1/") < out.index("recipes/simclr_cifar10_fast.yaml")
    assert "throughput simclr selfsup: images_per_second=" in out
    md = tmp_path / "res" / f"cpu-{date.today().isoformat()}.md"
    text = md.read_text()
    assert "## Pretraining throughput" in text and "| simclr |" in text and "| sela |" in text
    assert "## SimCLR recipe" in text and "1 epochs in" in text
    assert re.search(r"\| 1 \| \d+\.\d\d \|", text)  # the kNN after the (one) epoch
    meta = json.loads(md.with_suffix(".json").read_text())["meta"]
    assert meta["partial"] is False and "**Partial**" not in text
    assert (tmp_path / "runs" / "simclr_cifar10" / "checkpoint.pt").is_file()
    assert f"results: {md}" in out


def test_the_simclr_epochs_fit_the_time_left(tmp_path):
    check = _module()
    bench = tmp_path / "b.json"
    bench.write_text(json.dumps({"results": [
        {"item": {"kind": "throughput", "method": "simclr", "mode": "floor"}, "result": {"seconds_per_epoch": 1.0}},
        {"item": {"kind": "throughput", "method": "simclr", "mode": "selfsup"}, "result": {"seconds_per_epoch": 3.0}},
    ]}))
    assert check.simclr_epochs(bench, 300, tiny=False) == (86, 3.0)  # 300 s / (3.0 s * 1.15)
    assert check.simclr_epochs(bench, 1e6, tiny=False) == (200, 3.0)  # never more than the recipe's 200
    assert check.simclr_epochs(tmp_path / "missing.json", 300, tiny=False) == (60, None)


def test_without_a_gpu_it_says_to_rehearse_and_finds_no_missing_data(tmp_path, capsys):
    check = _module()
    assert check.find_data(str(tmp_path / "nowhere.tar.gz")) is None
    assert check.main(["--data", str(tmp_path / "nowhere.tar.gz"), "--device", "cpu"]) == 2
    assert "no GPU here: run with --tiny" in capsys.readouterr().out

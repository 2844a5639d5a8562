"""What a user sees of a run: progress in a job log, metrics.jsonl rows, periodic checkpoints, TensorBoard and W&B
contents, and the curves plot (selfsup plot and the end-of-run curves.png)."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.engine import fit, load_checkpoint, read_metrics
from selfsup.engine.checkpoint import foreign_files, read_checkpoint
from selfsup.errors import SelfSupError
from selfsup.progress import Progress, duration, say, set_interval, shown

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
TINY = {"method": "simclr", "data": {"source": "digits"}, "epochs": 2, "batch_size": 64, "log_every": 5,
        "model": {"backbone": "exemplar_small"}, "optim": {"warmup_epochs": 0}, "eval": {"knn_every": 1}}


def _cfg(**extra):
    return load_config(overrides={**TINY, **extra})


@pytest.fixture
def lines_mode(monkeypatch):
    monkeypatch.setenv("SELFSUP_PROGRESS", "lines")
    set_interval(0.0)  # a line at every update
    yield
    set_interval(None)


def test_progress_in_a_log_is_timestamped_lines_without_carriage_returns(lines_mode):
    out = io.StringIO()
    with Progress(4, "epoch 1/3", unit="img", per_step=64, file=out) as bar:
        for step in range(4):
            bar.set(loss=1.0 / (step + 1))
            bar.update()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 4  # one per update before the last, then the final one
    assert all(STAMP.match(line) for line in lines)
    assert "epoch 1/3: 2/4 (50%) loss=0.5" in lines[1] and "img/s" in lines[1] and "ETA" in lines[1]
    assert "4/4 (100%)" in lines[-1] and "done in" in lines[-1]


def test_short_work_prints_nothing_in_a_log_and_silenced_work_nothing_anywhere(monkeypatch):
    monkeypatch.setenv("SELFSUP_PROGRESS", "lines")
    out = io.StringIO()
    with Progress(3, "kNN", file=out) as bar:  # the default 30 s never passes
        for _ in range(3):
            bar.update()
    assert out.getvalue() == ""
    monkeypatch.setenv("SELFSUP_PROGRESS", "bar")
    with shown(False):
        with Progress(3, "kNN", file=out) as bar:
            bar.update(3)
        say("hello", file=out)
    assert out.getvalue() == ""
    say("hello", file=out)
    assert out.getvalue() == "hello\n"  # a terminal gets the line bare
    assert duration(3725) == "1h02m" and duration(65) == "1m05s" and duration(4.4) == "4s"


def test_a_piped_pretrain_log_reads_well(tmp_path):
    """`selfsup pretrain ... 2> log`: timestamped lines only, the run's first line says what trains where."""
    env = {**os.environ, "SELFSUP_LOG_SECONDS": "0.01"}
    env.pop("SELFSUP_PROGRESS", None)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "selfsup", "pretrain", "method=simclr", "data.source=digits",
                           "epochs=1", "batch_size=128", "model.backbone=exemplar_small", "optim.warmup_epochs=0",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    assert "\r" not in log
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines and all(STAMP.match(line) for line in lines), log
    first = lines[0]
    assert f"simclr run {out} (config {out / 'config.yaml'}) on cpu, 1 process;" in first
    assert "1,258 training images of 8x8 (digits)" in first and "9 steps of 128" in first
    assert any(re.search(r"epoch 1/1: \d+/9 \(\d+%\) loss=\S+ lr=\S+ \| [\d.]+ img/s", line) for line in lines)
    assert any("features of" in line for line in lines)  # the kNN monitor's feature pass reports too
    assert any(re.search(r"epoch=1 loss=[\d.]+ .*knn_top1=", line) for line in lines)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One 2-epoch run with per-step rows, a checkpoint kept every epoch, and TensorBoard."""
    out = tmp_path_factory.mktemp("logged") / "run"
    fit(None, None, _cfg(log_steps=True, checkpoint={"save_every": 1}), out, progress=False)
    return out


def test_metrics_have_wall_clock_and_optional_step_rows(logged_run):
    epochs = read_metrics(logged_run)
    rows = read_metrics(logged_run, steps=True)
    assert [m["epoch"] for m in epochs] == [1, 2]
    assert all(m["wall_time"] > 1.7e9 for m in rows)  # Unix seconds
    assert epochs[0]["wall_time"] < epochs[1]["wall_time"]
    steps = [r for r in rows if "step" in r]
    # 19 steps an epoch, a row every 5 steps and at the last: 5, 10, 15, 19, then 24 ... 38.
    assert [r["step"] for r in steps] == [5, 10, 15, 19, 24, 29, 34, 38]
    assert [r["epoch"] for r in steps] == [1] * 4 + [2] * 4
    assert all(set(r) >= {"loss", "lr", "wall_time"} for r in steps)
    # Each epoch's step rows come before its line, and the checkpoint's history holds them all (resume rewrites
    # metrics.jsonl from it).
    assert [("step" in r, r["epoch"]) for r in rows] == [(True, 1)] * 4 + [(False, 1)] + [(True, 2)] * 4 + [(False, 2)]
    assert load_checkpoint(logged_run)["history"] == rows


def test_save_every_keeps_periodic_checkpoints(logged_run):
    kept = sorted(p.name for p in logged_run.glob("checkpoint-epoch*.pt"))
    assert kept == ["checkpoint-epoch0001.pt", "checkpoint-epoch0002.pt"]
    first = read_checkpoint(logged_run / kept[0])  # verified against its digest
    last = load_checkpoint(logged_run)
    assert first["epoch"] == 1 and last["epoch"] == 2
    assert read_checkpoint(logged_run / kept[1])["method"].keys() == last["method"].keys()
    name = next(k for k, v in last["method"].items() if v.is_floating_point())
    assert not torch.equal(first["method"][name], last["method"][name])  # epoch 1's weights, kept
    assert foreign_files(logged_run) == []  # selfsup's own files: a --force replacing this run deletes them


def test_tensorboard_has_config_images_scalars_and_eval_results(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["eval", "knn", str(logged_run), "eval.knn_k=20"]) == 0
    events = EventAccumulator(str(logged_run / "tb"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "epoch/loss", "epoch/knn_top1", "eval/knn/knn_top1"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("epoch/loss")] == [1, 2]
    assert events.Scalars("eval/knn/knn_top1")[0].step == 2  # the epoch of the checkpoint it measured
    eval_line = json.loads((logged_run / "eval.jsonl").read_text().splitlines()[-1])
    assert events.Scalars("eval/knn/knn_top1")[0].value == pytest.approx(eval_line["knn_top1"])
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "method: simclr" in config and "save_every: 1" in config
    image = events.Images("train/augmented_views")[0]
    picture = Image.open(io.BytesIO(image.encoded_image_string))
    assert picture.size == (image.width, image.height) and image.height > 3 * 32  # three rows of 32 px, upscaled
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    hparams = {v.tag: v.metadata.plugin_data for f in (logged_run / "tb").iterdir()
               for event in EventFileLoader(str(f)).Load() for v in event.summary.value
               if v.tag.startswith("_hparams_")}
    start = hparams["_hparams_/session_start_info"]  # the config as hparams, flattened
    assert start.plugin_name == "hparams" and b"optim.lr" in start.content and b"checkpoint.save_every" in start.content


def test_end_of_run_curves_and_selfsup_plot(logged_run, tmp_path, capsys):
    curves = Image.open(logged_run / "curves.png")
    assert curves.size[0] > 1000 and curves.size[1] > 300
    other = tmp_path / "other"
    fit(None, None, _cfg(epochs=1), other, progress=False)
    output = tmp_path / "both.png"
    assert main(["plot", str(logged_run), str(other), "-o", str(output)]) == 0
    assert f"plot: {output}" in capsys.readouterr().out
    assert Image.open(output).size == curves.size
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 2
    assert "has no epochs in metrics.jsonl yet" in capsys.readouterr().err


def test_plot_draws_the_runs_numbers(tmp_path):
    """The plot's lines carry exactly the metrics' values (read back from the drawn figure's data)."""
    from selfsup import report

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": 1, "loss": 3.0, "lr": 0.1}, {"epoch": 2, "loss": 2.0, "lr": 0.05, "knn_top1": 40.0},
            {"epoch": 2, "step": 7, "loss": 2.5, "lr": 0.07}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = {}
    real_savefig = report.Figure.savefig

    def capture(fig, path, *args, **kwargs):
        drawn.update({ax.get_title(): [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines]
                      for ax in fig.axes})
        drawn.update({f"{ax.get_title()} text": [t.get_text() for t in ax.texts] for ax in fig.axes})
        return real_savefig(fig, path, *args, **kwargs)

    report.Figure.savefig = capture
    try:
        report.plot_runs([run], tmp_path / "x.png")
    finally:
        report.Figure.savefig = real_savefig
    assert drawn["training loss"] == [([1, 2], [3.0, 2.0]), ([2.0], [2.5])]  # epoch means, then the step row
    assert drawn["kNN top-1 (%)"] == [([2], [40.0])]
    (run / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # a run without kNN: that panel says so
    report.Figure.savefig = capture
    try:
        report.plot_runs([run], tmp_path / "y.png")
    finally:
        report.Figure.savefig = real_savefig
    assert drawn["kNN top-1 (%)"] == [] and drawn["kNN top-1 (%) text"] == ["not measured"]


def test_wandb_offline_gets_config_scalars_and_images(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    fit(None, None, _cfg(epochs=1, logger=["wandb"]), out, progress=False)
    assert not (out / "tb").exists()  # only the loggers asked for
    run_id = (out / "wandb-id.txt").read_text().strip()
    [folder] = (out / "wandb").glob(f"offline-run-*-{run_id}")
    # The offline run's record log holds every key logged and the config, as W&B will sync them.
    record = (folder / f"run-{run_id}.wandb").read_bytes()
    for key in (b"train/loss", b"train/step", b"epoch/loss", b"epoch/knn_top1", b"exemplar_small", b"simclr"):
        assert key in record, key
    assert list((folder / "files" / "media" / "images").rglob("augmented_views*.png"))


def test_unknown_or_missing_loggers_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(SelfSupError, match="logger 'mlflow' is not known; use a list of tensorboard and wandb"):
        fit(None, None, _cfg(logger=["mlflow"]), tmp_path / "a", progress=False)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(SelfSupError, match=r"logger wandb needs the wandb package: pip install 'selfsup\[wandb\]'"):
        fit(None, None, _cfg(logger=["wandb"]), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_clustering_run_ends_with_its_clusters(tmp_path):
    out = tmp_path / "sela"
    fit(None, None, load_config(overrides={**TINY, "method": "sela", "epochs": 1, "sela": {"num_clusters": 10}}),
        out, progress=False)
    grid = Image.open(out / "clusters.png")
    # At most 16 rows (clusters, largest first) of 10 images of 8x8 px upscaled twice.
    assert grid.size[0] == 10 * 8 * 2 and grid.size[1] % 16 == 0 and grid.size[1] <= 16 * 16


def test_step_rows_survive_a_resume(tmp_path):
    """A run stopped after epoch 1 (max_minutes=0) and resumed writes the same rows as one run straight through."""
    cfg = _cfg(log_steps=True)
    fit(None, None, cfg, tmp_path / "straight", progress=False)
    fit(None, None, _cfg(log_steps=True, max_minutes=0), tmp_path / "split", progress=False)
    assert [r["epoch"] for r in read_metrics(tmp_path / "split")] == [1]
    fit(None, None, cfg, tmp_path / "split", resume=True, progress=False)

    def untimed(run):
        skip = ("wall_time", "epoch_seconds", "images_per_second")
        return [{k: v for k, v in r.items() if k not in skip} for r in read_metrics(run, steps=True)]

    assert untimed(tmp_path / "split") == untimed(tmp_path / "straight")
    assert sum("step" in r for r in untimed(tmp_path / "split")) == 8


def _refuse(**kwargs):
    raise RuntimeError("No API key configured. Use `wandb login` to log in.\nmore detail")


def test_a_wandb_that_cannot_start_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "init", _refuse)
    out = tmp_path / "run"
    with pytest.raises(SelfSupError) as caught:
        fit(None, None, _cfg(epochs=1, logger=["tensorboard", "wandb"]), out, progress=False)
    assert str(caught.value) == ("W&B could not start a run (No API key configured. Use `wandb login` to log in.); "
                                 "log in with `wandb login`, set WANDB_MODE=offline, or drop wandb from logger")
    assert not out.exists()  # no config, no TensorBoard file, no W&B folder: the same command can simply run again
    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    fit(None, None, _cfg(epochs=1, logger=["tensorboard", "wandb"]), out, progress=False)
    assert (out / "checkpoint.pt").is_file() and (out / "wandb-id.txt").is_file()


def _loggers_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    import wandb

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    wandb.init = _refuse
    try:
        torch.set_num_threads(1)
        fit(None, None, _cfg(epochs=1, device="cpu", logger=["wandb"]), Path(out_dir) / "run", progress=False)
        message = "trained"
    except SelfSupError as e:
        message = str(e)
    finally:
        dist.destroy_process_group()
    (Path(out_dir) / f"rank{rank}.txt").write_text(message)


def test_under_torchrun_every_rank_stops_when_rank_0_cannot_open_its_loggers(tmp_path):
    pytest.importorskip("wandb")
    import torch.multiprocessing as mp

    mp.spawn(_loggers_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0.txt").read_text().startswith("W&B could not start a run (No API key configured.")
    assert (tmp_path / "rank1.txt").read_text() == "rank 0 could not open the run's loggers (its error says why)"
    assert not (tmp_path / "run").exists()


def test_a_clustering_picture_leaves_out_unlabelled_samples():
    from selfsup.report import cluster_picture

    images = np.zeros((6, 4, 4, 3), np.uint8)
    images[:, :, :, 0] = np.arange(6)[:, None, None] * 40
    grid = cluster_picture(images, torch.eye(6), torch.tensor([1, -1, 1, 0, -1, 0]), per_cluster=3, scale=1)
    assert grid.shape == (2 * 4, 3 * 4, 3)  # two clusters (0 and 1), no row for -1
    # Images 2, 3 and 5 (image 0 is black, as the empty places are); never 1 or 4 (40 and 160).
    assert sorted({int(v) for v in grid[:, :, 0].flatten()} - {0}) == [80, 120, 200]
    empty = cluster_picture(images, torch.eye(6), torch.full((6,), -1), scale=1)
    assert empty.shape == (4, 4, 3) and not empty.any()

"""Nothing a user has is lost, nothing damaged is used silently: --force, the run lock, verified checkpoints, the
metrics and eval logs, the NaN stop, and a pretrain killed at random moments resuming bit-exactly."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from selfsup.config import config_to_dict
from selfsup.engine import RunLock, fit, load_checkpoint, pretrain, read_metrics
from selfsup.engine.checkpoint import CHECKPOINT, PREVIOUS, read_checkpoint
from selfsup.engine.lock import LOCK
from selfsup.errors import SelfSupError, SelfSupWarning
from selfsup.methods.simclr import SimCLR

sys.path.insert(0, str(Path(__file__).parent))
from test_train import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under path with its bytes: what must survive unchanged."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _flip(path: Path, count: int = 64) -> None:
    """Flip `count` bytes in the middle of a file; in a checkpoint, inside its largest tensor's stored bytes (where
    torch.load itself notices nothing)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            largest = max(archive.infolist(), key=lambda info: info.file_size)
        middle = largest.header_offset + largest.file_size // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def finished(tmp_path):
    """A finished two-epoch run (checkpoint.pt of epoch 2, checkpoint.prev.pt of epoch 1)."""
    run = tmp_path / "run"
    pretrain(tiny_config(eval={"knn_every": 0}), run, progress=False)
    return run


# ------------------------------------------------------------------------------------------------------ --force


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.txt").write_text("keep me")
    before = _tree(notes)
    with pytest.raises(SelfSupError, match="not a selfsup run"):
        pretrain(tiny_config(), notes, force=True, progress=False)
    assert _tree(notes) == before and not (notes / LOCK).exists()


def test_force_never_deletes_the_data_it_reads(tmp_path):
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(40):
        Image.new("RGB", (16, 16), (i * 6, 0, 0)).save(data / f"{i}.png")
    before = _tree(data)
    cfg = tiny_config(data={"source": f"folder:{data}", "size": None, "samples_per_epoch": None},
                      eval={"source": "digits"})
    with pytest.raises(SelfSupError, match="reads its data from"):
        pretrain(cfg, data, force=True, progress=False)
    # A folder holding the data is protected as well as the data folder itself.
    with pytest.raises(SelfSupError, match="reads its data from"):
        pretrain(cfg, tmp_path, force=True, progress=False)
    assert _tree(data) == before


def test_force_with_a_broken_new_config_keeps_the_old_run(finished):
    before = _tree(finished)
    with pytest.raises(SelfSupError, match="does not exist"):
        pretrain(tiny_config(data={"source": "folder:/no/such/folder"}), finished, force=True, progress=False)
    assert _tree(finished) == before
    assert not list(finished.parent.glob("run.old-*"))


def test_force_moves_the_old_run_aside_until_the_new_one_has_a_checkpoint(finished, monkeypatch):
    before = _tree(finished)
    # A new run that fails in its first epoch (NaN loss) brings the old run back, byte for byte.
    real_step = SimCLR.training_step
    monkeypatch.setattr(SimCLR, "training_step", lambda self, b: {"loss": real_step(self, b)["loss"] * float("nan")})
    with pytest.raises(SelfSupError, match="no checkpoint was written"):
        pretrain(tiny_config(epochs=1), finished, force=True, progress=False)
    assert _tree(finished) == before
    monkeypatch.undo()
    # A new run that succeeds replaces it, and the old one is gone once the new one has its checkpoint.
    seen = []
    real_save = SimCLR.state_dict

    def watch(self, *args, **kwargs):
        seen.append(sorted(p.name for p in finished.iterdir()))
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(SimCLR, "state_dict", watch)
    pretrain(tiny_config(epochs=1, seed=9), finished, force=True, progress=False)
    monkeypatch.undo()
    aside = [name for name in seen[0] if name.startswith(".replaced-")]
    assert aside and CHECKPOINT not in seen[0]  # the old run aside while the first epoch ran
    assert not (finished / aside[0]).exists()
    assert load_checkpoint(finished)["config"]["seed"] == 9 and not (finished / LOCK).exists()


def test_force_keeps_a_replaced_run_that_holds_files_selfsup_did_not_write(finished):
    (finished / "labels.csv").write_text("index,label\n")
    pretrain(tiny_config(epochs=1, seed=9), finished, force=True, progress=False)
    kept = list(finished.glob(".replaced-*"))
    assert len(kept) == 1 and (kept[0] / "labels.csv").read_text() == "index,label\n"
    assert (kept[0] / CHECKPOINT).is_file() and not (finished / "labels.csv").exists()


def test_force_protects_data_given_to_fit_and_a_labels_file_inside_the_run(finished):
    from PIL import Image

    images = finished / "imgs"
    images.mkdir()
    for i in range(40):
        Image.new("RGB", (16, 16), (i * 6, 0, 0)).save(images / f"{i}.png")
    with pytest.raises(SelfSupError, match="reads its data from"):
        fit(None, f"folder:{images}", tiny_config(data={"size": None, "samples_per_epoch": None}), finished,
            force=True, progress=False)
    (finished / "labels.csv").write_text("index,label\n")
    cfg = tiny_config(method="supervised", supervised={"labels_file": str(finished / "labels.csv")})
    with pytest.raises(SelfSupError, match="reads its data from"):
        pretrain(cfg, finished, force=True, progress=False)
    assert len(list(images.iterdir())) == 40 and (finished / "labels.csv").is_file()


@pytest.mark.parametrize("how", ["symlink", "cwd"])
def test_force_through_a_symlink_or_on_the_working_directory(finished, tmp_path, monkeypatch, how):
    out = finished
    if how == "symlink":
        out = tmp_path / "link"
        out.symlink_to(finished)
    else:
        monkeypatch.chdir(finished)
        out = Path(".")
    pretrain(tiny_config(epochs=1, seed=9), out, force=True, progress=False)
    assert load_checkpoint(finished)["config"]["seed"] == 9 and not list(finished.glob(".replaced-*"))
    assert how != "symlink" or out.is_symlink()


def test_a_terminated_force_run_puts_the_old_run_back(finished):
    before = _tree(finished)
    proc = subprocess.Popen([sys.executable, "-m", "selfsup.cli", "pretrain", "--out", str(finished), "--force",
                             *_overrides(tiny_config(epochs=50, data={"samples_per_epoch": 4096}))],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    while not list(finished.glob(".replaced-*")) and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # a scheduler's time limit, docker stop, kill
    stderr = proc.communicate()[1]
    assert proc.returncode == 130 and "the old run is back" in stderr
    assert _tree(finished) == before


def _overrides(cfg) -> list[str]:
    """A config as key=value overrides (flattened, JSON values, which YAML reads back)."""
    def flat(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={json.dumps(value)}"
    return list(flat(config_to_dict(cfg)))


# ------------------------------------------------------------------------------------------------------ the lock


def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process that holds the run's lock until killed."""
    code = ("import sys, time; from selfsup.engine import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(finished):
    holder = _hold_lock(finished)
    before = _tree(finished)
    try:
        for kwargs in ({"resume": True}, {"force": True}, {}):
            with pytest.raises(SelfSupError, match=f"in use by pid {holder.pid} on "):
                pretrain(tiny_config(epochs=3), finished, progress=False, **kwargs)
        proc = subprocess.run([sys.executable, "-m", "selfsup.cli", "pretrain", "--resume", "--out", str(finished),
                               "epochs=3"], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and proc.stderr.startswith(f"selfsup: error: run directory {finished} is in use")
        assert _tree(finished) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder died without freeing it: the lock is stale and taken over with a warning.
    with pytest.warns(SelfSupWarning, match="stale lock"):
        pretrain(tiny_config(epochs=3), finished, resume=True, progress=False)
    assert load_checkpoint(finished)["epoch"] == 3 and not (finished / LOCK).exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(SelfSupError, match=f"in use by pid 1 on elsewhere since then.*delete {run / LOCK}"):
        RunLock(run).acquire()


def test_the_run_directory_must_be_a_writable_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "run", "is a file"),
                         (Path("/proc/selfsup-run"), "cannot create run directory")):
        with pytest.raises(SelfSupError, match=message):
            pretrain(tiny_config(), out, progress=False)
    assert (tmp_path / "file").read_text() == "x"


# ------------------------------------------------------------------------------------------ verified checkpoints


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(finished):
    previous = load_checkpoint(finished)["epoch"] - 1
    good_prev = torch.load(finished / PREVIOUS, weights_only=True)["method"]
    _flip(finished / CHECKPOINT)
    with pytest.warns(SelfSupWarning, match=f"checkpoint.pt does not match.*using {PREVIOUS} \\(epoch {previous}\\)"):
        ckpt = load_checkpoint(finished)
    assert ckpt["epoch"] == previous
    for key, value in good_prev.items():
        assert torch.equal(ckpt["method"][key], value)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_run_whose_every_checkpoint_is_damaged_is_a_one_line_error(finished, damage):
    for name in (CHECKPOINT, PREVIOUS):
        path = finished / name
        if damage == "flip":
            _flip(path)
        else:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2 if damage == "truncate" else 0])
    with pytest.raises(SelfSupError, match="every checkpoint in .* is damaged"):
        load_checkpoint(finished)
    if damage != "flip":
        return
    proc = subprocess.run([sys.executable, "-m", "selfsup.cli", "eval", "knn", str(finished)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is damaged" in proc.stderr


def test_resume_after_a_damaged_last_checkpoint_redoes_that_epoch_exactly(finished):
    straight = _weights(finished)
    _flip(finished / CHECKPOINT)
    with pytest.warns(SelfSupWarning, match="using checkpoint.prev.pt"):
        pretrain(tiny_config(), finished, resume=True, progress=False)
    assert [m["epoch"] for m in read_metrics(finished)] == [1, 2]
    redone = _weights(finished)
    assert all(torch.equal(redone[key], value) for key, value in straight.items())
    # The damaged file was replaced, not kept as the previous checkpoint: both are good again.
    assert [read_checkpoint(finished / name)["epoch"] for name in (CHECKPOINT, PREVIOUS)] == [2, 1]


# -------------------------------------------------------------------------------------- config and metrics logs


@pytest.mark.parametrize("damage", ["truncate", "not-utf8", "delete"])
def test_resume_takes_the_config_from_the_checkpoint_when_config_yaml_is_damaged(tmp_path, damage):
    run = tmp_path / "run"
    pretrain(tiny_config(epochs=2, max_minutes=0.0, optim={"lr": 0.03, "warmup_epochs": 0}), run, progress=False)
    saved = run / "config.yaml"
    text = saved.read_text()
    if damage == "truncate":
        saved.write_text(text[: text.index("optim:")])  # parses: every key from optim on falls back to defaults
    elif damage == "not-utf8":
        saved.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    else:
        saved.unlink()
    with pytest.warns(SelfSupWarning, match="resuming with the checkpoint's config"):
        fit(None, None, None, run, resume=True, progress=False)  # the command line's --resume: no config given
    assert load_checkpoint(run)["config"]["optim"]["lr"] == 0.03
    restored = yaml.safe_load(saved.read_text())
    assert restored["optim"]["lr"] == 0.03 and restored["optim"]["warmup_epochs"] == 0
    assert restored["max_minutes"] == 0.0


def test_a_resume_override_that_diverges_does_not_rewrite_the_saved_config(tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_config(epochs=2, max_minutes=0.0), run, progress=False)
    before = (run / "config.yaml").read_bytes()
    from selfsup.engine import resume_config

    cfg = resume_config(run)
    cfg.optim.lr, cfg.max_minutes = 1e9, None
    with pytest.raises(SelfSupError, match="loss became nan.*last good checkpoint \\(epoch 1\\)"):
        pretrain(cfg, run, resume=True, progress=False)
    assert (run / "config.yaml").read_bytes() == before
    assert load_checkpoint(run)["config"]["optim"]["lr"] != 1e9


@pytest.mark.parametrize("damage", ["lost", "partial"])
def test_no_metrics_line_is_lost_to_a_kill_between_checkpoint_and_metrics(tmp_path, damage):
    run = tmp_path / "run"
    pretrain(tiny_config(epochs=3, max_minutes=0.0), run, progress=False)
    pretrain(tiny_config(epochs=3, max_minutes=0.0), run, resume=True, progress=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # As if killed after epoch 2's checkpoint, before (or while) its metrics line was written.
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + (lines[1][:20] if damage == "partial" else ""))
    pretrain(tiny_config(epochs=3), run, resume=True, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[1] == json.loads(lines[1])


def test_a_damaged_eval_log_never_costs_a_computed_result(finished):
    from selfsup.eval.protocols import evaluate_run

    log = finished / "eval.jsonl"
    log.write_text('{"protocol": "linear", "model": "pretrained", "linear_top1": {"conv1": 5')  # a killed writer
    with pytest.warns(SelfSupWarning, match="skipped 1 damaged line"):
        result = evaluate_run(finished, "linear", ["eval.probe_epochs=1"], ["conv1"])
    rows = log.read_text().splitlines()
    assert rows[0].endswith('"conv1": 5') and json.loads(rows[1])["linear_top1"] == result["linear_top1"]
    result = evaluate_run(finished, "knn")
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["knn_top1"] == result["knn_top1"] and entry["epoch"] == 2  # the checkpoint it measured
    # A report that cannot be written costs a warning; the result is logged and returned all the same.
    (finished / "report.md").unlink()
    (finished / "report.md").mkdir()
    with pytest.warns(SelfSupWarning, match="cannot write the probe report"):
        result = evaluate_run(finished, "linear", ["eval.probe_epochs=1"], ["conv1"])
    assert json.loads(log.read_text().splitlines()[-1])["linear_top1"] == result["linear_top1"]


# ------------------------------------------------------------------------------------------------------ NaN stop


class InfVariance(SimCLR):
    """SimCLR whose batch-norm running variance turns inf during epoch 2 while the loss stays finite."""

    def on_step_end(self, step: int, total: int) -> None:
        if step == total // 2:
            bn = next(m for m in self.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))


def test_the_kept_checkpoint_is_finite_and_the_message_names_its_epoch(tmp_path):
    from selfsup.methods.base import DataInfo
    from selfsup.nets import backbone_from

    cfg = tiny_config()
    method = InfVariance(backbone_from(cfg.model), cfg.section("simclr"), cfg.augment, DataInfo(input_size=16))
    with pytest.raises(SelfSupError, match="running_var became NaN or inf in epoch 2.*last good checkpoint "
                                           "\\(epoch 1\\)"):
        fit(method, "digits", cfg, tmp_path / "run", progress=False)
    kept = load_checkpoint(tmp_path / "run")
    assert kept["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept["method"].values() if v.is_floating_point())


def test_resume_with_an_incompatible_override_is_a_one_line_error(finished):
    proc = subprocess.run([sys.executable, "-m", "selfsup.cli", "pretrain", "--resume", "--out", str(finished),
                           "epochs=3", "simclr.proj_dim=8"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "does not fit the model this config builds (size mismatch for" in proc.stderr


# ------------------------------------------------------------------------------------------- kill -9, then resume


def _weights(run: Path) -> dict:
    return torch.load(run / CHECKPOINT, weights_only=True)["method"]


def test_a_pretrain_killed_at_random_moments_resumes_bit_exactly(tmp_path):
    cfg = tiny_config(epochs=5, eval={"knn_every": 2})
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "selfsup.cli", "pretrain", str(recipe)]

    def run(*args, **kwargs):
        return subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT, env=env, **kwargs)

    assert run("--out", str(tmp_path / "straight")).returncode == 0
    reference = _weights(tmp_path / "straight")
    rng = random.Random(16)
    for trial, lines in enumerate((-1, 1, 3)):
        out = tmp_path / f"killed{trial}"
        proc = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=ROOT, env=env)
        # A seeded moment once the lock is taken (-1: while the data and method are prepared) or after `lines`
        # epochs ended (epochs take ~0.2 s here).
        while (len(read_metrics(out)) < lines if lines >= 0 else not (out / LOCK).exists()) and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Whatever moment the kill hit: resume (or start again when no epoch had finished) until the run is done.
        args = ["--resume"] if any((out / name).is_file() for name in (CHECKPOINT, PREVIOUS)) else ["--force"]
        done = run("--out", str(out), *args)
        assert done.returncode == 0, done.stderr
        assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3, 4, 5]
        weights = _weights(out)
        assert weights.keys() == reference.keys()
        for key in reference:
            assert torch.equal(weights[key], reference[key]), (trial, key)

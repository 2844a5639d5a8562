import io
import json
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from selfsup.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = Path(__file__).parents[1]
RECIPE = str(ROOT / "recipes" / "simclr_cifar10_fast.yaml")
SETTINGS = ["data.size=16", "model.backbone=resnet18", "model.input_size=16", "augment.size=16", "eval.size=16",
            "epochs=1", "batch_size=16", "eval.knn_every=0", "simclr.proj_hidden=32", "eval.probe_epochs=2",
            "optim.warmup_epochs=0"]


def _images(root: Path, per_class: dict[str, int], seed: int) -> None:
    """Two easily told apart classes (reddish and bluish noise) in the folder layout split/class/N.png."""
    rng = np.random.default_rng(seed)
    colours = {"blue": (40, 60, 200), "red": (200, 50, 40)}
    for rel, count in per_class.items():
        (root / rel).mkdir(parents=True)
        base = np.array(colours[Path(rel).name], np.int16)
        for i in range(count):
            img = np.clip(base + rng.integers(-30, 31, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / rel / f"{i}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny labelled image folder with train/ and test/ splits: training and evaluation take seconds."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    _images(root, {"train/red": 16, "train/blue": 16, "test/red": 6, "test/blue": 6}, seed=0)
    return root


def test_pretrain_eval_export(tmp_path, capsys, folder):
    run = tmp_path / "run"
    tiny = [f"data.source=folder:{folder}", *SETTINGS]
    assert main(["pretrain", RECIPE, *tiny, "--out", str(run)]) == 0
    assert main(["eval", "knn", str(run), "eval.knn_k=10"]) == 0
    # Reddish against bluish images: the test images' nearest training images carry their own class.
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["knn_top1"] == 100
    assert main(["eval", "linear", str(run), "--layers", "conv1,layer4", "eval.probe_epochs=20"]) == 0
    accs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["linear_top1"]
    assert list(accs) == ["conv1", "layer4"] and accs["conv1"] == 100 and accs["layer4"] > 75  # chance is 50
    assert main(["eval", "linear", str(run), "--layers", "conv1,layer4", "--random-init"]) == 0
    capsys.readouterr()
    assert main(["eval", "nonlinear", str(run), "--layers", "layer3", "--head", "conv", "--epochs", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["head"] == "conv" and out["epochs"] == 1 and list(out["top1"]) == ["layer3"]
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["protocol"] == "nonlinear"
    assert main(["eval", "nonlinear", str(run), "--layers", "layer9"]) == 2
    assert "unknown layer" in capsys.readouterr().err
    report = (run / "report.md").read_text()
    assert "| pretrained |" in report and "| random init |" in report and (run / "probes.png").is_file()
    assert main(["export", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["input"].startswith("RGB in [0,1] normalised")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(run / "backbone.safetensors", "pt") as f:  # code without selfsup learns what to feed the net
        assert f.metadata()["input"] == "RGB in [0,1] normalised with ImageNet's mean and std"

    tv = torchvision.models.resnet18()
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    missing, unexpected = tv.load_state_dict(load_file(run / "backbone.safetensors"), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    assert main(["export", str(run)]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err


# ------------------------------------------------------------------ user errors: one line, `selfsup: error:`, status 2

def _bad_inputs(tmp: Path, folder: Path) -> dict[str, tuple[list[str], str]]:
    """Every user error the README lists (and a few more), as (command line, what the message must say)."""
    broken = tmp / "broken"
    _images(broken, {"red": 2}, seed=1)
    (broken / "red" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp / "fake.tar.gz").write_bytes(b"\x00" * 100)
    (tmp / "empty").mkdir()
    (tmp / "existing").mkdir()
    (tmp / "existing" / "config.yaml").write_text("method: simclr\n")

    def pretrain(source: str, out: str = "r") -> list[str]:
        return ["pretrain", RECIPE, f"data.source={source}", *SETTINGS, "--out", str(tmp / out)]

    return {
        "missing folder": (pretrain(f"folder:{tmp / 'no' / 'such'}"), "does not exist"),
        "unreadable image": (pretrain(f"folder:{broken}"), f"cannot read image {broken}/red/broken.jpg"),
        "wrong archive": (pretrain(f"folder:{tmp / 'fake.tar.gz'}"), "neither a folder nor a readable"),
        "missing dataset": (pretrain("cifar10") + [f"data.root={tmp / 'empty'}"], "pass --download"),
        "unknown config key": (["pretrain", RECIPE, "epochz=1"], "unknown config key"),
        "value out of range": (["pretrain", RECIPE, "batch_size=0"], "batch_size must be at least 1, got 0"),
        "existing run": (pretrain(f"folder:{folder}", "existing"), "already exists; pass --resume"),
        "missing recipe": (["pretrain", "no/such/recipe.yaml"], "does not exist"),
        "resume without a run": (["pretrain", "--resume", "--out", str(tmp / "missing")], "cannot resume"),
        "eval without a checkpoint": (["eval", "knn", str(tmp)], "no checkpoint"),
    }


def _one_error_line(err: str, message: str) -> None:
    assert err.startswith("selfsup: error: ") and err.endswith("\n"), err
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("case", ["missing folder", "unreadable image", "wrong archive", "missing dataset",
                                  "unknown config key", "value out of range", "existing run", "missing recipe",
                                  "resume without a run", "eval without a checkpoint"])
def test_user_error_is_one_line_and_exit_2(case, tmp_path, capsys, folder):
    argv, message = _bad_inputs(tmp_path, folder)[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _one_error_line(captured.err, message)


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory, folder) -> tuple[int, str, str]:
    """`selfsup pretrain` whose loss is NaN from the first step: (exit status, stdout, stderr)."""
    from selfsup.methods.simclr import SimCLR

    out, err = io.StringIO(), io.StringIO()
    argv = ["pretrain", RECIPE, f"data.source=folder:{folder}", *SETTINGS, "--out", str(tmp_path_factory.mktemp("nan"))]
    real_step = SimCLR.training_step
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setenv("SELFSUP_CACHE", str(tmp_path_factory.mktemp("cache")))  # module scope: before conftest's own
        patch.setattr(SimCLR, "training_step", lambda self, b: {"loss": real_step(self, b)["loss"] * float("nan")})
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the one_thread fixture does for the tests (a module fixture is set up before it)
        status = main(argv)
        torch.set_num_threads(threads)
    return status, out.getvalue(), err.getvalue()


def test_nan_loss_is_one_error_and_exit_2(nan_run):
    status, out, err = nan_run
    assert status == 2 and out == ""
    # The loss is checked every log_every steps (and at the epoch's end), so it is noticed at the last of these 2.
    # One error line, the last; before it only the run's timestamped progress lines (stderr is not a terminal here).
    lines = err.splitlines()
    assert err.count("selfsup: error:") == 1 and err.endswith("\n") and lines[-1].startswith("selfsup: error: ")
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines[:-1]), err
    assert "selfsup: error: loss became nan at epoch 1, step 2; stopped, and no checkpoint was written" in err
    assert "check the data\n" in err


def test_nan_loss_error_starts_its_own_line(nan_run, folder, tmp_path, monkeypatch):
    # In a log: the error's line is whole, never glued onto a progress line.
    assert "\nselfsup: error: loss became nan" in nan_run[2]
    # As a terminal shows it: a progress bar redraws (and finally clears) its line with carriage returns; the run's
    # first line stays above it.
    from selfsup.methods.simclr import SimCLR

    real_step = SimCLR.training_step
    monkeypatch.setenv("SELFSUP_PROGRESS", "bar")
    monkeypatch.setattr(SimCLR, "training_step", lambda self, b: {"loss": real_step(self, b)["loss"] * float("nan")})
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert main(["pretrain", RECIPE, f"data.source=folder:{folder}", *SETTINGS, "--out", str(tmp_path / "r")]) == 2
    shown = [line.rsplit("\r", 1)[-1] for line in err.getvalue().split("\n")]
    shown = [line for line in shown if line.strip()]
    assert shown[0].startswith("selfsup: starting simclr run")
    _one_error_line("\n".join(shown[1:]) + "\n", "loss became nan")


@pytest.mark.parametrize("case", ["unknown config key", "unreadable image"])
def test_user_error_from_a_real_process(case, tmp_path, folder):
    """The same through the installed entry point, as a shell sees it: status 2, one line on stderr, no traceback."""
    argv, message = _bad_inputs(tmp_path, folder)[case]
    proc = subprocess.run([sys.executable, "-m", "selfsup.cli", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    _one_error_line(proc.stderr, message)


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "selfsup", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "pretrain" in proc.stdout

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from selfsup.cli import main

RECIPE = str(Path(__file__).parents[1] / "recipes" / "simclr_cifar10.yaml")
TINY = ["data.source=digits", "data.size=16", "model.backbone=resnet18", "model.input_size=16", "augment.size=16",
        "eval.size=16", "epochs=1", "batch_size=64", "data.samples_per_epoch=128", "eval.knn_every=0",
        "simclr.proj_hidden=32", "eval.probe_epochs=2"]


def test_pretrain_eval_export(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", RECIPE, *TINY, "--out", str(run)]) == 0
    assert main(["eval", "knn", str(run), "eval.knn_k=10"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["knn_top1"] <= 100
    assert main(["eval", "linear", str(run), "--layers", "conv1,layer4"]) == 0
    accs = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["linear_top1"]
    assert list(accs) == ["conv1", "layer4"]
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
    from safetensors.torch import load_file

    tv = torchvision.models.resnet18()
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    missing, unexpected = tv.load_state_dict(load_file(run / "backbone.safetensors"), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    assert main(["export", str(run)]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["pretrain", "no/such/recipe.yaml"], "does not exist"),
    (["pretrain", RECIPE, "epochz=1"], "unknown config key"),
    (["pretrain", RECIPE, "data.source=folder:/no/such/folder", "--out", "{tmp}/r"], "does not exist"),
    (["pretrain", "--resume", "--out", "{tmp}/missing"], "cannot resume"),
    (["eval", "knn", "{tmp}"], "no checkpoint"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "selfsup", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "pretrain" in proc.stdout

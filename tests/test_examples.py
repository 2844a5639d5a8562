"""The scripts in examples/ run as a user runs them, on tiny data (each is imported from its file and its main()
called with the arguments a user would type)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import selfsup
from selfsup.config import load_config
from selfsup.engine import fit

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_folder_holds_the_three_scripts():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == ["custom_loop.py", "export_finetune.py",
                                                            "pretrain_folder.py"]


def test_custom_loop(capsys):
    top1 = _example("custom_loop").main(["--steps", "3", "--batch-size", "32", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "step 1/3: loss" in out and "step 3/3: loss" in out
    assert f"kNN top-1 on digits after 3 steps: {top1:.1f}%" in out
    # The kNN measured the trained network: the same ResNet at the script's initialisation scores otherwise.
    torch.manual_seed(0)
    untrained = selfsup.wrap(torchvision.models.resnet18(), input_size=32).eval()
    train, test = (selfsup.load_source("digits", split, size=32) for split in ("train", "test"))
    assert abs(selfsup.knn(untrained, train, test, k=20, input_size=32) - top1) > 1.0


def test_pretrain_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 8)):
        for c, colour in enumerate(([220, 40, 40], [40, 40, 220])):
            folder = tmp_path / "photos" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                side = int(rng.integers(20, 40))  # mixed sizes: --size makes them one
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (side, side, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "run"
    result = _example("pretrain_folder").main([str(tmp_path / "photos"), "--epochs", "1", "--size", "16",
                                               "--batch-size", "16", "--backbone", "alexnet_small", "--out", str(out)])
    assert (out / "checkpoint.pt").is_file() and (out / "curves.png").is_file()
    assert result["run"] == str(out) and set(result["linear_top1"]) == {"conv1", "conv2", "conv3", "conv4", "conv5"}
    # Red against blue: any features separate them, so these check the folder's labels and splits were read right
    # (a label or split mix-up gives about 50%).
    assert result["knn_top1"] >= 90.0 and min(result["linear_top1"].values()) >= 75.0
    assert '"knn_top1"' in capsys.readouterr().out


@pytest.mark.slow
def test_export_finetune(tmp_path, capsys):
    run = tmp_path / "resnet"
    fit(None, None, load_config(overrides={"method": "simclr", "data": {"source": "digits", "num_images": 256},
                                           "eval": {"source": "digits"}, "epochs": 1, "batch_size": 128,
                                           "model": {"backbone": "resnet18"}, "optim": {"warmup_epochs": 0}}),
        run, progress=False)
    result = _example("export_finetune").main([str(run), "--epochs", "1", "--labels", "200", "--device", "cpu"])
    out = capsys.readouterr().out
    assert result["exported"] == str(run / "backbone_torchvision.pth")
    assert "torchvision_resnet(18, cifar_stem=True)" in result["load_with"]
    assert "epoch 1/1: loss" in out
    assert result["feature_difference"] < 1e-4  # torchvision's model, loaded from the export, is the run's backbone
    assert 0.0 <= result["test_top1"] <= 100.0

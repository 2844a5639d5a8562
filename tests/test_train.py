import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup.config import load_config
from selfsup.data import load_source
from selfsup.engine import LARS, load_checkpoint, load_run, lr_at, pretrain
from selfsup.errors import SelfSupError
from selfsup.eval.protocols import knn
from selfsup.methods.simclr import SimCLR


def tiny_config(**extra):
    """SimCLR on digits at 16 px: a real run, small enough for a unit test."""
    overrides = {
        "epochs": 2, "batch_size": 32, "log_every": 2, "seed": 3,
        "data": {"source": "digits", "size": 16, "samples_per_epoch": 128},
        "model": {"backbone": "exemplar_small", "input_size": 16},
        "augment": {"size": 16},
        "optim": {"lr": 0.05, "warmup_epochs": 1},
        "simclr": {"proj_hidden": 32, "proj_dim": 16},
        "eval": {"size": 16, "knn_every": 1, "knn_k": 20},
    }
    for key, value in extra.items():
        overrides[key] = {**overrides.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config(overrides=overrides)


def _weights(run):
    return load_checkpoint(run)["method"]


def test_run_writes_its_files_and_the_knn_monitor_runs_every_knn_every_epochs_and_at_the_end(tmp_path):
    last = pretrain(tiny_config(epochs=3, eval={"knn_every": 2}), tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "checkpoint.pt", "metrics.jsonl", "tb"} <= files
    assert "samples.png" not in files  # SimCLR has no picture of its task
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3] and all(math.isfinite(m["loss"]) for m in lines)
    assert [m["epoch"] for m in lines if "knn_top1" in m] == [2, 3]  # every 2nd epoch, and the last
    # The monitor's number is the kNN of the final weights, as selfsup.knn computes it from the saved run.
    digits = [load_source("digits", split, size=16) for split in ("train", "test")]
    assert last["knn_top1"] == lines[-1]["knn_top1"] == round(knn(load_run(tmp_path / "run"), *digits, k=20), 2)


def test_inpainting_run_writes_its_samples_picture(tmp_path):
    cfg = tiny_config(method="inpainting", epochs=1, inpainting={"decoder_width": 16})
    pretrain(cfg, tmp_path / "run", progress=False)
    with Image.open(tmp_path / "run" / "samples.png") as picture:
        assert picture.mode == "RGB" and picture.size == (2 * (8 * 16 + 7 * 2), 2 * (3 * 16 + 2 * 2))


def test_existing_run_needs_force(tmp_path):
    pretrain(tiny_config(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(SelfSupError, match="already exists"):
        pretrain(tiny_config(epochs=1), tmp_path / "run", progress=False)
    pretrain(tiny_config(epochs=1), tmp_path / "run", force=True, progress=False)
    with pytest.raises(SelfSupError, match="cannot resume"):
        pretrain(tiny_config(epochs=1), tmp_path / "other", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    pretrain(tiny_config(epochs=1), tmp_path / "run", progress=False)
    good = _weights(tmp_path / "run")
    real_step = SimCLR.training_step

    def poisoned(self, batch):
        out = real_step(self, batch)
        return {"loss": out["loss"] * float("nan")}

    monkeypatch.setattr(SimCLR, "training_step", poisoned)
    with pytest.raises(SelfSupError, match="loss became nan.*last good checkpoint \\(epoch 1\\)"):
        pretrain(tiny_config(epochs=2), tmp_path / "run", resume=True, progress=False)
    kept = load_checkpoint(tmp_path / "run")
    assert kept["epoch"] == 1
    for key in good:
        torch.testing.assert_close(kept["method"][key], good[key], rtol=0, atol=0)


def test_single_image_needs_samples_per_epoch(tmp_path):
    cfg = tiny_config(data={"source": "image:skimage/astronaut", "samples_per_epoch": None, "size": None})
    with pytest.raises(SelfSupError, match="samples_per_epoch"):
        pretrain(cfg, tmp_path / "run", progress=False)


def test_schedule_and_lars():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    w = torch.nn.Parameter(torch.full((4,), 2.0))
    w.grad = torch.full((4,), 100.0)
    LARS([{"params": [w]}], lr=1.0, momentum=0.0, eta=0.001).step()
    # Trust ratio eta * |w| / |g| makes the step size independent of the gradient's scale.
    torch.testing.assert_close(w.detach(), torch.full((4,), 2.0 - 0.001 * 2.0))


def test_single_image_source_trains_on_synthesised_images(tmp_path):
    cfg = tiny_config(data={"source": "image:skimage/astronaut", "size": 64, "samples_per_epoch": 64},
                      eval={"source": "digits"}, epochs=1)
    cfg.data.single_image.size = 32
    last = pretrain(cfg, tmp_path / "run", progress=False)
    assert math.isfinite(last["loss"]) and "knn_top1" in last


def test_zero_epochs_is_a_one_line_error(tmp_path):
    with pytest.raises(SelfSupError, match="epochs must be at least 1"):
        pretrain(tiny_config(epochs=0), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_nesterov_option_and_the_rotnet_recipe():
    from selfsup.engine import build_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    # the paper's optimizer: Nesterov, decay on every weight
    cfg = load_config(Path(__file__).parents[1] / "recipes" / "rotnet_cifar10.yaml")
    opt = build_optimizer(net, cfg.optim)
    assert all(g["nesterov"] and g["weight_decay"] == 5e-4 for g in opt.param_groups)
    assert cfg.epochs == 200 and cfg.optim.step_epochs == [60, 120, 160] and cfg.model.backbone == "nin"
    cfg.optim.momentum = 0.0
    with pytest.raises(SelfSupError, match="nesterov needs"):
        build_optimizer(net, cfg.optim)


def test_imagenet_alexnet_pretrains_and_exports(tmp_path):
    """The ImageNet-size AlexNet through the whole loop at 64 px (its smallest sizes), and out as safetensors."""
    from safetensors.torch import load_file

    from selfsup.engine import fit
    from selfsup.export import export_backbone

    cfg = load_config(overrides={"method": "simclr", "epochs": 1, "batch_size": 32, "optim": {"warmup_epochs": 0},
                                 "data": {"source": "digits", "num_images": 64}, "augment": {"size": 64},
                                 "model": {"backbone": "alexnet_imagenet", "input_size": 64, "dropout": 0.5},
                                 "eval": {"source": "digits"}})
    fit(None, None, cfg, tmp_path / "run", progress=False)
    method = load_run(tmp_path / "run")
    assert method.backbone.feature_dim == 4096 and method.run_config.model.dropout == 0.5
    saved = load_file(export_backbone(tmp_path / "run")["exported"])
    assert saved.keys() == method.backbone.state_dict().keys()

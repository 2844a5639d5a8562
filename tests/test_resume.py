"""Bit-exact resume for every built-in method, and the random-init baseline being the run's own starting point.

Each method trains (selfsup.fit, the loop `selfsup pretrain` runs) 2 epochs of 2 steps in one go, and 1 epoch
(stopped by max_minutes=0) then a resume for the second; the two checkpoints must hold the same tensors exactly
(the method's state: weights, labels, memory bank, seeds' classifier; and the optimizer's: momentum, Adam moments),
and the runs the same metrics. The optimizers vary over the matrix so that each crosses the resume point with state
that matters: LARS with a warm-up that ends there, SGD with a step schedule whose milestone is the resumed epoch,
Nesterov, and Adam (after a warm-up that ends mid-epoch).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import tiny_config

from selfsup.data import ImageArray
from selfsup.engine import fit, load_checkpoint, load_run, read_metrics
from selfsup.methods import METHODS

# Every method in the package (a new one joins with its default settings; SETTINGS only makes some smaller).
BUILT_IN = [name for name, cls in METHODS.items() if cls.__module__.startswith("selfsup.")]
N = 32  # images; batches of 16, so every epoch is 2 optimizer steps


def _images() -> ImageArray:
    """32 smooth random 16 px images with labels (the supervised baseline needs them), made in memory: no decoding,
    and no labelled eval source, so no kNN pass either (the monitor is tested in test_train)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(N, 3, 4, 4, generator=g)
    images = (F.interpolate(low, size=16, mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)
    return ImageArray("smooth", images.permute(0, 2, 3, 1).numpy(), np.arange(N) % 10, [str(c) for c in range(10)])


PER_SAMPLE = {"data": {"samples_per_epoch": None}}  # every image once per epoch (a permutation)
STEP = {"schedule": "step", "step_epochs": [1], "warmup_epochs": 0}  # lr drops exactly when the resumed epoch starts

SETTINGS = {
    "simclr": {"optim": {"name": "lars", "lr": 0.3, "warmup_epochs": 1}},
    "sela": {**PER_SAMPLE, "sela": {"num_clusters": 4, "num_heads": 2, "label_steps": 2}},  # relabels at epochs 0, 1
    "deepcluster": {**PER_SAMPLE, "deepcluster": {"num_clusters": 4, "pca_dim": 8, "backend": "torch"}},
    "exemplar": {**PER_SAMPLE, "exemplar": {"num_seeds": 16, "patch": 16, "samples_per_class": 2},
                 "optim": {**STEP, "gamma": 0.5}},
    "instance": {**PER_SAMPLE, "instance": {"dim": 8, "negatives": 16}, "optim": {"nesterov": True}},
    "supervised": {**PER_SAMPLE, "optim": {"warmup_epochs": 0}},
    "rotnet": {"optim": {**STEP, "gamma": 0.2, "nesterov": True}},
    "bigan": {"bigan": {"z_dim": 8, "generator_width": 32, "discriminator_width": 16},
              "optim": {"name": "adam", "lr": 2e-4, "warmup_epochs": 0}},
    "inpainting": {"inpainting": {"decoder_width": 16, "adversarial": 0.001},
                   "optim": {"name": "adam", "lr": 1e-3, "warmup_epochs": 0.5}},
    "colorization": {"optim": {"warmup_epochs": 0}},
    # Multi-crop on a net that pools globally; the queue fills in epoch 1 and is used in epoch 2, the prototypes are
    # frozen in epoch 1 only: both cross the resume.
    "swav": {"model": {"backbone": "alexnet_small", "width": 0.25},
             "swav": {"prototypes": 8, "proj_hidden": 16, "proj_dim": 8, "queue_length": 32, "queue_start_epoch": 0,
                      "crops": {"local_crops": 2}}},
    # The teacher, the centre, the teacher-temperature warm-up, the frozen last layer and a weight-decay schedule all
    # cross the resume; AdamW's moments too.
    "dino": {"model": {"backbone": "alexnet_small", "width": 0.25},
             "dino": {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "warmup_teacher_temp_epochs": 2,
                      "teacher_temp": 0.07, "crops": {"local_crops": 2}},
             "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.04, "weight_decay_end": 0.4,
                       "warmup_epochs": 0.5}},
    # The queue wraps in epoch 2 (4 steps of 16 keys into 48) and the keys' shuffle is drawn every step.
    "moco": {"moco": {"proj_hidden": 16, "proj_dim": 8, "queue_length": 48, "bn_group": 8, "symmetric": True}},
    "mocov3": {"mocov3": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}, "optim": {"nesterov": True}},
    "byol": {"byol": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}},
    "simsiam": {"simsiam": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 4}},
    "barlow_twins": {"barlow_twins": {"proj_hidden": 16, "proj_dim": 8},
                     "optim": {"name": "lars", "lr": 0.3, "lars_eta": 0.02, "warmup_epochs": 1}},
    "vicreg": {"vicreg": {"proj_hidden": 16, "proj_dim": 8}, "optim": {"name": "lars", "lr": 0.3, "lars_eta": 0.02}},
}


def _config(name: str, **extra):
    settings = {key: dict(value) for key, value in SETTINGS.get(name, {}).items()}
    settings["data"] = {"samples_per_epoch": N, **settings.get("data", {})}  # drawn with replacement
    return tiny_config(method=name, batch_size=16, **settings, **extra)


def _same(a, b, where: str) -> None:
    """Equal nested state (dicts, lists, tensors, numbers), tensors bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


def _without_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("epoch_seconds", "images_per_second", "wall_time")} for m in lines]


@pytest.mark.parametrize("name", BUILT_IN)
def test_resume_is_bit_exact_and_random_init_is_the_runs_start(tmp_path, monkeypatch, name):
    cls = METHODS[name]
    start: dict[str, torch.Tensor] = {}
    real_step = cls.training_step

    def recording_step(self, batch):
        if not start:  # the backbone as the first optimizer step finds it
            start.update({k: v.detach().clone() for k, v in self.backbone.state_dict().items()})
        return real_step(self, batch)

    monkeypatch.setattr(cls, "training_step", recording_step)
    images = _images()
    fit(None, images, _config(name), tmp_path / "straight", progress=False)
    monkeypatch.setattr(cls, "training_step", real_step)
    fit(None, images, _config(name, max_minutes=0.0), tmp_path / "split", progress=False)  # stops after epoch 1
    assert load_checkpoint(tmp_path / "split")["epoch"] == 1
    fit(None, images, _config(name), tmp_path / "split", resume=True, progress=False)

    straight, split = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert straight["epoch"] == split["epoch"] == 2
    _same(straight["method"], split["method"], "method")
    _same(straight["optimizer"], split["optimizer"], "optimizer")
    assert straight["optimizer"]["state"], "the optimizer kept no state to resume"
    metrics = _without_timing(read_metrics(tmp_path / "straight"))
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert _without_timing(read_metrics(tmp_path / "split")) == metrics

    # The random-init baseline is the backbone this run started from, and training moved it.
    baseline = load_run(tmp_path / "straight", random_init=True).backbone.state_dict()
    _same(baseline, start, "random init")
    trained = load_run(tmp_path / "straight").backbone.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start if start[k].is_floating_point())

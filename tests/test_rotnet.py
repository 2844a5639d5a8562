"""RotNet: rotation targets, the NIN backbone, and the pretext task learning on a tiny set."""

import json

import pytest
import torch
from test_train import tiny_config

from selfsup.augmentation import to_input
from selfsup.data import load_source
from selfsup.engine import load_run, pretrain
from selfsup.errors import SelfSupError
from selfsup.methods.rotnet import RotNet, rotate, rotation_batch
from selfsup.nets import build_backbone


def _smooth(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bicubic",
                                           align_corners=True)


def test_rotations_are_rotations_by_the_label():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # Counter-clockwise: the top row becomes the left column, read bottom to top.
    assert torch.equal(rotate(x, 1, 4)[0, 0, :, 0], x[0, 0, 0].flip(0))
    assert torch.equal(rotate(x, 2, 4), x.flip(2).flip(3))
    assert torch.equal(rotate(x, 3, 4), torch.rot90(x, -1, dims=(2, 3)))
    assert torch.equal(rotate(x, 1, 2), x.flip(2).flip(3))  # two rotations: 0 and 180 degrees
    batch, labels = rotation_batch(x.expand(3, 1, 4, 4), 4)
    assert batch.shape == (12, 1, 4, 4) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for r in range(4):
        assert torch.equal(batch[3 * r], rotate(x, r, 4)[0])


def test_two_45_degree_warps_make_a_quarter_turn():
    x = _smooth(size=64)
    twice = rotate(rotate(x, 1, 8), 1, 8)
    centre = (torch.cartesian_prod(torch.arange(64.0), torch.arange(64.0)) - 31.5).norm(dim=1).view(64, 64) < 20
    assert (twice - rotate(x, 2, 8))[..., centre].abs().max() < 0.02


def test_nin_blocks_and_shapes():
    net = build_backbone("nin").eval()
    maps = net.forward_taps(torch.zeros(2, 3, 32, 32))
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {
        "block1": (96, 16, 16), "block2": (192, 8, 8), "block3": (192, 8, 8), "block4": (192, 8, 8)}
    convs = [m.kernel_size[0] for m in net.stages["block1"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [5, 1, 1] and net.feature_dim == 192


def test_rotnet_learns_the_pretext_task_on_a_tiny_set(tmp_path):
    cfg = tiny_config(method="rotnet", epochs=4, data={"samples_per_epoch": None, "num_images": 256},
                      optim={"lr": 0.05, "warmup_epochs": 0}, eval={"knn_every": 0})
    pretrain(cfg, tmp_path / "run", progress=False)
    test = load_source("digits", "test", size=16)
    x = to_input(torch.tensor(test.images[:200]), 16)
    rotated, labels = rotation_batch(x, 4)

    def accuracy(method) -> float:
        with torch.no_grad():
            return (method.classifier(method.backbone(rotated)).argmax(1) == labels).float().mean().item()

    method = load_run(tmp_path / "run")
    assert isinstance(method, RotNet)
    # Held-out digits, against the same run's own starting point (which guesses one rotation: 0.25).
    start, trained = accuracy(load_run(tmp_path / "run", random_init=True)), accuracy(method)
    assert trained > start + 0.2, (start, trained)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]


def test_rotnet_rejects_other_rotation_counts(tmp_path):
    with pytest.raises(SelfSupError, match="2, 4 or 8"):
        pretrain(tiny_config(method="rotnet", rotnet={"rotations": 3}), tmp_path / "run", progress=False)

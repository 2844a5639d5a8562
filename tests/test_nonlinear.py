"""RotNet's non-linear and conv classifiers on frozen layers, and the batched pad-crop-flip they train with."""

import pytest
import torch
import torch.nn as nn

from selfsup.augmentation import pad_crop_flip, to_float
from selfsup.data import load_source
from selfsup.errors import SelfSupError
from selfsup.eval.nonlinear import build_head, train_heads
from selfsup.nets import build_backbone


def test_heads_are_the_papers():
    mlp = build_head("mlp", (192, 8, 8), 10)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == [
        (192 * 8 * 8, 200, False), (200, 200, False), (200, 10, True)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in mlp.modules()) == 2
    assert build_head("mlp", (4096,), 1000)[1].out_features == 2048  # hidden width min(20 x classes, 2048)
    conv = build_head("conv", (192, 8, 8), 10)
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in conv.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [(192, 192, 3), (192, 192, 1), (192, 192, 1)]
    assert conv.eval()(torch.randn(2, 192, 8, 8)).shape == (2, 10)
    with pytest.raises(SelfSupError, match="spatial map") as info:
        build_head("conv", (512,), 10)
    assert "\n" not in str(info.value)


def test_pad_crop_flip_is_a_shift_and_maybe_a_flip_of_each_image():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 12, 12, 3), dtype=torch.uint8)
    out = pad_crop_flip(images, 3, g)
    assert out.shape == (16, 3, 12, 12)
    padded = nn.functional.pad(to_float(images), (3, 3, 3, 3))
    seen = set()
    for i in range(16):
        matches = [(dy, dx, flip) for dy in range(7) for dx in range(7) for flip in (False, True)
                   if torch.allclose(out[i],
                                     (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy:dy + 12, dx:dx + 12]))]
        assert matches, f"image {i} is no shifted (and flipped) copy of its input"
        seen.update(matches)
    assert len({m[2] for m in seen}) == 2 and len({m[:2] for m in seen}) > 4  # flips and offsets both vary


def test_classifiers_learn_on_a_frozen_backbone_and_leave_it_unchanged():
    train, test = load_source("digits", "train"), load_source("digits", "test")
    torch.manual_seed(0)
    net = build_backbone("alexnet_small", width=0.25)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # 16 px and a few epochs: minutes of the paper's protocol become seconds, and the heads still leave chance (10%,
    # where they start) far behind.
    accs = train_heads(net, ["conv1", "conv2"], "mlp", train.images, train.labels, test.images, test.labels,
                       size=16, device=torch.device("cpu"), epochs=3, progress=False)
    assert list(accs) == ["conv1", "conv2"]
    assert min(accs.values()) > 60
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # frozen, batch-norm statistics too
    conv = train_heads(net, ["conv3"], "conv", train.images, train.labels, test.images, test.labels, size=16,
                       device=torch.device("cpu"), epochs=6, progress=False)
    assert conv["conv3"] > 60
    with pytest.raises(SelfSupError, match="unknown classifier"):
        train_heads(net, ["conv2"], "svm", train.images, train.labels, test.images, test.labels, size=32,
                    device=torch.device("cpu"), progress=False)
    with pytest.raises(SelfSupError, match="epochs must be"):
        train_heads(net, ["conv2"], "mlp", train.images, train.labels, test.images, test.labels, size=32,
                    device=torch.device("cpu"), epochs=0, progress=False)

import pytest
import torch
import torch.nn.functional as F
import torchvision

from selfsup.errors import SelfSupError
from selfsup.nets import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


# Per-image tap shapes at 32 px, from each net's documented layout (CIFAR stem for the ResNet: no down-sampling in the
# stem; AlexNet: 3x3/2 max-pools after conv1 and conv2; Exemplar nets: 2x2 max-pools after conv1 and conv2; NIN: a
# 3x3/2 pool closing block1 and block2).
@pytest.mark.parametrize("name,shapes", [
    ("resnet18", {"conv1": (64, 32, 32), "layer1": (64, 32, 32), "layer2": (128, 16, 16), "layer3": (256, 8, 8),
                  "layer4": (512, 4, 4)}),
    ("alexnet_small", {"conv1": (96, 32, 32), "conv2": (256, 16, 16), "conv3": (384, 8, 8), "conv4": (384, 8, 8),
                       "conv5": (256, 8, 8)}),
    ("64c5-64c5-128f", {"conv1": (64, 32, 32), "conv2": (64, 16, 16), "fc": (128,)}),
    ("64c5-128c5-256c5-512f", {"conv1": (64, 32, 32), "conv2": (128, 16, 16), "conv3": (256, 8, 8), "fc": (512,)}),
    ("92c5-256c5-512c5-1024f", {"conv1": (92, 32, 32), "conv2": (256, 16, 16), "conv3": (512, 8, 8), "fc": (1024,)}),
    ("nin", {"block1": (96, 16, 16), "block2": (192, 8, 8), "block3": (192, 8, 8), "block4": (192, 8, 8)}),
])
def test_backbones_taps_and_features(name, shapes):
    net = build_backbone(name, cifar_stem=True).eval()
    x = torch.randn(2, 3, 32, 32)
    taps = list(shapes)
    last = taps[-1]
    assert net.taps == taps and net.feature_dim == shapes[last][0]
    feats = net(x)
    assert feats.shape == (2, net.feature_dim)
    out = net.forward_taps(x)
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == shapes
    first_last = net.forward_taps(x, [taps[0], last])
    assert list(first_last) == [taps[0], last]
    torch.testing.assert_close(first_last[last], out[last])
    # The representation is the last tap, globally pooled (AlexNet max-pools conv5 3x3/2 first; Exemplar nets' fc is
    # the representation itself).
    fmap = out[last]
    if name == "alexnet_small":
        fmap = F.max_pool2d(fmap, 3, 2, 1)
    expected = fmap.mean((2, 3)) if fmap.dim() == 4 else fmap
    torch.testing.assert_close(feats, expected)


def test_alexnet_width_scales_every_layer():
    """model.width 0.25 is the CPU studies' 24-64-96-96-64 AlexNet."""
    net = build_backbone("alexnet_small", width=0.25)
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [24, 64, 96, 96, 64] and net.feature_dim == 64


def test_exemplar_widths_follow_the_paper():
    net = build_backbone("92c5-256c5-512c5-1024f")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(92, (5, 5)), (256, (5, 5)), (512, (5, 5))]
    fc = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert fc[-1].out_features == 1024


def test_cifar_stem_and_torchvision_keys():
    net = build_backbone("resnet18", cifar_stem=True)
    assert net.forward_taps(torch.randn(1, 3, 32, 32), ["conv1"])["conv1"].shape[-1] == 32
    tv = torchvision.models.resnet18()
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    missing, unexpected = tv.load_state_dict(net.torchvision_state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    tv.fc = torch.nn.Identity()
    tv.maxpool = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tv.eval()(x), net.eval()(x))


def test_unknown_backbone_and_tap():
    with pytest.raises(SelfSupError, match="unknown backbone"):
        build_backbone("vgg99")
    with pytest.raises(SelfSupError, match="unknown layer"):
        build_backbone("alexnet_small").forward_taps(torch.randn(1, 3, 32, 32), ["conv9"])

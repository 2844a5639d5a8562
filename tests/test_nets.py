import pytest
import torch
import torchvision

from selfsup.errors import SelfSupError
from selfsup.nets import build_backbone


@pytest.mark.parametrize("name,taps,dim", [
    ("resnet18", ["conv1", "layer1", "layer2", "layer3", "layer4"], 512),
    ("alexnet_small", ["conv1", "conv2", "conv3", "conv4", "conv5"], 256),
    ("64c5-64c5-128f", ["conv1", "conv2", "fc"], 128),
    ("64c5-128c5-256c5-512f", ["conv1", "conv2", "conv3", "fc"], 512),
    ("92c5-256c5-512c5-1024f", ["conv1", "conv2", "conv3", "fc"], 1024),
])
def test_backbones_taps_and_features(name, taps, dim):
    net = build_backbone(name, cifar_stem=True).eval()
    x = torch.randn(2, 3, 32, 32)
    assert net.taps == taps and net.feature_dim == dim
    assert net(x).shape == (2, dim)
    out = net.forward_taps(x, [taps[0], taps[-1]])
    assert list(out) == [taps[0], taps[-1]]


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

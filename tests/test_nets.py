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


def test_imagenet_alexnet_is_deepcluster_and_selas_net():
    """conv1 96x11x11 stride 4 (55x55 at 224 px), 3x3/2 pools after conv1, conv2 and conv5, fc6 reading 256x6x6 =
    9,216 numbers, fc6 and fc7 of 4,096; the representation is fc7."""
    net = build_backbone("alexnet_imagenet", input_size=224).eval()
    assert net.taps == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"] and net.feature_dim == 4096
    assert {k: tuple(v) for k, v in net.tap_shapes(224).items()} == {
        "conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
        "conv5": (256, 13, 13), "fc6": (4096,), "fc7": (4096,)}
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (96, (11, 11), (4, 4), (2, 2)), (256, (5, 5), (1, 1), (2, 2)), (384, (3, 3), (1, 1), (1, 1)),
        (384, (3, 3), (1, 1), (1, 1)), (256, (3, 3), (1, 1), (1, 1))]
    fcs = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(9216, 4096), (4096, 4096)]
    x = torch.randn(2, 3, 224, 224)
    taps = net.forward_taps(x, ["conv5", "fc7"])
    torch.testing.assert_close(net(x), taps["fc7"])
    # fc6 reads conv5 max-pooled 3x3/2 to 6x6 and flattened.
    fc6 = torch.relu(fcs[0](F.max_pool2d(taps["conv5"], 3, 2).flatten(1)))
    torch.testing.assert_close(net.forward_taps(x, ["fc6"])["fc6"], fc6)


def test_imagenet_alexnet_initialisation_and_sizes():
    torch.manual_seed(0)
    net = build_backbone("alexnet_imagenet", input_size=224)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:  # He-normal over fan-out, as the authors' code: std sqrt(2 / (k * k * out))
        k, out = conv.kernel_size[0], conv.out_channels
        assert conv.weight.std().item() == pytest.approx((2 / (k * k * out)) ** 0.5, rel=0.05)
    for fc in [m for m in net.modules() if isinstance(m, torch.nn.Linear)]:
        assert fc.weight.std().item() == pytest.approx(0.01, rel=0.02) and not fc.bias.any()
    assert not any(isinstance(m, torch.nn.Dropout) for m in net.modules())
    dropped = build_backbone("alexnet_imagenet", input_size=64, dropout=0.5)
    assert [m.p for m in dropped.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]  # before fc6 and fc7
    assert dropped.tap_shapes(64)["conv5"] == (256, 3, 3)  # any size from 63 px: fc6 then reads 256 x 1 x 1
    with pytest.raises(SelfSupError, match="alexnet_imagenet needs model.input_size of at least 63 px"):
        build_backbone("alexnet_imagenet", input_size=32)


@pytest.mark.parametrize("name,size", [("alexnet_small", 32), ("alexnet_imagenet", 64)])
def test_sobel_input_sees_no_colour_and_is_never_trained(name, size):
    """model.sobel: grayscale (the channels' mean) then the two Sobel derivatives, before conv1 (DeepCluster)."""
    from selfsup.nets import Sobel

    torch.manual_seed(0)
    net = build_backbone(name, input_size=size, sobel=True).eval()
    x = torch.rand(2, 3, size, size)
    # The same grey level under any shuffle of the colour channels: conv1 cannot tell them apart.
    torch.testing.assert_close(net.forward_taps(x, ["conv1"])["conv1"],
                               net.forward_taps(x[:, [2, 0, 1]], ["conv1"])["conv1"])
    assert not torch.allclose(net.forward_taps(x, ["conv1"])["conv1"],
                              build_backbone(name, input_size=size).eval().forward_taps(x, ["conv1"])["conv1"])
    sobel = next(m for m in net.modules() if isinstance(m, Sobel))
    assert not list(sobel.parameters())  # a fixed filter: nothing for the optimizer
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 2
    # A vertical step from 0 to 1 (grey 1 on the right): the horizontal derivative is -(1 + 2 + 1) on the two columns
    # beside the step and 0 on flat ground; the vertical one is 0 away from the zero-padded top and bottom rows.
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0
    gx, gy = Sobel()(step)[0]
    assert torch.allclose(gx[1:-1, 3:5], torch.full((6, 2), -4.0))
    assert torch.allclose(gx[1:-1, :2], torch.zeros(6, 2), atol=1e-6)
    assert torch.allclose(gy[1:-1], torch.zeros(6, 8), atol=1e-6)
    with pytest.raises(SelfSupError, match="model.sobel applies to alexnet_small and alexnet_imagenet only"):
        build_backbone("resnet18", sobel=True)


def test_sobel_is_part_of_the_model_config():
    from selfsup.config import load_config
    from selfsup.nets import Sobel, backbone_from, model_config_of

    cfg = load_config(overrides={"model": {"backbone": "alexnet_small", "width": 0.25, "sobel": True}})
    net = backbone_from(cfg.model)
    assert model_config_of(net).sobel is True and any(isinstance(m, Sobel) for m in net.modules())
    assert "stages.conv1.0.filters" in net.state_dict()  # saved with the weights, as fixed as they are

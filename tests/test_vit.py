import pytest
import torch
import torchvision
from safetensors.torch import load_file

import selfsup
from selfsup.errors import SelfSupError
from selfsup.export import export_backbone
from selfsup.nets import (
    ViT,
    backbone_from,
    build_backbone,
    check_backbone,
    model_config_of,
    torchvision_vit,
    vit_patch_size,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS = [f"block{i}" for i in range(1, 13)]


@pytest.fixture(scope="module")
def vit() -> ViT:
    torch.manual_seed(0)
    return build_backbone("vit_tiny", input_size=32, patch_size=4).eval()


def test_patch_size_rule():
    assert [vit_patch_size(s) for s in (16, 32, 63, 64, 96, 127, 128, 224)] == [4, 4, 4, 8, 8, 8, 16, 16]
    assert vit_patch_size(224, 14) == 14


@pytest.mark.parametrize("patch_size", [4, None])
def test_taps_and_shapes(patch_size):
    net = build_backbone("vit_tiny", input_size=32, patch_size=patch_size)
    assert isinstance(net, ViT) and net.taps == BLOCKS and net.feature_dim == 192
    assert net.conv_proj.kernel_size == (4, 4) and net.encoder.pos_embedding.shape == (1, 1 + 8 * 8, 192)
    assert net.model_config.patch_size == 4  # the resolved size is recorded
    assert net.tap_shapes(32) == {name: torch.Size([192]) for name in BLOCKS}


def test_forward_taps_order_and_early_stop(vit):
    ran = []
    hooks = [block.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, block in enumerate(vit.encoder.layers)]
    try:
        out = vit.forward_taps(torch.randn(2, 3, 32, 32), ["block3", "block1"])
    finally:
        for h in hooks:
            h.remove()
    assert list(out) == ["block1", "block3"] and ran == [0, 1, 2]
    assert all(v.shape == (2, 192) for v in out.values())


def test_forward_is_last_tap_and_equals_torchvision(vit):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = vit(x)
        taps = vit.forward_taps(x)
        assert feats.shape == (2, 192)
        torch.testing.assert_close(feats, taps["block12"])
        # The state_dict is torchvision's without the heads: the stock model loads it and gives the same features.
        plain = torchvision.models.VisionTransformer(32, 4, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768)
        missing, unexpected = plain.load_state_dict(vit.state_dict(), strict=False)
        assert set(missing) == {"heads.head.weight", "heads.head.bias"} and not unexpected
        stock = torchvision_vit("vit_tiny", 32, 4)
        stock.load_state_dict(vit.state_dict(), strict=True)
        torch.testing.assert_close(stock.eval()(x), feats)
        # An intermediate tap is the final LayerNorm of the CLS token after that block.
        tokens = torch.cat([plain.class_token.expand(2, -1, -1), plain._process_input(x)], 1)
        tokens = tokens + plain.encoder.pos_embedding
        tokens = plain.encoder.layers[:3](tokens)
        torch.testing.assert_close(taps["block3"], plain.encoder.ln(tokens)[:, 0])


def test_smaller_crops_interpolate_position_embeddings(vit):
    with torch.no_grad():
        assert vit(torch.randn(3, 3, 16, 16)).shape == (3, 192)
        assert vit(torch.randn(1, 3, 16, 24)).shape == (1, 192)
    stored = vit.encoder.pos_embedding
    assert torch.equal(vit.pos_embedding(8, 8), stored)
    small = vit.pos_embedding(4, 4)
    assert small.shape == (1, 1 + 16, 192) and torch.equal(small[:, 0], stored[:, 0])
    # A field constant over positions stays constant, per channel: the patch grid and channels are not mixed up.
    ramp = torch.nn.Parameter(torch.cat([stored[:, :1], torch.arange(192.0).expand(1, 64, 192)], 1))
    net = build_backbone("vit_tiny", input_size=32)
    net.encoder.pos_embedding = ramp
    torch.testing.assert_close(net.pos_embedding(4, 6)[0, 1:], torch.arange(192.0).expand(24, 192))


def test_gradient_reaches_patch_projection_from_a_small_crop():
    net = build_backbone("vit_tiny", input_size=32).train()
    net(torch.randn(2, 3, 16, 16)).square().sum().backward()
    assert net.conv_proj.weight.grad.abs().sum() > 0 and net.encoder.pos_embedding.grad.abs().sum() > 0


def test_bad_sizes_are_one_line_errors(vit):
    with pytest.raises(SelfSupError, match="model.input_size 30 is not a multiple of the patch size 4") as err:
        build_backbone("vit_tiny", input_size=30)
    assert "\n" not in str(err.value)
    with pytest.raises(SelfSupError, match="model.input_size 68 is not a multiple of the patch size 8"):
        build_backbone("vit_tiny", input_size=68)  # patch_size None: 8 at 64 px and up
    with pytest.raises(SelfSupError, match="patch size 4"):
        vit(torch.randn(1, 3, 18, 16))
    with pytest.raises(SelfSupError, match="model.patch_size applies to"):
        build_backbone("resnet18", patch_size=4)


def test_config_rebuilds_the_same_net():
    for size, patch in ((32, None), (64, None), (32, 8)):
        net = build_backbone("vit_tiny", input_size=size, patch_size=patch)
        again = backbone_from(model_config_of(net))
        assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in again.state_dict().items()}
        assert again.model_config == net.model_config and again.patch_size == vit_patch_size(size, patch)


def test_rest_of_nets_works_with_a_vit(vit):
    with pytest.raises(SelfSupError, match="spatial"):
        vit.last_spatial_tap(32)
    with pytest.raises(SelfSupError, match="vit_tiny, vit_small, vit_base"):
        check_backbone("vit_huge")
    net = build_backbone("vit_tiny", input_size=32).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x.to(memory_format=torch.channels_last)), net(x))


def test_export_gives_torchvision_keys(tmp_path):
    """Both export formats load with strict=True into the stock torchvision model and give the same features."""
    cfg = selfsup.load_config(overrides={
        "epochs": 1, "batch_size": 8, "data": {"source": "digits", "size": 16, "samples_per_epoch": 8},
        "model": {"backbone": "vit_tiny", "input_size": 16}, "augment": {"size": 16},
        "optim": {"warmup_epochs": 0}, "eval": {"knn_every": 0, "source": None},
        "simclr": {"proj_hidden": 32, "proj_dim": 8}})
    selfsup.pretrain(cfg, tmp_path / "run", progress=False)
    ours = selfsup.load_run(tmp_path / "run").eval_backbone.eval()
    x = torch.randn(2, 3, 16, 16)
    for fmt, read in (("torchvision", lambda p: torch.load(p, weights_only=True)), ("safetensors", load_file)):
        summary = export_backbone(tmp_path / "run", format=fmt)
        assert "torchvision_vit('vit_tiny', 16, 4)" in summary["load_with"]
        stock = torchvision_vit("vit_tiny", 16, 4)
        stock.load_state_dict(read(summary["exported"]), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(stock.eval()(x), ours(x))
    with pytest.raises(SelfSupError, match="--format timm is for ResNet"):
        export_backbone(tmp_path / "run", format="timm")

"""Parts taken from the authors' code: RotNet's batch-normalised fc6/fc7, the context encoder's channel-wise fully
connected bottleneck, DeepCluster's top-layer restart, SeLa's augmented train-mode labelling and one-head relabelling,
and the single-image paper's dataset generator (initial square crop, centre kept after the warp)."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from fitting import fit

from selfsup.augmentation import AugmentConfig, augment_unit, single_image_authors, single_image_recipe
from selfsup.config import check_config, load_config
from selfsup.errors import SelfSupError
from selfsup.methods import DataInfo, build_method
from selfsup.methods.base import EpochContext
from selfsup.nets import backbone_from, build_backbone, model_config_of

CPU = torch.device("cpu")


def _method(method: str, model: dict | None = None, augment: dict | None = None, **section):
    cfg = load_config(overrides={"method": method,
                                 "model": {"backbone": "exemplar_small", "input_size": 16, **(model or {})},
                                 "augment": {"size": 16, **(augment or {})}, method: section})
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(num_samples=40, input_size=16))


def _images(n: int = 40, side: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, side, side, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------- model.fc_bn (RotNet's AlexNet)


def test_fc_bn_makes_fc6_and_fc7_rotnets_linear_batch_norm_relu_blocks():
    plain = build_backbone("alexnet_imagenet", input_size=64)
    net = build_backbone("alexnet_imagenet", input_size=64, fc_bn=True)
    for tap in ("fc6", "fc7"):
        layers = [m for m in net.stages[tap] if not isinstance(m, (nn.MaxPool2d, nn.Flatten))]
        assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
        assert layers[0].bias is None and layers[1].num_features == 4096
    assert not any(isinstance(m, nn.Dropout) for m in net.modules())
    x = torch.randn(3, 3, 64, 64)
    maps = net.train().forward_taps(x)
    assert net.taps == plain.taps and net.feature_dim == 4096 and net(x).shape == (3, 4096)
    assert {k: v.shape for k, v in maps.items()} == {k: v.shape for k, v in plain.forward_taps(x).items()}
    assert torch.equal(maps["fc7"], net(x)) and (maps["fc7"] >= 0).all()  # the representation: fc7 after its ReLU
    # Batch norm in train mode: every fc6 unit has zero mean over the batch before its ReLU.
    fc6 = net.stages.fc6
    pre = fc6[3](fc6[2](fc6[1](fc6[0](net.forward_taps(x, ["conv5"])["conv5"]))))
    assert pre.mean(0).abs().max() < 1e-4
    # Recorded in the model config and rebuilt from it (also from a run config's model section).
    assert model_config_of(net).fc_bn is True
    again = backbone_from(model_config_of(net))
    assert any(isinstance(m, nn.BatchNorm1d) for m in again.stages.fc7)
    cfg = load_config(overrides={"model": {"backbone": "alexnet_imagenet", "input_size": 64, "fc_bn": True}})
    assert any(isinstance(m, nn.BatchNorm1d) for m in backbone_from(cfg.model).stages.fc6)
    assert model_config_of(plain).fc_bn is False and plain.stages.fc7[0].bias is not None


def test_fc_bn_is_a_one_line_error_elsewhere_and_with_dropout():
    with pytest.raises(SelfSupError, match="model.fc_bn applies to alexnet_imagenet only") as info:
        build_backbone("alexnet_small", fc_bn=True)
    assert "\n" not in str(info.value)
    with pytest.raises(SelfSupError, match="set model.dropout=0") as info:
        build_backbone("alexnet_imagenet", input_size=64, dropout=0.5, fc_bn=True)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------- inpainting.bottleneck (channel-wise fully connected)


def _inpainter(**section):
    return _method("inpainting", augment={"crop_scale": [1.0, 1.0], "jitter_p": 0.0, "grayscale_p": 0.0},
                   decoder_width=16, **section)


def test_channelwise_bottleneck_has_m_n4_weights_and_keeps_channels_apart():
    from selfsup.methods.inpainting import ChannelwiseFC

    method = _inpainter(bottleneck="channelwise")
    plain = _inpainter()
    assert plain.bottleneck is None
    c, h, w = method.backbone.last_spatial_tap(16)[1]  # exemplar_small at 16 px: conv2, 64 x 8 x 8
    fc, conv, relu = method.bottleneck
    assert isinstance(fc, ChannelwiseFC) and isinstance(relu, nn.ReLU)
    assert fc.weight.numel() == c * (h * w) ** 2  # m n^4
    assert fc.bias.numel() == c * h * w  # a bias per channel and position
    assert conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.in_channels == conv.out_channels == c
    n_extra = sum(p.numel() for p in method.parameters()) - sum(p.numel() for p in plain.parameters())
    assert n_extra == c * (h * w) ** 2 + c * h * w + c * c + c

    x = torch.randn(2, c, h, w)
    out = fc(x)
    # Each channel's map is its own full connection: the same as a naive per-channel linear layer...
    for ch in (0, 5, c - 1):
        ref = x[:, ch].flatten(1) @ fc.weight[ch] + fc.bias[ch]
        torch.testing.assert_close(out[:, ch].flatten(1), ref, atol=1e-5, rtol=1e-5)
    # ...every output position of a channel sees every input position of it...
    grad = torch.autograd.functional.jacobian(lambda v: fc(v)[0, 3, 0, 0], x)
    assert (grad[0, 3] != 0).all()
    # ...and no other channel: perturbing one input channel changes that output channel alone.
    y = x.clone()
    y[:, 3] += torch.randn(2, h, w)
    changed = (fc(y) != out).flatten(2).any(2).any(0)
    assert changed.nonzero().flatten().tolist() == [3]


def test_channelwise_bottleneck_trains_and_bad_values_are_one_line():
    method = _inpainter(bottleneck="channelwise")
    images = _images(8)
    history = fit(method, images, 2, torch.optim.SGD(method.parameters(), lr=0.01))
    assert all(math.isfinite(h["loss"].item()) for h in history)
    assert method.bottleneck[0].weight.grad is not None and method.bottleneck[0].weight.grad.abs().sum() > 0
    with pytest.raises(SelfSupError, match="inpainting.bottleneck must be one of none, channelwise") as info:
        _inpainter(bottleneck="dense")
    assert "\n" not in str(info.value)


# -------------------------------------------------------------------------------- DeepCluster's top-layer restart


def test_deepcluster_restarts_its_top_layer_as_the_authors_normal_0_01_bias_0():
    method = _method("deepcluster", num_clusters=8, pca_dim=8, backend="torch")
    images = _images()
    with torch.no_grad():
        method.heads.weight.fill_(0.5)
        method.heads.bias.fill_(0.5)

    def restart(epoch: int) -> torch.Tensor:
        method.on_epoch_start(EpochContext(epoch, 3, images, CPU, None, seed=3))
        return method.heads.weight.detach().clone()

    new = restart(1)
    w = method.heads.weight
    assert w.numel() == 8 * 128 and abs(w.std().item() - 0.01) < 0.001 and abs(w.mean().item()) < 0.001
    assert torch.equal(method.heads.bias, torch.zeros_like(method.heads.bias))
    # Seeded by seed and epoch: every process draws the same; the next epoch draws anew.
    assert torch.equal(restart(1), new) and not torch.equal(restart(2), new)
    method.reset_heads(7)
    state = torch.get_rng_state()
    method.reset_heads(7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


# ------------------------------------------------------------------- SeLa: augmented labelling pass, one head per step


def _sela(**section):
    return _method("sela", num_clusters=4, num_heads=3, label_steps=3, **section)


def _label_step(method, epoch: int, images: torch.Tensor, seed: int = 0, epochs: int = 3) -> torch.Tensor:
    method.on_epoch_start(EpochContext(epoch, epochs, images, CPU, None, seed=seed))
    return method.labels.clone()


def test_relabel_heads_one_reoptimises_only_head_step_mod_heads():
    method, images = _sela(relabel_heads="one"), _images()
    before = method.labels.clone()
    after = [_label_step(method, epoch, images) for epoch in range(3)]  # label steps at epochs 0, 1, 2
    previous = before
    for step, labels in enumerate(after):
        changed = [t for t in range(3) if not torch.equal(labels[t], previous[t])]
        assert changed == [step % 3], (step, changed)
        previous = labels
    # "all" re-optimises every head at the first step.
    everything = _sela()
    first = _label_step(everything, 0, images)
    assert all(not torch.equal(first[t], before[t]) for t in range(3))
    # Head 0's one-head labels are the all-heads ones of head 0 (same weights, same pass).
    assert torch.equal(after[0][0], first[0])


def test_augmented_labelling_pass_is_reproducible_and_differs_from_the_centre_view():
    images = _images()
    center = _label_step(_sela(), 0, images)
    method = _sela(label_pass="augmented")
    bn = next(m for m in method.modules() if isinstance(m, nn.BatchNorm2d))
    running = bn.running_mean.clone()
    method.eval()
    augmented = _label_step(method, 0, images)
    assert not method.training  # its mode is restored
    assert not torch.equal(bn.running_mean, running)  # it ran in train mode (batch statistics, updated averages)
    assert not torch.equal(augmented, center)
    assert torch.equal(_label_step(_sela(label_pass="augmented"), 0, images), augmented)  # same seed: same labels
    assert not torch.equal(_label_step(_sela(label_pass="augmented"), 0, images, seed=1), augmented)
    counts = torch.stack([torch.bincount(h, minlength=4) for h in augmented])
    assert counts.min() > 0  # still an equal-partition plan


def test_augmented_pass_rows_do_not_depend_on_the_process_split(monkeypatch):
    """Each row's view, dropout mask and batch statistics depend on (seed, epoch, batch) only: two ranks' shares give
    the rows one process gives, so DDP and resume label alike."""
    import selfsup.methods.sela as sela

    method = _method("sela", model={"dropout": 0.5}, num_clusters=4, num_heads=2)
    images = _images(40)

    def fn(x):
        return method.logits(x)

    whole, order = method.augmented_pass(fn, images, seed=5, epoch=2, batch=16)
    assert sorted(order.tolist()) == list(range(40)) and whole.shape == (40, 2, 4)
    parts = []
    for share in ((0, 20), (20, 40)):
        monkeypatch.setattr(sela, "shard_range", lambda n, share=share: share)
        part, again = method.augmented_pass(fn, images, seed=5, epoch=2, batch=16)
        assert torch.equal(again, order)
        parts.append(part)
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-5, rtol=1e-5)
    monkeypatch.undo()
    other, _ = method.augmented_pass(fn, images, seed=5, epoch=3, batch=16)
    assert not torch.allclose(other, whole)  # another epoch, other draws


def test_augmented_one_head_labelling_resumes_exactly(tmp_path):
    """Two epochs in one go, or one and a resume: the same labels (head 1 relabelled by the resumed process from the
    same augmented views) and the same weights."""
    from selfsup.engine import fit, load_checkpoint

    cfg = load_config(overrides={
        "method": "sela", "epochs": 2, "batch_size": 16, "seed": 3, "data": {"source": "memory"},
        "model": {"backbone": "exemplar_small", "input_size": 16}, "augment": {"size": 16},
        "eval": {"knn_every": 0}, "optim": {"lr": 0.05, "warmup_epochs": 0},
        "sela": {"num_clusters": 4, "num_heads": 2, "label_steps": 2, "label_pass": "augmented",
                 "relabel_heads": "one"}})
    images = _images(32)
    straight = fit(None, images, cfg, None, progress=False).state_dict()  # None: a run that writes nothing
    fit(None, images, replace(cfg, max_minutes=0.0), tmp_path / "split", progress=False)
    halfway = load_checkpoint(tmp_path / "split")
    assert halfway["epoch"] == 1
    fit(None, images, cfg, tmp_path / "split", resume=True, progress=False)
    split = load_checkpoint(tmp_path / "split")["method"]
    before = halfway["method"]["labels"]
    assert torch.equal(split["labels"][0], before[0]) and not torch.equal(split["labels"][1], before[1])
    assert torch.equal(straight["labels"], split["labels"])
    assert all(torch.equal(straight[k], split[k]) for k in straight)


def test_sela_label_options_are_one_line_errors():
    for key, value, names in (("label_pass", "random", "center or augmented"), ("relabel_heads", "two", "all or one")):
        with pytest.raises(SelfSupError, match=f"sela.{key} must be {names}") as info:
            _sela(**{key: value})
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- the single-image paper's dataset generator


def _marked_source(side: int = 64) -> torch.Tensor:
    """Grey, with a red patch in the top-left corner and a blue one in the bottom-right (8 x 8 each)."""
    img = torch.full((1, side, side, 3), 128, dtype=torch.uint8)
    img[0, :8, :8] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    img[0, -8:, -8:] = torch.tensor([0, 0, 255], dtype=torch.uint8)
    return img


PLAIN = dict(size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def test_initial_crop_draws_the_crop_inside_a_random_half_side_square():
    n = 400
    cfg = AugmentConfig(**PLAIN, initial_crop=0.5)
    # Left half black, right half white: a whole-square crop shows as much white as the square holds.
    halves = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    halves[:, :, 32:] = 255
    x, p = augment_unit(halves, cfg, torch.Generator().manual_seed(0), n=n, return_params=True)
    assert torch.allclose(p.theta[:, 0, 0], torch.tensor(0.5)) and torch.allclose(p.theta[:, 1, 1], torch.tensor(0.5))
    assert torch.allclose(p.crop_wh, torch.tensor(0.5))  # fractions of the source: half its side
    cx, cy = p.theta[:, 0, 2], p.theta[:, 1, 2]
    assert cx.abs().max() <= 0.5 + 1e-6 and cy.abs().max() <= 0.5 + 1e-6  # the square stays inside the source
    # The square's place is uniform: centres spread over [-0.5, 0.5] with the variance of a uniform (1/12).
    assert cx.min() < -0.45 and cx.max() > 0.45 and abs(cx.mean()) < 0.05 and abs(cx.var() - 1 / 12) < 0.015
    white = x.mean(dim=(1, 2, 3))
    assert (white - (cx + 0.5)).abs().max() < 0.05  # the white share of each image is the square's
    # Far-apart corners never meet in one output (a half-side square cannot hold both); whole-image crops hold both.
    marked = _marked_source()
    for initial, both in ((0.5, False), (0.0, True)):
        y = augment_unit(marked, replace(cfg, initial_crop=initial), torch.Generator().manual_seed(1), n=n)
        red = ((y[:, 0] > 0.8) & (y[:, 2] < 0.2)).flatten(1).any(1)
        blue = ((y[:, 2] > 0.8) & (y[:, 0] < 0.2)).flatten(1).any(1)
        assert (red & blue).all() if both else not (red & blue).any()
    # The crop scale is a fraction of the square's area: at most a quarter of the source's here.
    _, q = augment_unit(marked, replace(cfg, crop_scale=(0.1, 1.0), crop_ratio=(0.75, 4 / 3)),
                        torch.Generator().manual_seed(2), n=n, return_params=True)
    area = q.crop_wh.prod(1)
    assert area.min() >= 0.1 * 0.25 - 1e-6 and area.max() <= 0.25 + 1e-6


@pytest.mark.parametrize("rotation,shear", [(0.0, 0.0), (30.0, 30.0)])
def test_keep_center_is_the_central_part_of_the_warped_crop(rotation, shear):
    src = (torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0)) * 255)
    # 60 px: under 4 x 16, so neither output size samples a halved mip level (a bigger source would give the 16-px
    # output a smoother level than the 32-px one: the same picture up to interpolation, not to the bit).
    src = torch.nn.functional.interpolate(src, size=(60, 60), mode="bilinear").round().to(torch.uint8)
    full = AugmentConfig(size=32, crop_scale=(0.3, 1.0), flip_p=0.5, rotation=rotation, shear=shear, jitter_p=0.0,
                         grayscale_p=0.0)
    centre = replace(full, size=16, keep_center=0.5)
    a = augment_unit(src, full, torch.Generator().manual_seed(4), n=32)
    b = augment_unit(src, centre, torch.Generator().manual_seed(4), n=32)
    # 16 output pixels over the central half sit exactly on the central 16 of the 32 over the whole crop.
    torch.testing.assert_close(b, a[:, :, 8:24, 8:24], atol=1e-5, rtol=0)


def test_single_image_authors_matches_their_generator_statistically():
    cfg = single_image_authors(size=32)
    assert (cfg.initial_crop, cfg.crop_scale, cfg.keep_center, cfg.padding) == (0.5, (1 / 500, 1.0), 256 / 362,
                                                                                  "zeros")
    assert single_image_recipe().initial_crop == 0.0 and single_image_recipe().keep_center == 1.0  # unchanged
    n = 4000
    x, p = augment_unit(_marked_source(128), cfg, torch.Generator().manual_seed(3), n=n, return_params=True)
    assert x.shape == (n, 3, 32, 32) and not p.flip.any() and not p.gray.any()
    shear = p.extra["shear"]
    assert shear.abs().max() <= 30 and shear.min() < -29.5 and shear.max() > 29.5
    assert abs(shear.mean()) < 1.5 and abs(shear.std() - 30 / math.sqrt(3)) < 1.0  # uniform in [-30, 30]
    assert p.angle.abs().max() <= 30 and abs(p.angle.std() - 30 / math.sqrt(3)) < 1.0
    assert abs(p.jitter.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    area = p.crop_wh.prod(1) / 0.25  # of the half-side square's area
    assert area.min() >= 1 / 500 - 1e-6 and area.max() <= 1 + 1e-6
    # Black corners come in with the rotation and shear wherever the warp leaves the source.
    assert ((x < 0.02).all(1)).any()


def test_generator_knobs_are_checked_and_keep_the_synthesised_files_key():
    from selfsup.config import config_to_dict
    from selfsup.engine.data import _augment_key

    for key, value in (("keep_center", 0.0), ("initial_crop", 1.5)):
        with pytest.raises(SelfSupError, match=key):
            check_config(load_config(overrides={"augment": {key: value}}))
    default = config_to_dict(load_config())["data"]["single_image"]
    assert "initial_crop" not in _augment_key(default) and "keep_center" not in _augment_key(default)
    authors = config_to_dict(load_config(overrides={"data": {"single_image": {"initial_crop": 0.5}}}))
    assert _augment_key(authors["data"]["single_image"])["initial_crop"] == 0.5

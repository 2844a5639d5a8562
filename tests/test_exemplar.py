"""Exemplar-CNN: seed sampling, the six transformation families, the surrogate task, the quadrant protocol,
and the memory-bank (instance) mode."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_hsv
from test_train import tiny_config

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.data import load_source
from selfsup.engine import load_checkpoint, load_run, pretrain
from selfsup.eval.quadrant import SVM_C, linear_svm, quadrant_dim, quadrant_features, run_quadrant
from selfsup.methods import DataInfo, build_method
from selfsup.methods.base import Batch
from selfsup.methods.exemplar import SEEDS, Exemplar
from selfsup.methods.exemplar.seeds import (
    ExemplarTransformConfig,
    gradient_energy,
    load_seeds,
    pixel_pca,
    resize_images,
    sample_seeds,
    save_seeds,
    transform,
)
from selfsup.nets import StagedBackbone, build_backbone

NEUTRAL = ExemplarTransformConfig(translate=0.0, scale=(1.0, 1.0), rotation=0.0, pca_contrast=(1.0, 1.0),
                                  sv_power=(1.0, 1.0), sv_scale=(1.0, 1.0), sv_shift=(0.0, 0.0), hue=(0.0, 0.0))
FAMILIES = {  # each family on its own, at the paper's range
    "translate": {"translate": 0.2}, "scale": {"scale": (0.7, 1.4)}, "rotation": {"rotation": 20.0},
    "pca_contrast": {"pca_contrast": (0.5, 2.0)},
    "sv": {"sv_power": (0.25, 4.0), "sv_scale": (0.7, 1.4), "sv_shift": (-0.1, 0.1)}, "hue": {"hue": (-0.1, 0.1)},
}


def _half_textured(n: int, size: int = 96, seed: int = 0) -> np.ndarray:
    """Images whose left third is noise and the rest one flat colour."""
    rng = np.random.default_rng(seed)
    img = np.full((n, size, size, 3), 120, dtype=np.uint8)
    img[:, :, : size // 3] = rng.integers(0, 256, (n, size, size // 3, 3), dtype=np.uint8)
    return img


def _contexts(n: int = 8, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size, mode="bilinear")
    return (smooth * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def test_seeds_sit_on_textured_regions():
    images = _half_textured(400)
    seeds = sample_seeds(images, 400, patch=16, image_size=96, seed=0)
    left = seeds.top_left[:, 1]  # 81 possible columns; columns 0..31 are textured
    # Uniform positions: 41% of patches would overlap the texture and 30% have their centre on it.
    assert (left <= 32).mean() > 0.99
    assert (left + 8 < 32).mean() > 0.85
    assert seeds.context.shape == (400, 32, 32, 3) and seeds.context.dtype == np.uint8


def test_seeds_are_reproducible_saved_and_centred_on_their_patch(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    a, b = sample_seeds(images, 20, seed=5), sample_seeds(images, 20, seed=5)
    assert np.array_equal(a.context, b.context) and np.array_equal(a.top_left, b.top_left)
    assert not np.array_equal(sample_seeds(images, 20, seed=6).top_left, a.top_left)
    assert len(set(a.image_index.tolist())) == 20  # one seed per image while there are enough images
    save_seeds(a, tmp_path / "s.npz")
    c = load_seeds(tmp_path / "s.npz")
    assert np.array_equal(c.context, a.context) and c.patch == 32 and c.image_size == 64
    # The context's central 32x32 is the patch at top_left of the image upsampled to 64x64.
    up = ((resize_images(torch.from_numpy(images[a.image_index[:3]]), 64) * 255).round().to(torch.uint8)
          .permute(0, 2, 3, 1))
    for i in range(3):
        y, x = a.top_left[i]
        assert np.array_equal(a.context[i, 16:48, 16:48], up[i, y:y + 32, x:x + 32].numpy())


def test_gradient_energy_is_zero_on_flat_images_and_positive_on_edges():
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert gradient_energy(flat).abs().max() < 1e-12
    edge = flat.clone()
    edge[..., 8:] = 0.9
    e = gradient_energy(edge)[0]
    assert e[:, 7:9].min() > 0.01 and e[:, :6].max() < 1e-12


def test_all_families_at_their_neutral_value_give_the_patch_back():
    ctx = _contexts()
    axes, mean = pixel_pca(ctx)
    out = transform(ctx, NEUTRAL, torch.Generator().manual_seed(0), 32, 0.5, axes, mean)
    expected = ctx[:, 16:48, 16:48].permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_stays_in_range_changes_the_patch_and_is_seeded(family):
    ctx = _contexts(64)
    axes, mean = pixel_pca(ctx)
    cfg = dataclasses.replace(NEUTRAL, **FAMILIES[family])
    out, p = transform(ctx, cfg, torch.Generator().manual_seed(1), 32, 0.5, axes, mean, return_params=True)
    again = transform(ctx, cfg, torch.Generator().manual_seed(1), 32, 0.5, axes, mean)
    other = transform(ctx, cfg, torch.Generator().manual_seed(2), 32, 0.5, axes, mean)
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert out.min() >= 0 and out.max() <= 1
    neutral = transform(ctx, NEUTRAL, torch.Generator().manual_seed(1), 32, 0.5, axes, mean)
    assert (out - neutral).abs().amax(dim=(1, 2, 3)).median() > 0.01  # the family does something
    ranges = {"angle": (-20, 20), "zoom": (0.7, 1.4), "shift": (-0.2, 0.2), "pca_factors": (0.5, 2.0),
              "sv_power": (0.25, 4.0), "sv_scale": (0.7, 1.4), "sv_shift": (-0.1, 0.1), "hue": (-0.1, 0.1)}
    on = {"translate": ["shift"], "scale": ["zoom"], "rotation": ["angle"], "pca_contrast": ["pca_factors"],
          "sv": ["sv_power", "sv_scale", "sv_shift"], "hue": ["hue"]}[family]
    for name, (low, high) in ranges.items():
        values = p[name]
        if name in on:
            assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6
            assert values.max() - values.min() > 0.5 * (high - low)  # spread over the range, not stuck
        else:
            neutral_value = 1.0 if name in ("zoom", "pca_factors", "sv_power", "sv_scale") else 0.0
            torch.testing.assert_close(values, torch.full_like(values, neutral_value))


def test_factors_are_log_uniform_and_shifts_uniform():
    from scipy.stats import kstest

    # Only the drawn parameters matter here: many tiny copies at the paper's ranges.
    n = 4000
    ctx = torch.full((n, 4, 4, 3), 128, dtype=torch.uint8)
    _, p = transform(ctx, ExemplarTransformConfig(), torch.Generator().manual_seed(5), 2, 0.5, torch.eye(3),
                     torch.full((3,), 0.5), return_params=True)
    values = {k: v.double().numpy() for k, v in p.items()}
    for name, (low, high) in {"zoom": (0.7, 1.4), "pca_factors": (0.5, 2.0), "sv_power": (0.25, 4.0)}.items():
        v = values[name].ravel()
        assert kstest(np.log(v), "uniform", args=(math.log(low), math.log(high / low))).pvalue > 1e-3, name
        assert kstest(v, "uniform", args=(low, high - low)).pvalue < 1e-6, name  # not uniform in the factor itself
    uniform = {"angle": (-20, 20), "shift": (-0.2, 0.2), "sv_scale": (0.7, 1.4), "sv_shift": (-0.1, 0.1),
               "hue": (-0.1, 0.1)}
    for name, (low, high) in uniform.items():
        assert kstest(values[name].ravel(), "uniform", args=(low, high - low)).pvalue > 1e-3, name
    # Each principal component, S and V, and the two shift axes get their own draws.
    for name in ("pca_factors", "sv_power", "sv_scale", "sv_shift", "shift"):
        corr = np.corrcoef(values[name].T)
        assert np.abs(corr[np.triu_indices(len(corr), 1)]).max() < 0.06, name


def test_hue_family_turns_hue_by_the_drawn_amount():
    ctx = _contexts(16)
    axes, mean = pixel_pca(ctx)
    cfg = dataclasses.replace(NEUTRAL, hue=(-0.1, 0.1))
    out, p = transform(ctx, cfg, torch.Generator().manual_seed(3), 32, 0.5, axes, mean, return_params=True)
    before = rgb_to_hsv(ctx[:, 16:48, 16:48].permute(0, 3, 1, 2).float() / 255)
    after = rgb_to_hsv(out)
    saturated = (before[:, 1] > 0.3) & (before[:, 2] > 0.3)
    turn = torch.remainder(after[:, 0] - before[:, 0] + math.pi, 2 * math.pi) - math.pi
    expected = (2 * math.pi * p["hue"])[:, None, None].expand_as(turn)
    assert (turn - expected)[saturated].abs().median() < 0.02


def test_pca_contrast_scales_each_principal_component():
    ctx = _contexts(16)
    axes, mean = pixel_pca(ctx)
    cfg = dataclasses.replace(NEUTRAL, pca_contrast=(0.5, 2.0))
    out, p = transform(ctx, cfg, torch.Generator().manual_seed(4), 32, 0.5, axes, mean, return_params=True)
    src = ctx[:, 16:48, 16:48].permute(0, 3, 1, 2).float() / 255
    proj_in = torch.einsum("ck,bkhw->bchw", axes, src - mean.view(1, 3, 1, 1))
    proj_out = torch.einsum("ck,bkhw->bchw", axes, out - mean.view(1, 3, 1, 1))
    inside = (out > 0.001).all(1, keepdim=True) & (out < 0.999).all(1, keepdim=True)  # not clipped
    expected = proj_in * p["pca_factors"][:, :, None, None]
    assert (proj_out - expected).abs()[inside.expand_as(expected)].max() < 1e-4


def test_paper_nets_layer_shapes_at_64_pixels():
    # Exemplar-CNN's layer shapes on a 64x64 image (5x5 convs that keep size, 2x2 max-pool after conv1 and conv2).
    shapes = {"exemplar_small": [(64, 64), (64, 32)], "exemplar_medium": [(64, 64), (128, 32), (256, 16)],
              "exemplar_large": [(92, 64), (256, 32), (512, 16)]}
    for name, expected in shapes.items():
        net = build_backbone(name, input_size=32).eval()
        taps = [t for t in net.taps if t.startswith("conv")]
        maps = net.forward_taps(torch.zeros(1, 3, 64, 64), taps)
        assert [(m.shape[1], m.shape[2]) for m in maps.values()] == expected
        assert quadrant_dim(net, 64) == 4 * sum(c for c, _ in expected)  # 512, 1792, 3440
    feats = quadrant_features(build_backbone("exemplar_small"), torch.zeros(3, 32, 32, 3, dtype=torch.uint8), 64,
                              torch.device("cpu"))
    assert feats.shape == (3, 512)


def _exemplar_config(**extra):
    base = {"method": "exemplar", "epochs": 4, "batch_size": 64, "data": {"samples_per_epoch": None},
            "model": {"input_size": 16, "dropout": 0.0}, "optim": {"lr": 0.05, "warmup_epochs": 0, "schedule": "step",
            "step_epochs": [3]}, "exemplar": {"num_seeds": 16, "patch": 16, "image_size": 32, "samples_per_class": 32},
            "eval": {"knn_every": 0}}
    base.update(extra)
    return tiny_config(**base)


def test_surrogate_task_learns_on_a_tiny_set(tmp_path):
    cfg = _exemplar_config()
    pretrain(cfg, tmp_path / "run", progress=False)
    seeds = load_seeds(tmp_path / "run" / SEEDS)
    assert len(seeds.context) == 16 and seeds.context.shape[1] == 32
    method = load_run(tmp_path / "run")
    assert isinstance(method, Exemplar) and method.classifier.out_features == 16
    # Fresh transformed copies (never seen in training) of every seed, classified among the 16 surrogate classes,
    # by the trained net and by the same run at its initialisation.
    images = torch.from_numpy(seeds.context).repeat(8, 1, 1, 1)
    target = torch.arange(16).repeat(8)

    def accuracy(m):
        with torch.no_grad():
            x = m.copies(Batch(images, target, torch.Generator().manual_seed(99)))
            return (m.classifier(m.backbone(x)).argmax(1) == target).float().mean().item()

    trained, untrained = accuracy(method), accuracy(load_run(tmp_path / "run", random_init=True))
    assert trained > untrained + 0.3, (trained, untrained)  # chance is 1/16


def test_exemplar_resume_reuses_the_saved_seeds(tmp_path):
    pretrain(_exemplar_config(epochs=2, max_minutes=0.0), tmp_path / "a", progress=False)  # stops after epoch 1
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    sampled = load_seeds(tmp_path / "a" / SEEDS)
    # Seeds that sampling can never give (the negatives): a resume that sampled again would not see them.
    altered = dataclasses.replace(sampled, context=255 - sampled.context)
    save_seeds(altered, tmp_path / "b" / SEEDS)
    for run in ("a", "b"):
        assert pretrain(_exemplar_config(epochs=2), tmp_path / run, resume=True, progress=False)["epoch"] == 2
    assert np.array_equal(load_seeds(tmp_path / "a" / SEEDS).context, sampled.context)
    assert np.array_equal(load_seeds(tmp_path / "b" / SEEDS).context, altered.context)
    # Both resumed from the same checkpoint: only the seed file differs, so b's second epoch trained on other images.
    wa, wb = (load_checkpoint(tmp_path / run)["method"]["classifier.weight"] for run in ("a", "b"))
    assert not torch.equal(wa, wb)


def _instance(num_samples: int, dim: int, momentum: float = 0.5):
    cfg = load_config(overrides={"method": "instance", "model": {"backbone": "exemplar_small", "input_size": 16,
                                                                 "dropout": 0.0},
                                 "instance": {"dim": dim, "negatives": 8, "momentum": momentum}})
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(num_samples))


def test_instance_mode_keeps_a_unit_norm_bank_per_image(tmp_path):
    from selfsup.methods.instance import InstanceConfig

    # The update on known values: entry <- normalise(m * entry + (1 - m) * new embedding); the README's m is 0.5.
    assert InstanceConfig().momentum == 0.5
    method = _instance(5, dim=2, momentum=0.75)
    method.bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.0, -1.0]]))
    method._update_bank(torch.tensor([[0.0, 1.0], [0.6, 0.8]]), torch.tensor([0, 3]))
    r = 10 ** -0.5  # (0.75, 0.25) and (-0.75 + 0.15, 0.2) = (-0.6, 0.2), normalised
    expected = torch.tensor([[3 * r, r], [0.0, 1.0], [0.6, 0.8], [-3 * r, r], [0.0, -1.0]])
    torch.testing.assert_close(method.bank, expected)

    # A training step writes exactly its batch's entries, from the embeddings of the copies it scored.
    method = _instance(40, dim=8)
    images = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([3, 7, 11, 20])
    before = method.bank.clone()
    method(Batch(images[index], index, torch.Generator().manual_seed(5)))
    with torch.no_grad():  # the same copies again (same generator), through the same train-mode net
        v = F.normalize(method.embed(method.backbone(method.copies(
            Batch(images[index], index, torch.Generator().manual_seed(5))))), dim=1)
    expected = before.clone()
    expected[index] = F.normalize(0.5 * before[index] + 0.5 * v, dim=1)
    torch.testing.assert_close(method.bank, expected)

    # In a run: one entry per training image, each of unit norm; an epoch moves every entry its full batches visit.
    cfg = _exemplar_config(method="instance", epochs=1, batch_size=32, instance={"negatives": 64, "dim": 8})
    cfg.augment.size = 16
    pretrain(cfg, tmp_path / "run", progress=False)
    bank, n = load_run(tmp_path / "run").bank, len(load_source("digits", "train"))
    assert bank.shape == (n, 8)
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(n), atol=1e-5, rtol=0)
    start = F.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert (bank - start).norm(dim=1).gt(1e-3).sum() == (n // 32) * 32  # a permutation of the N, in full batches


@pytest.fixture(scope="module")
def exemplar_run(tmp_path_factory):
    """One short Exemplar-CNN run on digits for the evaluation tests (they add to its eval.jsonl, nothing else)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SELFSUP_CACHE", str(tmp_path_factory.mktemp("cache")))
        run = tmp_path_factory.mktemp("exemplar") / "run"
        pretrain(_exemplar_config(epochs=1), run, progress=False)
    return run


def _squares_in_corners(root, per_class: int = 10) -> None:
    """A folder source (train/, test/) of 64x64 PNGs: class q is a 4x4 square of random brightness at the centre of
    quadrant q, on a flat background. The squares lie further from the borders than the conv2 units see, and 32 px
    apart (a multiple of the net's stride), so every class gives the same maps up to a shift and the brightness."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for q in range(4):
            folder = root / split / f"q{q}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = np.full((64, 64, 3), 20, dtype=np.uint8)
                y, x = 14 + 32 * (q // 2), 14 + 32 * (q % 2)
                img[y:y + 4, x:x + 4] = rng.integers(120, 256)
                Image.fromarray(img).save(folder / f"{i}.png")


def test_quadrant_cli_tells_apart_where_things_are(exemplar_run, tmp_path, capsys):
    # Where the square is, not what it looks like, is the class. Pooled over the whole map the features do not depend
    # on the class (37.5% when global max pooling was tried, chance is 25%); pooled per quadrant, the class is plain.
    _squares_in_corners(tmp_path / "squares")
    overrides = [f"eval.source=folder:{tmp_path / 'squares'}", "eval.size=64"]
    assert main(["eval", "quadrant", str(exemplar_run), "--size", "64", "--classifier", "svm", *overrides]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dims"] == 4 * (64 + 64) and result["classifier"] == "svm" and result["model"] == "pretrained"
    assert result["quadrant_top1"] == 100.0


def _pass_through() -> StagedBackbone:
    """A stand-in net whose maps are known: conv1 is the input itself, conv2 its 2x2 means, fc a linear map of 8 px
    inputs (not a map: the protocol leaves it out)."""
    nn = torch.nn
    stages = {"conv1": nn.Identity(), "conv2": nn.AvgPool2d(2), "fc": nn.Sequential(nn.Flatten(), nn.Linear(48, 5))}
    return StagedBackbone(stages, nn.Identity(), 5)


def test_quadrant_pooling_takes_the_maximum_of_each_quadrant_of_every_conv_map():
    img = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    img[0, 1, 2, 0], img[0, 7, 7, 0], img[0, 2, 5, 1], img[0, 6, 1, 2] = 255, 204, 51, 102  # one pixel per quadrant
    img[1, 3, 4, 0], img[1, 4, 3, 1] = 255, 255  # next to the centre lines: top-right, bottom-left
    # A background of -0.5 (the transform), so the pooled value must be the maximum, not a mean or a magnitude.
    feats = quadrant_features(_pass_through(), img, 8, torch.device("cpu"), transform=lambda x: x - 0.5)
    o = -0.5
    # Per conv tap, per channel: top-left, top-right, bottom-left, bottom-right. A 2x2 mean holding one bright pixel v
    # is (v - 0.5 + 3 * (-0.5)) / 4.
    expected = torch.tensor([
        [[0.5, o, o, 0.3], [o, -0.3, o, o], [o, o, -0.1, o],  # conv1
         [-0.25, o, o, -0.3], [o, -0.45, o, o], [o, o, -0.4, o]],  # conv2
        [[o, 0.5, o, o], [o, o, 0.5, o], [o, o, o, o],
         [o, -0.25, o, o], [o, o, -0.25, o], [o, o, o, o]],
    ]).flatten(1)
    assert quadrant_dim(_pass_through(), 8) == 24
    torch.testing.assert_close(feats, expected)


def _flat_colours(per_class: int, seed: int) -> np.ndarray:
    """8x8 images of four classes: red, green, blue and grey, with a little noise."""
    rng = np.random.default_rng(seed)
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [120, 120, 120]])
    noise = rng.normal(0, 5, (4 * per_class, 8, 8, 3))
    return np.clip(np.repeat(colours, per_class, 0)[:, None, None] + noise, 0, 255).astype(np.uint8)


def test_quadrant_protocol_reports_mean_and_std_over_folds():
    from selfsup.data import ImageArray

    # Three training folds of the same easy images whose accuracies are known in advance: labelled right (100%),
    # every label moved to the next class (0%), and class 0 labelled as class 1 (75%). Mean 58.33 (the median would be
    # 75), standard deviation sqrt((41.67^2 + 58.33^2 + 16.67^2) / 3) = 42.49 (over N - 1 it would be 52.04).
    images, truth = _flat_colours(10, 0), np.repeat(np.arange(4), 10)
    labels = np.concatenate([truth, (truth + 1) % 4, np.maximum(truth, 1)])
    train = ImageArray("train", np.concatenate([images] * 3), labels, ["r", "g", "b", "grey"])
    test = ImageArray("test", _flat_colours(5, 1), np.repeat(np.arange(4), 5), train.classes)
    folds = [np.arange(40 * i, 40 * i + 40) for i in range(3)]
    # The paper's linear SVM here (the probe is the classifier of the STL-10 command-line test below).
    result = run_quadrant(_pass_through(), train, test, torch.device("cpu"), size=8, classifier="svm", folds=folds)
    assert result["folds"] == [100.0, 0.0, 75.0] and result["dims"] == 24
    assert result["quadrant_top1"] == 58.33 and result["std"] == 42.49


def test_linear_svm_picks_c_on_a_holdout():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 20)) + 3 * np.eye(3, 20)[y]
    acc, c = linear_svm(x[:400], y[:400], x[400:], y[400:])
    assert acc > 90 and c in SVM_C


def _bank_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        cfg = load_config(overrides={"method": "instance", "model": {"backbone": "exemplar_small", "input_size": 16},
                                     "instance": {"dim": 8, "negatives": 16}})
        torch.manual_seed(0)
        method = build_method(cfg, DataInfo(40))
        model = torch.nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        images = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        gen = torch.Generator().manual_seed(10 + rank)  # each rank augments and samples negatives its own way
        for step in range(2):
            index = torch.arange(step * 20 + rank * 10, step * 20 + rank * 10 + 10)
            loss = model(Batch(images[index], index, gen))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.save(method.bank, f"{out_dir}/bank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_memory_bank_stays_identical_across_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_bank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    bank0, bank1 = torch.load(tmp_path / "bank0.pt"), torch.load(tmp_path / "bank1.pt")
    assert torch.equal(bank0, bank1)  # every rank applied every rank's updates
    start = torch.nn.functional.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert (bank0 - start).norm(dim=1).gt(1e-4).all()  # all 40 entries were written, half of them by the other rank


def test_quadrant_cli_uses_the_stl10_folds(exemplar_run, tmp_path, capsys):
    # A miniature STL-10 in its binary format: the test split is 40 images of four colours, and the training split
    # three copies of them, labelled right, every label moved to the next class, and class 0 labelled as class 1. The
    # predefined folds are the three copies, so their accuracies are known: 100%, 0% and 75%.
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 10)
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [120, 120, 120]])
    images = np.clip(colours[truth][:, None, None] + rng.normal(0, 5, (40, 96, 96, 3)), 0, 255).astype(np.uint8)
    labels = np.concatenate([truth, (truth + 1) % 4, np.maximum(truth, 1)])
    splits = {"train": (np.concatenate([images] * 3), labels), "test": (images, truth)}
    for split, (x, y) in splits.items():
        x.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    (folder / "fold_indices.txt").write_text("".join(" ".join(map(str, range(40 * f, 40 * f + 40))) + "\n"
                                                     for f in range(3)))
    assert main(["eval", "quadrant", str(exemplar_run), "--size", "32", "--classifier", "probe",
                 "eval.source=stl10", f"eval.root={tmp_path}", "eval.probe_epochs=300"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["folds"] == [100.0, 0.0, 75.0]
    assert result["quadrant_top1"] == 58.33 and result["std"] == 42.49

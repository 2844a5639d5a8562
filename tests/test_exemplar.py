"""Exemplar-CNN: seed sampling, the six transformation families, the surrogate task, the quadrant protocol,
and the memory-bank (instance) mode."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from kornia.color import rgb_to_hsv
from test_train import tiny_config

from selfsup.cli import main
from selfsup.config import load_config
from selfsup.data import load_source
from selfsup.engine import load_run, pretrain
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
from selfsup.nets import build_backbone

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
    # Fresh transformed copies (never seen in training) of every seed, classified among the 16 surrogate classes.
    images = torch.from_numpy(seeds.context).repeat(8, 1, 1, 1)
    target = torch.arange(16).repeat(8)
    with torch.no_grad():
        x = method.copies(Batch(images, target, torch.Generator().manual_seed(99)))
        acc = (method.classifier(method.backbone(x)).argmax(1) == target).float().mean().item()
    assert acc > 0.5, acc  # chance is 1/16


def test_exemplar_resume_reuses_the_saved_seeds(tmp_path):
    cfg = _exemplar_config(epochs=2)
    pretrain(cfg, tmp_path / "run", progress=False)
    before = load_seeds(tmp_path / "run" / SEEDS).context.copy()
    cfg.epochs = 3
    pretrain(cfg, tmp_path / "run", resume=True, progress=False)
    assert np.array_equal(load_seeds(tmp_path / "run" / SEEDS).context, before)


def test_instance_mode_keeps_a_unit_norm_bank_per_image(tmp_path):
    cfg = _exemplar_config(method="instance", epochs=2, batch_size=32, instance={"negatives": 64, "dim": 8})
    cfg.augment.size = 16
    pretrain(cfg, tmp_path / "run", progress=False)
    method = load_run(tmp_path / "run")
    bank, n = method.bank, len(load_source("digits", "train"))
    assert bank.shape == (n, 8)  # one entry per training image
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(n), atol=1e-5, rtol=0)
    # Entries visited in training moved away from their random start (seeded by 0 in the constructor).
    start = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert (bank - start).norm(dim=1).gt(1e-3).float().mean() > 0.9


def test_quadrant_cli_on_digits(tmp_path, capsys):
    cfg = _exemplar_config(epochs=1)
    pretrain(cfg, tmp_path / "run", progress=False)
    assert main(["eval", "quadrant", str(tmp_path / "run"), "--size", "32", "--classifier", "svm"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dims"] == 4 * (64 + 64) and result["classifier"] == "svm"
    assert result["quadrant_top1"] > 50  # digits: ten classes, chance is 10%


def test_quadrant_protocol_reports_mean_and_std_over_folds():
    train, test = load_source("digits", "train", size=16), load_source("digits", "test", size=16)
    folds = [np.arange(i, len(train), 3) for i in range(3)]  # three disjoint training folds, as STL-10 has ten
    net = build_backbone("exemplar_small", input_size=16)
    result = run_quadrant(net, train, test, torch.device("cpu"), size=16, classifier="probe", folds=folds,
                          probe_epochs=5)
    assert len(result["folds"]) == 3 and result["dims"] == 512
    assert result["quadrant_top1"] == pytest.approx(np.mean(result["folds"]), abs=0.01)
    assert result["std"] == pytest.approx(np.std(result["folds"]), abs=0.01)
    assert min(result["folds"]) > 50  # random conv features of digits are far above the 10% of chance


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


def test_quadrant_cli_uses_the_stl10_folds(tmp_path, capsys):
    # A miniature STL-10 in its binary format: 40 labelled 96x96 images, two predefined folds of 20.
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    images = np.clip(rng.normal(60 + 40 * labels[:, None, None, None], 20, (40, 96, 96, 3)), 0, 255).astype(np.uint8)
    for split in ("train", "test"):
        images.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    (folder / "fold_indices.txt").write_text(" ".join(map(str, range(0, 40, 2))) + "\n"
                                             + " ".join(map(str, range(1, 40, 2))) + "\n")
    pretrain(_exemplar_config(epochs=1), tmp_path / "run", progress=False)
    assert main(["eval", "quadrant", str(tmp_path / "run"), "--size", "32", "--classifier", "probe",
                 "eval.source=stl10", f"eval.root={tmp_path}", "eval.probe_epochs=3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["folds"]) == 2 and "std" in result
    assert result["quadrant_top1"] > 50  # four classes told apart by brightness; chance is 25%

"""SwAV and DINO: their public losses against naive references written here (loops, float64, the authors'
formulas), the Sinkhorn codes, the centre, the momentum teacher and its schedule, multi-crop, and each method's
own schedule of frozen parts, clipping, queue and evaluation network. Exact resume is in test_resume and the
multi-process equivalence in test_ddp (both run every method)."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from fitting import hooked_step
from test_train import tiny_config

from selfsup.augmentation import AugmentConfig, MultiCropConfig, augment_unit, multi_crop_configs
from selfsup.engine import fit, load_checkpoint, load_run
from selfsup.errors import SelfSupError
from selfsup.losses import dino, dino_center, swav
from selfsup.methods import DINO, Batch, DINOConfig, EpochContext, SwAV, SwAVConfig
from selfsup.methods.momentum import ema_update_, momentum_at, momentum_teacher
from selfsup.nets import build_backbone
from selfsup.ot import equipartition

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ references


def naive_codes(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """SwAV's distributed_sinkhorn as the paper's code writes it: Q = exp(scores / eps)^T (K x B), normalised to
    total 1; then per iteration every prototype's row to 1/K and every sample's column to 1/B; times B."""
    q = np.exp(scores.astype(np.float64) / epsilon).T
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        for i in range(k):
            q[i] = q[i] / q[i].sum() / k
        for j in range(b):
            q[:, j] = q[:, j] / q[:, j].sum() / b
    return (q * b).T


def naive_log_codes(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """The same iterations on log Q (float64, logsumexp), for scores whose exponentials no float holds."""
    from scipy.special import logsumexp

    log_q = scores.astype(np.float64).T / epsilon
    k, b = log_q.shape
    for _ in range(iterations):
        for i in range(k):
            log_q[i] -= logsumexp(log_q[i]) + math.log(k)
        for j in range(b):
            log_q[:, j] -= logsumexp(log_q[:, j]) + math.log(b)
    return (log_q + math.log(b)).T


def naive_log_softmax(row: np.ndarray) -> np.ndarray:
    m = row.max()
    return row - m - math.log(sum(math.exp(v - m) for v in row))


def naive_swav(high, low, temperature, epsilon, iterations, queue=None) -> float:
    crops = [x.double().numpy() for x in high + low]
    total = 0.0
    for i, s in enumerate(crops[:len(high)]):
        stacked = s if queue is None else np.concatenate([queue[i].double().numpy(), s])
        q = naive_codes(stacked, epsilon, iterations)[-len(s):]
        sub = 0.0
        for v, x in enumerate(crops):
            if v == i:
                continue
            sub -= np.mean([sum(q[n] * naive_log_softmax(x[n] / temperature)) for n in range(len(x))])
        total += sub / (len(crops) - 1)
    return total / len(high)


def naive_dino(student, teacher, center, student_temp, teacher_temp) -> float:
    s = [x.double().numpy() for x in student]
    t = [x.double().numpy() for x in teacher]
    c = center.double().numpy().reshape(-1)
    total, terms = 0.0, 0
    for iq, tq in enumerate(t):
        for v, sv in enumerate(s):
            if v == iq:
                continue
            losses = []
            for n in range(len(sv)):
                p = np.exp(naive_log_softmax((tq[n] - c) / teacher_temp))
                losses.append(-sum(p * naive_log_softmax(sv[n] / student_temp)))
            total += np.mean(losses)
            terms += 1
    return total / terms


# ------------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("epsilon,iterations", [(0.05, 3), (0.03, 1), (0.5, 10)])
def test_equipartition_is_swavs_sinkhorn(epsilon, iterations):
    g = torch.Generator().manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(24, 10, generator=g), dim=1)  # cosine scores, as SwAV's
    codes = equipartition(scores, epsilon, iterations)
    np.testing.assert_allclose(codes.double().numpy(), naive_codes(scores.numpy(), epsilon, iterations), rtol=2e-5,
                               atol=1e-7)
    torch.testing.assert_close(codes.sum(1), torch.ones(24))  # every sample's codes sum to 1
    # More iterations bring the prototypes' shares to B/K each.
    many = equipartition(scores, epsilon, 200).sum(0)
    torch.testing.assert_close(many, torch.full((10,), 2.4), rtol=1e-3, atol=1e-3)


def test_equipartition_is_finite_for_large_scores_and_leaves_them_alone():
    scores = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)) * 50  # exp(50/0.05) overflows fp32
    kept = scores.clone()
    codes = equipartition(scores, 0.05, 3)
    assert torch.isfinite(codes).all() and torch.equal(scores, kept)
    np.testing.assert_allclose(codes.double().numpy(), np.exp(naive_log_codes(scores.numpy(), 0.05, 3)), rtol=1e-4,
                               atol=1e-6)


def test_swav_loss_matches_the_authors_formula():
    g = torch.Generator().manual_seed(2)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, 12, generator=g), dim=1)  # noqa: E731
    high, low = [unit(6), unit(6)], [unit(6), unit(6), unit(6)]
    got = swav(high, low, temperature=0.1, epsilon=0.05, iterations=3)
    assert got.item() == pytest.approx(naive_swav(high, low, 0.1, 0.05, 3), rel=1e-5)
    # With a queue, the codes come from the queue's rows and the batch's together; only the batch's are used.
    queue = [unit(10), unit(10)]
    got = swav(high, low, 0.1, 0.05, 3, queue_scores=queue)
    assert got.item() == pytest.approx(naive_swav(high, low, 0.1, 0.05, 3, queue), rel=1e-5)
    assert got.item() != pytest.approx(naive_swav(high, low, 0.1, 0.05, 3), rel=1e-3)
    # Two global crops, no local ones: each predicts the other's codes.
    assert swav(high, [], 0.2, 0.1, 5).item() == pytest.approx(naive_swav(high, [], 0.2, 0.1, 5), rel=1e-5)


def test_swav_loss_sends_gradient_to_the_predictions_only():
    g = torch.Generator().manual_seed(3)
    a, b = (torch.randn(4, 5, generator=g).requires_grad_() for _ in range(2))
    swav([a, b]).backward()
    # d/da of -sum(q_b * log_softmax(a / T)) / 1 / 2 is (softmax(a / T) - q_b) / T / batch / 2: codes are constants.
    q_b = equipartition(b.detach(), 0.05, 3)
    expected = (torch.softmax(a.detach() / 0.1, 1) - q_b) / 0.1 / 4 / 2
    torch.testing.assert_close(a.grad, expected, rtol=1e-4, atol=1e-6)


def test_dino_loss_matches_the_authors_formula():
    g = torch.Generator().manual_seed(4)
    teacher = [torch.randn(5, 16, generator=g) for _ in range(2)]
    student = [torch.randn(5, 16, generator=g) for _ in range(4)]
    center = torch.randn(1, 16, generator=g) * 0.1
    got = dino(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    assert got.item() == pytest.approx(naive_dino(student, teacher, center, 0.1, 0.04), rel=1e-5)
    got = dino(student, teacher, center.view(-1), student_temp=0.2, teacher_temp=0.07)
    assert got.item() == pytest.approx(naive_dino(student, teacher, center, 0.2, 0.07), rel=1e-5)


def test_dino_loss_skips_only_the_same_crop():
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    y = torch.randn(3, 8, generator=torch.Generator().manual_seed(6))
    # Teacher = student on crop 0 and crop 1: the pairs compared are (t0, s1) and (t1, s0), never (t0, s0).
    got = dino([x, y], [x, y], torch.zeros(8), 0.1, 0.1)
    # naive_dino([x, y], [x]) is the one pair (x -> y): its crop 0 is skipped.
    zero = torch.zeros(8)
    expected = (naive_dino([x, y], [x], zero, 0.1, 0.1) + naive_dino([y, x], [y], zero, 0.1, 0.1)) / 2
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dino_center_is_the_momentum_mean_of_the_teacher_outputs():
    g = torch.Generator().manual_seed(7)
    teacher = [torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)]
    center = torch.randn(1, 6, generator=g)
    expected = center * 0.9 + torch.cat(teacher).mean(0, keepdim=True) * 0.1
    torch.testing.assert_close(dino_center(center, teacher, 0.9), expected)
    assert dino_center(center.view(-1), teacher).shape == (6,)


@pytest.mark.parametrize("call", [
    lambda: swav([torch.randn(4, 5)]),  # one crop: nothing predicts it
    lambda: swav([torch.randn(4, 5)], [torch.randn(4, 6)]),  # two widths
    lambda: dino([torch.randn(4, 5)], [torch.randn(4, 5)], torch.zeros(5)),
    lambda: equipartition(torch.randn(4, 5), epsilon=0.0),
])
def test_bad_loss_inputs_are_one_line_errors(call):
    with pytest.raises(ValueError) as e:
        call()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ momentum teacher


def test_ema_update_and_its_cosine_schedule():
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = momentum_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    ema_update_(teacher, student, 0.9)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)
    assert momentum_at(0, 100, 0.996) == 0.996
    assert momentum_at(100, 100, 0.996) == 1.0
    assert momentum_at(50, 100, 0.996) == pytest.approx(0.998)
    assert momentum_at(25, 100, 0.99) == pytest.approx(1 - 0.01 * (1 + math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError):
        ema_update_(nn.Linear(3, 4), student, 0.5)


# ------------------------------------------------------------------------------------------------ multi-crop


def test_multi_crop_sizes_scales_and_per_crop_overrides():
    aug = AugmentConfig(size=32, blur_p=0.3)
    crops = MultiCropConfig(global_crops=2, global_scale=(0.4, 1.0), local_crops=3, local_size=12,
                            local_scale=(0.05, 0.3), global_blur_p=[1.0, 0.1], global_solarize_p=[0.0, 0.2])
    configs = multi_crop_configs(aug, crops)
    assert [c.size for c in configs] == [32, 32, 12, 12, 12]
    assert [c.blur_p for c in configs] == [1.0, 0.1, 0.3, 0.3, 0.3]
    assert [c.solarize_p for c in configs] == [0.0, 0.2, 0.0, 0.0, 0.0]
    assert aug.blur_p == 0.3  # the run's own augmentation is not modified
    images = torch.randint(0, 256, (400, 40, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for config, (low, high) in [(configs[0], (0.4, 1.0)), (configs[2], (0.05, 0.3))]:
        x, params = augment_unit(images, config, torch.Generator().manual_seed(1), return_params=True)
        assert x.shape == (400, 3, config.size, config.size)
        area = params.crop_wh.prod(1)
        assert area.min() >= low - 1e-6 and area.max() <= high + 1e-6
        assert area.min() < low + 0.1 * (high - low) and area.max() > high - 0.1 * (high - low)  # the whole range
    assert [c.size for c in multi_crop_configs(aug, MultiCropConfig(local_crops=1))] == [32, 32, 16]  # None: half


@pytest.mark.parametrize("crops,message", [
    (MultiCropConfig(local_crops=2, local_size=48), "larger than the global crops"),
    (MultiCropConfig(global_blur_p=[1.0]), "1 values for 2 global crops"),
])
def test_bad_multi_crop_is_a_one_line_error(crops, message):
    with pytest.raises(SelfSupError, match=message) as e:
        multi_crop_configs(AugmentConfig(size=32), crops)
    assert "\n" not in str(e.value)


def test_a_backbone_that_cannot_take_local_crops_is_a_one_line_error():
    with pytest.raises(SelfSupError, match="cannot take 16-px local crops") as e:
        SwAV(build_backbone("exemplar_small"), SwAVConfig(crops=MultiCropConfig(local_crops=2)))
    assert "\n" not in str(e.value)
    DINO(build_backbone("exemplar_small"), DINOConfig(out_dim=8, crops=MultiCropConfig(local_crops=0)))  # fine


# ------------------------------------------------------------------------------------------------ the methods


def _images(n=16, size=16):
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(8))


def _train_step(method, step, total=10):
    opt = torch.optim.SGD(method.parameters(), lr=0.5)
    return hooked_step(method, Batch(_images(), torch.arange(16), torch.Generator().manual_seed(step)), opt, step,
                       total)


def _swav(**cfg):
    crops = MultiCropConfig(local_crops=2, local_size=8)
    return SwAV(build_backbone("alexnet_small", width=0.25, input_size=16),
                SwAVConfig(prototypes=6, proj_hidden=16, proj_dim=8, crops=crops, **cfg), AugmentConfig(size=16))


def _dino(**cfg):
    crops = MultiCropConfig(local_crops=2, local_size=8)
    return DINO(build_backbone("alexnet_small", width=0.25, input_size=16),
                DINOConfig(out_dim=12, hidden_dim=16, bottleneck_dim=8, crops=crops, **cfg), AugmentConfig(size=16))


def test_swav_prototypes_stay_still_in_the_frozen_epochs_and_on_the_sphere():
    torch.manual_seed(0)
    method = _swav(freeze_prototypes_epochs=1)
    method.on_epoch_start(EpochContext(0, 2, _images(), torch.device("cpu")))
    before = method.prototypes.weight.detach().clone()
    head_before = method.head[0].weight.detach().clone()
    _train_step(method, 0)
    assert torch.equal(method.prototypes.weight, before)
    assert not torch.equal(method.head[0].weight, head_before)  # the rest trains
    method.on_epoch_start(EpochContext(1, 2, _images(), torch.device("cpu")))
    _train_step(method, 1)
    assert not torch.equal(method.prototypes.weight, before)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(6))


def test_swav_queue_fills_newest_first_and_is_used_once_full(monkeypatch):
    torch.manual_seed(0)
    method = _swav(queue_length=32, queue_start_epoch=1, freeze_prototypes_epochs=0)
    queued = []  # the global crops' embeddings each step hands to the queue, (2, 16, 8)
    real = SwAV._enqueue
    monkeypatch.setattr(SwAV, "_enqueue", lambda self, z: (queued.append(z.clone()), real(self, z))[1])
    method.on_epoch_start(EpochContext(0, 3, _images(), torch.device("cpu")))
    _train_step(method, 0)
    assert int(method.queue_filled) == 0 and method.queue.abs().sum() == 0 and not queued  # before queue_start_epoch
    method.on_epoch_start(EpochContext(1, 3, _images(), torch.device("cpu")))
    used = [_train_step(method, s)["queue_in_use"].item() for s in (1, 2, 3)]
    assert used == [0.0, 0.0, 1.0]  # 16 + 16 fill it after two steps
    assert int(method.queue_filled) == 32 and len(queued) == 3
    # Newest first: the last step's embeddings in front, the step before behind them, the first one dropped out.
    assert torch.equal(method.queue[:, :16], queued[2]) and torch.equal(method.queue[:, 16:], queued[1])
    torch.testing.assert_close(method.queue.norm(dim=2), torch.ones(2, 32))  # normalised projections


def test_dino_teacher_follows_the_student_and_the_last_layer_waits():
    torch.manual_seed(0)
    method = _dino(freeze_last_layer_epochs=1, clip_grad=0.0, momentum=0.9)
    assert all(torch.equal(a, b) for a, b in zip(method.backbone.parameters(), method.teacher_backbone.parameters()))
    method.on_epoch_start(EpochContext(0, 2, _images(), torch.device("cpu")))
    last = [p.detach().clone() for p in method.head.last_layer.parameters()]
    teacher0 = [p.detach().clone() for p in method.teacher_backbone.parameters()]
    _train_step(method, 0, total=10)
    assert all(torch.equal(a, b) for a, b in zip(method.head.last_layer.parameters(), last))
    m = momentum_at(0, 10, 0.9)
    for t, t0, s in zip(method.teacher_backbone.parameters(), teacher0, method.backbone.parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * s)
    assert method.center.abs().sum() > 0
    method.on_epoch_start(EpochContext(1, 2, _images(), torch.device("cpu")))
    _train_step(method, 1, total=10)
    assert not all(torch.equal(a, b) for a, b in zip(method.head.last_layer.parameters(), last))
    # norm_last_layer: the gain stays 1 and gets no gradient.
    gain = method.head.last_layer.parametrizations.weight.original0
    assert not gain.requires_grad and torch.equal(gain, torch.ones_like(gain))


def test_dino_clips_each_parameters_gradient():
    torch.manual_seed(0)
    method = _dino(clip_grad=1e-3)
    method.on_epoch_start(EpochContext(1, 2, _images(), torch.device("cpu")))
    out = method(Batch(_images(), torch.arange(16), torch.Generator().manual_seed(0)))
    (out["loss"] * 1000).backward()
    raw = {n: p.grad.norm().item() for n, p in method.named_parameters() if p.grad is not None}
    method.on_before_step(0, 10)
    for n, p in method.named_parameters():
        if p.grad is not None:
            assert p.grad.norm().item() == pytest.approx(min(raw[n], 1e-3), rel=1e-3), n
    assert max(raw.values()) > 1e-2  # the cap did something


def test_dino_teacher_temperature_warms_up_as_the_authors_linspace():
    method = _dino(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4)
    expected = list(np.linspace(0.04, 0.07, 4)) + [0.07, 0.07]
    assert [method.teacher_temp(e) for e in range(6)] == pytest.approx(expected)
    assert _dino(teacher_temp=0.05).teacher_temp(0) == 0.05


def test_dino_runs_are_evaluated_and_exported_on_the_teacher(tmp_path):
    cfg = tiny_config(method="dino", epochs=1, model={"backbone": "alexnet_small", "width": 0.25},
                      dino={"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "momentum": 0.5,
                            "crops": {"local_crops": 2}}, eval={"knn_every": 0},
                      optim={"warmup_epochs": 0})
    fit(None, "digits", cfg, tmp_path / "run", progress=False)
    method = load_run(tmp_path / "run")
    assert method.eval_backbone is method.teacher_backbone
    assert not all(torch.equal(a, b) for a, b in zip(method.backbone.parameters(),
                                                      method.teacher_backbone.parameters()))
    from selfsup.export import backbone_state, export_backbone

    export_backbone(tmp_path / "run", tmp_path / "teacher.safetensors")
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "teacher.safetensors"))
    teacher = backbone_state(method.teacher_backbone)
    assert exported.keys() == teacher.keys() and all(torch.equal(exported[k], teacher[k]) for k in teacher)
    assert load_checkpoint(tmp_path / "run")["method"]["center"].abs().sum() > 0


# ------------------------------------------------------------------------------------------------ recipes

# The key settings of each recipe against the setup it cites (values read from the authors' and solo-learn's
# configs): a recipe edited away from its source fails here.
SOURCES = {
    # facebookresearch/swav scripts/swav_400ep_bs256_pretrain.sh
    "swav_imagenet": {"model.backbone": "resnet50", "batch_size": 256, "epochs": 400, "optim.name": "lars",
                      "optim.lr": 0.6, "optim.min_lr": 0.0006, "optim.weight_decay": 1e-6, "optim.warmup_epochs": 0,
                      "swav.prototypes": 3000, "swav.proj_dim": 128, "swav.proj_hidden": 2048,
                      "swav.temperature": 0.1, "swav.epsilon": 0.05, "swav.sinkhorn_iterations": 3,
                      "swav.queue_length": 3840, "swav.queue_start_epoch": 15, "swav.crops.global_crops": 2,
                      "swav.crops.local_crops": 6, "augment.size": 224, "swav.crops.local_size": 96,
                      "swav.crops.global_scale": (0.14, 1.0), "swav.crops.local_scale": (0.05, 0.14),
                      "augment.brightness": 0.8, "augment.hue": 0.2, "augment.blur_p": 0.5},
    # vturrisi/solo-learn scripts/pretrain/cifar/swav.yaml
    "swav_cifar10": {"model.backbone": "resnet18", "batch_size": 256, "epochs": 1000, "optim.name": "lars",
                     "optim.lr": 0.6, "optim.lars_eta": 0.02, "optim.weight_decay": 1e-6, "optim.warmup_epochs": 10,
                     "swav.prototypes": 3000, "swav.proj_hidden": 2048, "swav.proj_dim": 128,
                     "swav.temperature": 0.1, "swav.queue_length": 3840, "swav.queue_start_epoch": 50,
                     "swav.freeze_prototypes_epochs": 2, "swav.epsilon": 0.05, "swav.sinkhorn_iterations": 3},
    # facebookresearch/dino main_dino.py defaults, 8 GPUs x 64
    "dino_imagenet": {"model.backbone": "vit_small", "model.patch_size": 16, "batch_size": 512, "epochs": 100,
                      "optim.name": "adamw", "optim.lr": 0.0005 * 512 / 256, "optim.min_lr": 1e-6,
                      "optim.weight_decay": 0.04, "optim.weight_decay_end": 0.4, "optim.warmup_epochs": 10,
                      "dino.out_dim": 65536, "dino.hidden_dim": 2048, "dino.bottleneck_dim": 256,
                      "dino.norm_last_layer": True, "dino.student_temp": 0.1, "dino.teacher_temp": 0.04,
                      "dino.warmup_teacher_temp_epochs": 0, "dino.center_momentum": 0.9, "dino.momentum": 0.996,
                      "dino.clip_grad": 3.0, "dino.freeze_last_layer_epochs": 1, "dino.crops.local_crops": 8,
                      "dino.crops.local_size": 96, "dino.crops.global_scale": (0.4, 1.0),
                      "dino.crops.local_scale": (0.05, 0.4), "dino.crops.global_blur_p": [1.0, 0.1],
                      "dino.crops.global_solarize_p": [0.0, 0.2], "dino.crops.local_blur_p": 0.5,
                      "augment.brightness": 0.4, "augment.saturation": 0.2, "augment.hue": 0.1, "eval.knn_k": 20,
                      "eval.knn_t": 0.07},
    # vturrisi/solo-learn scripts/pretrain/cifar/dino.yaml (and its default warm-up when its table was made)
    "dino_cifar10": {"model.backbone": "resnet18", "batch_size": 256, "epochs": 1000, "optim.name": "lars",
                     "optim.lr": 0.3, "optim.lars_eta": 0.02, "optim.weight_decay": 1e-6, "dino.out_dim": 4096,
                     "dino.hidden_dim": 2048, "dino.bottleneck_dim": 256, "dino.teacher_temp": 0.07,
                     "dino.warmup_teacher_temp": 0.04, "dino.warmup_teacher_temp_epochs": 50, "dino.momentum": 0.9995,
                     "dino.clip_grad": 0.0, "dino.crops.local_crops": 0, "dino.crops.global_solarize_p": [0.0, 0.2]},
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_recipes_hold_their_sources_settings(name):
    from pathlib import Path

    from selfsup.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "recipes" / f"{name}.yaml")
    for key, expected in SOURCES[name].items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if isinstance(expected, float):
            assert value == pytest.approx(expected), key
        else:
            assert (list(value) if isinstance(value, tuple) else value) == (
                list(expected) if isinstance(expected, tuple) else expected), key


def test_a_queue_shorter_than_the_batch_is_a_one_line_error_before_training(tmp_path):
    cfg = tiny_config(method="swav", model={"backbone": "alexnet_small", "width": 0.25},
                      swav={"prototypes": 8, "proj_hidden": 16, "proj_dim": 8, "queue_length": 16,
                            "queue_start_epoch": 1, "crops": {"local_crops": 0}})
    with pytest.raises(SelfSupError, match=r"queue_length \(16\) is smaller than the batch \(32\)") as e:
        fit(None, "digits", cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()

"""The Siamese family (MoCo v2 and v3, BYOL, SimSiam, Barlow Twins, VICReg): each public loss against a naive
reference written here (loops in float64, or the authors' formulas), and in gloo processes where the loss is defined
over the global batch; the momentum updates; MoCo's queue and shuffled batch norm; MoCo v3's frozen patch
projection; and the one-line errors. Exact resume is in test_resume and the multi-process equivalence of every
method's training step in test_ddp (both run every method)."""

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from fitting import hooked_step
from test_train import tiny_config

from selfsup.engine.optim import build_optimizer
from selfsup.errors import SelfSupError
from selfsup.losses import barlow_twins, contrastive_across_batch, info_nce, negative_cosine, nt_xent, vicreg
from selfsup.methods import (
    BYOL,
    Batch,
    BYOLConfig,
    MoCo,
    MoCoConfig,
    MoCoV3,
    MoCoV3Config,
    SimSiam,
    SimSiamConfig,
    Tape,
    build_method,
)
from selfsup.methods.momentum import momentum_at
from selfsup.methods.siamese import grouped_forward
from selfsup.nets import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ references


def naive_info_nce(q, k, queue, t):
    total = 0.0
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        pos = math.exp(float(qi @ (k[i] / k[i].norm())) / t)
        neg = sum(math.exp(float(qi @ (n / n.norm())) / t) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def naive_across_batch(q, k, t):
    total = 0.0
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        logits = [math.exp(float(qi @ (kj / kj.norm())) / t) for kj in k]
        total += -math.log(logits[i] / sum(logits))
    return total / len(q) * 2 * t


def naive_barlow(z1, z2, lam, eps=1e-5):
    """The authors' formula: batch norm without affine (train mode: biased variance, eps 1e-5) on each branch,
    c = bn(z1)^T bn(z2) / N, on-diagonal (c_ii - 1)^2 plus lambda times the off-diagonal squares, by loops."""
    n, d = z1.shape
    bn = nn.BatchNorm1d(d, affine=False, eps=eps).double().train()
    a, b = bn(z1), bn(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = float(sum(a[s, i] * b[s, j] for s in range(n))) / n
            loss += (c - 1) ** 2 if i == j else lam * c ** 2
    return loss


def naive_vicreg(x, y, sim=25.0, var=25.0, cov=1.0, eps=1e-4):
    """The authors' VICReg.forward (facebookresearch/vicreg main_vicreg.py) by loops over dimensions."""
    n, d = x.shape
    repr_loss = float(((x - y) ** 2).mean())
    std_loss = cov_loss = 0.0
    for z in (x, y):
        z = z - z.mean(0)
        for i in range(d):
            std = math.sqrt(float((z[:, i] ** 2).sum()) / (n - 1) + eps)
            std_loss += max(0.0, 1 - std) / d / 2
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov_loss += (float((z[:, i] * z[:, j]).sum()) / (n - 1)) ** 2 / d
    return sim * repr_loss + var * std_loss + cov * cov_loss


# ------------------------------------------------------------------------------------------------ losses


def test_info_nce_matches_a_naive_reference_and_needs_matching_shapes():
    q, k, queue = _randn(6, 5, seed=1), _randn(6, 5, seed=2), _randn(9, 5, seed=3)
    assert float(info_nce(q, k, queue, 0.2)) == pytest.approx(naive_info_nce(q, k, queue, 0.2), rel=1e-5)
    # Without a queue the positive is the only candidate: the loss is 0.
    assert float(info_nce(q, k, None, 0.2)) == pytest.approx(0.0, abs=1e-6)
    # The keys and the queue get no gradient: the key encoder is never trained by it.
    kk = k.clone().requires_grad_(True)
    info_nce(q.clone().requires_grad_(True), kk, queue).backward()
    assert kk.grad is None
    with pytest.raises(ValueError, match="info_nce needs"):
        info_nce(q, k[:5], queue)
    with pytest.raises(ValueError, match="info_nce needs"):
        info_nce(q, k, queue[:, :4])


def test_contrastive_across_batch_matches_a_naive_reference():
    q, k = _randn(7, 4, seed=4), _randn(7, 4, seed=5)
    for t in (0.2, 1.0):
        assert float(contrastive_across_batch(q, k, t)) == pytest.approx(naive_across_batch(q, k, t), rel=1e-5)


def test_negative_cosine_is_minus_the_mean_cosine():
    p, z = _randn(5, 3, seed=6), _randn(5, 3, seed=7)
    want = -sum(float(p[i] @ z[i] / (p[i].norm() * z[i].norm())) for i in range(5)) / 5
    assert float(negative_cosine(p, z)) == pytest.approx(want, abs=1e-6)
    # BYOL's 2 - 2 cos is the squared distance of the normalised vectors.
    dist2 = ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
    assert float(2 + 2 * negative_cosine(p, z)) == pytest.approx(float(dist2), abs=1e-6)
    with pytest.raises(ValueError, match="negative_cosine needs"):
        negative_cosine(p, z[:4])


def test_barlow_twins_matches_the_authors_formula():
    z1, z2 = _randn(9, 4, seed=8) * 3 + 1, _randn(9, 4, seed=9)
    z2 = z2 + 0.5 * z1  # correlated, so the diagonal terms are not all near 1
    for lam in (5e-3, 0.3):
        assert float(barlow_twins(z1, z2, lam)) == pytest.approx(naive_barlow(z1, z2, lam), rel=1e-5)
    # Identical, decorrelated, standardised views give (nearly) zero: C is the identity.
    eye = torch.eye(4, dtype=torch.float64).repeat(2, 1)
    assert float(barlow_twins(eye, eye, 5e-3)) < 0.2


def test_vicreg_matches_the_authors_formula_and_needs_two_samples():
    x, y = _randn(8, 5, seed=10) * 0.3, _randn(8, 5, seed=11)
    y = y + x
    assert float(vicreg(x, y)) == pytest.approx(naive_vicreg(x, y), rel=1e-5)
    assert float(vicreg(x, y, 1.0, 2.0, 3.0)) == pytest.approx(naive_vicreg(x, y, 1.0, 2.0, 3.0), rel=1e-5)
    with pytest.raises(ValueError, match="at least two samples"):
        vicreg(x[:1], y[:1])


# --------------------------------------------------------------------------- losses over the global batch (gloo)

WORLD, N_GLOBAL, DIM = 3, 12, 5
LOSSES = {
    "barlow_twins": lambda a, b: barlow_twins(a, b, 0.01),
    "vicreg": vicreg,
    "contrastive_across_batch": lambda a, b: contrastive_across_batch(a, b, 0.3),
    "nt_xent": lambda a, b: nt_xent(a, b, 0.3),
}


def _global_inputs():
    z1 = _randn(N_GLOBAL, DIM, seed=12)
    return z1.float(), (_randn(N_GLOBAL, DIM, seed=13) + z1).float()


def _loss_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        z1, z2 = _global_inputs()
        rows = slice(rank * N_GLOBAL // WORLD, (rank + 1) * N_GLOBAL // WORLD)
        out = {}
        for name, fn in LOSSES.items():
            a, b = z1[rows].clone().requires_grad_(True), z2[rows].clone().requires_grad_(True)
            loss = fn(a, b)
            loss.backward()
            out[name] = (loss.detach(), a.grad, b.grad)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_losses_over_the_global_batch_in_gloo_processes_match_one_process(tmp_path):
    """Each process holds its rows; DDP averages the processes' losses and their parameter gradients, so the mean of
    the losses must be the one-process loss, and each process's gradient on its rows, divided by the number of
    processes, the one-process gradient on those rows."""
    mp.spawn(_loss_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    z1, z2 = _global_inputs()
    for name, fn in LOSSES.items():
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        loss = fn(a, b)
        loss.backward()
        mean_loss = sum(p[name][0] for p in parts) / WORLD
        torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-5, atol=1e-6, msg=name)
        for i, want in ((1, a.grad), (2, b.grad)):
            if want is None:  # MoCo v3's keys carry no gradient, in any process
                assert all(p[name][i] is None for p in parts), name
                continue
            got = torch.cat([p[name][i] for p in parts]) / WORLD
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)
    # The statistics must really be global: each process's own-rows loss differs from the joined batch's.
    local = barlow_twins(z1[:4], z2[:4], 0.01)
    assert not torch.allclose(parts[0]["barlow_twins"][0], local)


# ------------------------------------------------------------------------------------------------ methods


def _images(n=8, size=16, seed=0):
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _net(bn=True):
    return build_backbone("alexnet_small", width=0.25, input_size=16, bn=bn)


def _train_step(method, step=0, total=10, seed=2):
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    return hooked_step(method, Batch(_images(), torch.arange(8), torch.Generator().manual_seed(seed)), opt, step,
                       total)


@pytest.mark.parametrize("kind", ["byol", "mocov3", "moco"])
def test_the_momentum_network_follows_the_trained_one_by_its_schedule(kind):
    torch.manual_seed(0)
    if kind == "byol":
        method = BYOL(_net(), BYOLConfig(proj_hidden=16, proj_dim=8, pred_hidden=16, momentum=0.9))
        pairs = [(method.target_backbone, method.backbone), (method.target_head, method.head)]
        m = momentum_at(3, 10, 0.9)
    elif kind == "mocov3":
        method = MoCoV3(_net(), MoCoV3Config(proj_hidden=16, proj_dim=8, pred_hidden=16, momentum=0.9))
        pairs = [(method.key_backbone, method.backbone), (method.key_head, method.head)]
        m = momentum_at(3, 10, 0.9)
    else:
        method = MoCo(_net(), MoCoConfig(proj_hidden=16, proj_dim=8, queue_length=16, momentum=0.9, bn_group=0))
        pairs = [(method.key_backbone, method.backbone), (method.key_head, method.head)]
        m = 0.9  # constant, as the authors'
    before = [[p.detach().clone() for p in t.parameters()] for t, _ in pairs]
    _train_step(method, step=3)
    assert 0.9 < m < 1 or kind == "moco"
    for (target, online), old in zip(pairs, before):
        assert not any(p.requires_grad for p in target.parameters())
        for t, o, b in zip(target.parameters(), online.parameters(), old):
            torch.testing.assert_close(t, m * b + (1 - m) * o.detach(), rtol=1e-5, atol=1e-6)
        assert any(not torch.equal(t, b) for t, b in zip(target.parameters(), old))


def test_moco_queue_is_newest_keys_in_order_and_wraps():
    torch.manual_seed(0)
    method = MoCo(_net(bn=False), MoCoConfig(proj_hidden=16, proj_dim=8, queue_length=12, bn_group=0))
    method.tape = Tape()
    start = method.queue.clone()
    _train_step(method, seed=2)
    views = method.tape.draws  # the two views, then the keys' shuffle
    # The key encoder moved after the step: the keys of the step come from a fresh copy with the weights it had.
    torch.manual_seed(0)
    fresh = MoCo(_net(bn=False), MoCoConfig(proj_hidden=16, proj_dim=8, queue_length=12, bn_group=0))
    with torch.no_grad():
        keys = nn.functional.normalize(fresh.key_head(fresh.key_backbone(views[1])), dim=1)
    torch.testing.assert_close(method.queue[:8], keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(method.queue[8:], start[8:])
    assert int(method.queue_ptr) == 8
    _train_step(method, seed=3)  # 8 more keys: 4 fill the end, 4 overwrite the oldest at the front
    assert int(method.queue_ptr) == 4
    assert not torch.allclose(method.queue[8:], start[8:])
    with pytest.raises(SelfSupError, match=r"moco.queue_length \(4\) is smaller than the 8 keys a step queues"):
        _train_step(MoCo(_net(), MoCoConfig(proj_hidden=16, proj_dim=8, queue_length=4)))


def test_grouped_forward_gives_each_group_its_own_batch_norm_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    x = torch.randn(8, 3)
    want = torch.cat([net(x[:4]), net(x[4:])])
    torch.testing.assert_close(grouped_forward(net, x, 4), want)
    assert not torch.allclose(grouped_forward(net, x, 0), want)  # one group: other statistics


def test_moco_keys_are_computed_on_a_shuffled_batch_and_returned_in_order():
    """With batch norm in groups, a query and its key must not share statistics: the keys' batch is shuffled before
    grouping (the recorded shuffle reproduces it) and the keys are put back in the images' order."""
    torch.manual_seed(0)
    method = MoCo(_net(), MoCoConfig(proj_hidden=16, proj_dim=8, queue_length=16, bn_group=4))
    method.tape = Tape()
    x = torch.randn(8, 3, 16, 16)
    keys = method.key(x, torch.Generator().manual_seed(5))
    order = torch.argsort(method.tape.draws[0])
    assert not torch.equal(order, torch.arange(8))
    with torch.no_grad():
        shuffled = torch.cat([method.key_head(method.key_backbone(x[order][i:i + 4])) for i in (0, 4)])
    torch.testing.assert_close(keys, shuffled[torch.argsort(order)])
    with torch.no_grad():
        unshuffled = torch.cat([method.key_head(method.key_backbone(x[i:i + 4])) for i in (0, 4)])
    assert not torch.allclose(keys, unshuffled, atol=1e-4)  # the shuffle changes the groups


def test_mocov3_keeps_a_vits_patch_projection_at_its_random_initialisation():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", input_size=16, patch_size=8)
    method = MoCoV3(vit, MoCoV3Config(proj_hidden=16, proj_dim=8, pred_hidden=16))
    patch = method.backbone.conv_proj.weight.detach().clone()
    block = method.backbone.encoder.layers[0].mlp[0].weight.detach().clone()
    opt = build_optimizer(method, tiny_config(method="mocov3").optim)
    out = method(Batch(_images(), torch.arange(8), torch.Generator().manual_seed(2)))
    out["loss"].backward()
    opt.step()
    assert torch.equal(method.backbone.conv_proj.weight, patch)
    assert not torch.equal(method.backbone.encoder.layers[0].mlp[0].weight, block)
    trained = MoCoV3(build_backbone("vit_tiny", input_size=16, patch_size=8),
                     MoCoV3Config(proj_hidden=16, proj_dim=8, pred_hidden=16, freeze_patch_embed=False))
    assert trained.backbone.conv_proj.weight.requires_grad


def test_simsiam_gradient_stops_at_the_other_branch():
    """The loss's gradient reaches the projector only through the predictor's input (z's own branch), never through
    the target z: with the predictor's output made constant, the projector gets no gradient."""
    torch.manual_seed(0)
    method = SimSiam(_net(), SimSiamConfig(proj_hidden=16, proj_dim=8, pred_hidden=4, proj_layers=2))
    for p in method.predictor.parameters():
        nn.init.zeros_(p)
    method.predictor[-1].bias.data.fill_(1.0)  # p is a constant vector, independent of z
    out = method(Batch(_images(), torch.arange(8), torch.Generator().manual_seed(2)))
    out["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in method.head.parameters())
    assert 0 < float(out["output_std"]) < 1


@pytest.mark.parametrize("crops", [{"global_crops": 3}, {"local_crops": 2}])
def test_two_view_methods_refuse_other_crop_counts_in_one_line(crops):
    cfg = tiny_config(method="vicreg", vicreg={"proj_hidden": 16, "proj_dim": 8, "crops": crops})
    with pytest.raises(SelfSupError, match=r"vicreg compares two views: set vicreg.crops.global_crops=2"):
        build_method(cfg)


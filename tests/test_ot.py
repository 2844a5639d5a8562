"""The Sinkhorn-Knopp solver behind SeLa's self-labels: marginals, agreement with references, numerics, sharding."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.optimize import linprog

from selfsup.ot import self_label, sinkhorn


def _log_p(n: int, k: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(n, k, generator=g), dim=1)


def _random_marginal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    return m / m.sum()


def _naive_sinkhorn(log_p: torch.Tensor, lam: float, a: torch.Tensor, b: torch.Tensor, iters: int) -> torch.Tensor:
    """Textbook float64 Sinkhorn: alternate row and column scaling of exp(lam * log_p), no tricks."""
    kernel = torch.exp(lam * log_p.double())
    a, b = a.double(), b.double()
    v = torch.ones_like(b)
    for _ in range(iters):
        u = a / (kernel @ v)
        v = b / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


def _l1(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x.double() - y.double()).abs().sum().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_marginals_are_met(dtype):
    n, k, tol = 64, 10, 1e-7
    q = sinkhorn(_log_p(n, k), lam=10.0, tol=tol, dtype=dtype)
    assert q.shape == (n, k) and q.dtype == dtype and (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.full((n,), 1 / n, dtype=dtype), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(q.sum(0), torch.full((k,), 1 / k, dtype=dtype), atol=1e-7, rtol=1e-5)
    # The convergence test is on the L1 marginal error relative to the total mass.
    assert _l1(q.sum(0), torch.full((k,), 1 / k)) <= tol * 1.01 + 1e-7


def test_non_uniform_marginals_are_met():
    n, k = 50, 7
    a, b = _random_marginal(n, 1), _random_marginal(k, 2)
    q = sinkhorn(_log_p(n, k, seed=3), lam=5.0, a=a, b=b, tol=1e-10, max_iter=5000, dtype=torch.float64)
    torch.testing.assert_close(q.sum(1), a, atol=1e-10, rtol=0)
    torch.testing.assert_close(q.sum(0), b, atol=1e-10, rtol=0)
    # Marginals need not sum to 1, only to the same total (e.g. counts).
    q_counts = sinkhorn(_log_p(n, k, seed=3), lam=5.0, a=a * n, b=b * n, tol=1e-10, max_iter=5000,
                        dtype=torch.float64)
    torch.testing.assert_close(q_counts, q * n, atol=1e-9, rtol=1e-7)


def test_matches_naive_float64_reference():
    n, k, lam = 20, 6, 5.0
    log_p, a, b = _log_p(n, k, seed=4), _random_marginal(n, 5), _random_marginal(k, 6)
    expected = _naive_sinkhorn(log_p, lam, a, b, iters=5000)
    got64 = sinkhorn(log_p, lam, a=a, b=b, tol=1e-13, max_iter=5000, dtype=torch.float64)
    torch.testing.assert_close(got64, expected, atol=1e-12, rtol=1e-9)
    got32 = sinkhorn(log_p, lam, a=a.float(), b=b.float(), tol=1e-6)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, atol=2e-6, rtol=1e-4)


def _exact_ot(cost: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """The unregularised transport problem as a linear program over the N*K plan entries."""
    n, k = cost.shape
    rows = np.kron(np.eye(n), np.ones((1, k)))  # row i of the plan sums to a_i
    cols = np.kron(np.ones((1, n)), np.eye(k))  # column j sums to b_j
    res = linprog(cost.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([a, b]), bounds=(0, None),
                  method="highs")
    assert res.status == 0, res.message
    return float(res.fun), res.x.reshape(n, k)


def test_approaches_exact_lp_solution_as_lam_grows():
    # 5 rows into 3 columns: no partial sum of 1/5s equals one of 1/3s, so the LP optimum is a unique,
    # non-degenerate vertex and Sinkhorn converges at lam=100 (for e.g. 4 x 4 it crawls towards a permutation).
    n, k = 5, 3
    log_p = _log_p(n, k, seed=7).double()
    cost = -log_p
    a, b = np.full(n, 1 / n), np.full(k, 1 / k)
    lp_cost, lp_plan = _exact_ot(cost.numpy(), a, b)

    gaps = {}
    for lam in (1.0, 10.0, 100.0):
        q = sinkhorn(log_p, lam, tol=1e-12, max_iter=100_000, dtype=torch.float64)
        gaps[lam] = (q * cost).sum().item() - lp_cost
        # The LP is the optimum over the same polytope, and the entropy term costs at most log(N*K)/lam.
        assert -1e-9 <= gaps[lam] <= math.log(n * k) / lam + 1e-9
    assert gaps[100.0] < gaps[10.0] < gaps[1.0]
    np.testing.assert_allclose(q.numpy(), lp_plan, atol=1e-3)


def _log_domain_sinkhorn_fp64(log_p: torch.Tensor, lam: float, tol: float = 1e-10, max_iter: int = 2000):
    """Reference for uniform marginals, independent of selfsup.ot: fp64 Sinkhorn on log-domain potentials f, g.

    One exact log-domain sweep (f_i = log a_i - logsumexp_j(s_ij), g_j = log b_j - logsumexp_i(s_ij + f_i)) leaves
    every entry of exp(s + f + g) far inside fp64's range (asserted below), so the remaining sweeps are the textbook
    scalings u = a / (K v), v = b / (K^T u) of that kernel. Returns the plan, stopped when the L1 row error < tol.
    """
    s = lam * log_p.double()
    n, k = s.shape
    a = torch.full((n,), 1 / n, dtype=torch.float64)
    b = torch.full((k,), 1 / k, dtype=torch.float64)
    f = a.log() - torch.logsumexp(s, 1)
    g = b.log() - torch.logsumexp(s + f[:, None], 0)
    kernel = torch.exp(s + f[:, None] + g)
    assert kernel.min() > 1e-200  # no entry under- or overflows in fp64: the scalings below are exact enough
    v = torch.ones(k, dtype=torch.float64)
    for it in range(max_iter):
        u = a / (kernel @ v)
        v = b / (kernel.T @ u)
        if it % 10 == 9 and (u * (kernel @ v) - a).abs().sum() < tol:
            return u[:, None] * kernel * v
    raise AssertionError("the fp64 reference did not converge")


def _entropic_objective(q: torch.Tensor, log_p: torch.Tensor, lam: float) -> float:
    """<Q, log P> + H(Q) / lam, the quantity the plan maximises (0 log 0 = 0)."""
    q = q.double()
    return ((q * log_p.double()).sum() - torch.special.xlogy(q, q).sum() / lam).item()


def test_stable_for_lam_100_and_10000_clusters_in_fp32():
    n, k, lam = 500, 10_000, 100.0
    g = torch.Generator().manual_seed(8)
    logits = 0.1 * torch.randn(n, k, generator=g)
    logits[:, :100] -= 2.0  # clusters the model never predicts; the equal partition must still fill them
    log_p = torch.log_softmax(logits, dim=1)
    scaled = lam * log_p
    # The hazard is real: the plain kernel is all zeros in fp32, and even after the row-max shift whole
    # columns underflow, so scaling that only shifts rows would divide by zero.
    assert (torch.exp(scaled) == 0).all()
    assert (torch.exp(scaled - scaled.amax(1, keepdim=True)).sum(0) == 0).any()

    q = sinkhorn(log_p, lam, tol=1e-5, max_iter=300)
    assert q.dtype == torch.float32 and torch.isfinite(q).all() and (q >= 0).all()
    assert _l1(q.sum(1), torch.full((n,), 1 / n)) <= 1e-5
    assert _l1(q.sum(0), torch.full((k,), 1 / k)) <= 1.1e-5
    # The same plan as an fp64 solver's: entries, objective and hard labels (the uniform plan 1/(NK) has the right
    # marginals too, and is 1.97 away in L1).
    expected = _log_domain_sinkhorn_fp64(log_p, lam)
    assert _l1(q, expected) < 1e-4
    best = _entropic_objective(expected, log_p, lam)
    assert abs(_entropic_objective(q, log_p, lam) - best) < 2e-5  # flat at the optimum: fp32 rounding is 6e-6
    assert _entropic_objective(torch.full((n, k), 1 / (n * k)), log_p, lam) < best - 0.1
    assert (q.argmax(1) == expected.argmax(1)).float().mean() > 0.99
    torch.testing.assert_close(q[:, :100].sum(0), torch.full((100,), 1 / k), atol=0, rtol=1e-2)


def test_equal_partition_stops_collapse():
    n, k = 30, 3
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(n, k, generator=g)
    logits[:, 0] += 5.0  # every sample prefers cluster 0
    log_p = torch.log_softmax(logits, dim=1)
    assert (log_p.argmax(1) == 0).all()  # plain argmax labels collapse into one cluster
    labels = self_label(log_p, lam=50.0, dtype=torch.float64, max_iter=10_000)
    assert labels.dtype == torch.long and labels.shape == (n,)
    assert torch.bincount(labels, minlength=k).tolist() == [n // k] * k


def test_autocast_bf16_does_not_reach_the_solver():
    log_p = _log_p(200, 50, seed=10)
    outside = sinkhorn(log_p, lam=25.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = sinkhorn(log_p, lam=25.0)
        from_bf16 = sinkhorn(log_p.bfloat16(), lam=25.0)  # what a model under autocast hands over
    assert inside.dtype == torch.float32 and from_bf16.dtype == torch.float32
    torch.testing.assert_close(inside, outside, atol=0, rtol=0)
    torch.testing.assert_close(from_bf16, sinkhorn(log_p.bfloat16().float(), lam=25.0), atol=0, rtol=0)


def test_matches_pot():
    ot = pytest.importorskip("ot")
    n, k, lam = 15, 5, 8.0
    log_p, a, b = _log_p(n, k, seed=11).double(), _random_marginal(n, 12), _random_marginal(k, 13)
    expected = ot.sinkhorn(a.numpy(), b.numpy(), (-log_p).numpy(), reg=1 / lam, numItermax=100_000, stopThr=1e-13)
    got = sinkhorn(log_p, lam, a=a, b=b, tol=1e-13, max_iter=100_000, dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10, rtol=1e-8)


def test_adding_a_constant_per_sample_leaves_the_plan_unchanged():
    # Row scaling absorbs exp(lam * c_i): the plan depends on log_p only up to a per-sample shift, so
    # unnormalised scores (logits) and log-probabilities give the same labels.
    log_p = _log_p(200, 12, seed=16, scale=2.0).double()  # fp64 so that log_p + shift is not rounded itself
    shift = 50.0 * torch.randn(200, 1, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    for lam in (1.0, 25.0, 100.0):
        exact = sinkhorn(log_p, lam, tol=1e-12, max_iter=100_000, dtype=torch.float64)
        torch.testing.assert_close(sinkhorn(log_p + shift, lam, tol=1e-12, max_iter=100_000, dtype=torch.float64),
                                   exact, atol=1e-12, rtol=1e-8)
        if lam <= 25:  # in fp32 (where lam=100 stalls near 1e-5 either way) a logit-sized shift costs only rounding
            assert _l1(sinkhorn((log_p + shift / 10).float(), lam), exact) < 1e-5


def test_inputs_are_left_alone_and_the_plan_is_detached():
    log_p = _log_p(30, 4, seed=14).requires_grad_()
    before = log_p.detach().clone()
    q = sinkhorn(log_p, lam=20.0, dtype=torch.float32)
    assert not q.requires_grad
    assert torch.equal(log_p.detach(), before)


def test_warns_when_it_does_not_converge():
    with pytest.warns(RuntimeWarning, match="did not converge in 3 iterations"):
        q = sinkhorn(_log_p(100, 10, seed=15, scale=3.0), lam=100.0, max_iter=3)
    assert torch.isfinite(q).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(log_p=torch.zeros(4)), "2-D"),
        (dict(log_p=torch.zeros(2, 3, 4)), "2-D"),
        (dict(log_p=torch.zeros(0, 3)), "at least one row"),
        (dict(lam=0.0), "lam must be"),
        (dict(lam=-1.0), "lam must be"),
        (dict(lam=float("nan")), "lam must be"),
        (dict(a=torch.full((5,), 0.2)), r"a must be a tensor of shape \(4,\)"),
        (dict(b=torch.full((4,), 0.25)), r"b must be a tensor of shape \(3,\)"),
        (dict(a=torch.tensor([0.5, 0.5, 0.0, 0.0])), "a must be finite and strictly positive"),
        (dict(b=torch.tensor([float("nan"), 0.5, 0.5])), "b must be finite and strictly positive"),
        (dict(a=torch.full((4,), 0.5)), "same total"),
        (dict(b=torch.full((3,), 1.0)), "same total"),
        (dict(log_p=torch.tensor([[0.0, float("-inf"), 0.0]] * 4)), "non-finite"),
        (dict(log_p=torch.tensor([[0.0, float("nan"), 0.0]] * 4)), "non-finite"),
        (dict(log_p=torch.tensor([[0.0, float("inf"), 0.0]] * 4)), "non-finite"),
        (dict(dtype=torch.bfloat16), "dtype must be"),
        (dict(tol=0.0), "tol must be"),
        (dict(max_iter=0), "max_iter must be"),
    ],
)
def test_bad_input_raises_one_line_value_error(kwargs, match):
    args = dict(log_p=torch.log(torch.full((4, 3), 1 / 3)), lam=10.0) | kwargs
    with pytest.raises(ValueError, match=match) as info:
        sinkhorn(**args)
    assert "\n" not in str(info.value)


# --- two gloo processes, rows sharded unevenly --------------------------------------------------------------------

N_DIST, K_DIST, WORLD, SPLIT = 13, 5, 2, 8  # rank 0 takes rows [0, 8), rank 1 rows [8, 13)


def _dist_inputs():
    return _log_p(N_DIST, K_DIST, seed=16), _random_marginal(N_DIST, 17), _random_marginal(K_DIST, 18)


def _dist_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        log_p, a, b = _dist_inputs()
        rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, N_DIST)
        out = {
            "default": sinkhorn(log_p[rows], lam=20.0),
            "marginals": sinkhorn(log_p[rows], lam=20.0, a=a[rows].float(), b=b.float()),
            "labels": self_label(log_p[rows], lam=20.0),
        }
        # Bad input on one rank only must make every rank raise, not leave the good one waiting forever.
        bad = log_p[rows].clone()
        if rank == 1:
            bad[0, 0] = float("nan")
        try:
            sinkhorn(bad, lam=20.0)
            out["error"] = None
        except ValueError as e:
            out["error"] = str(e)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_dist_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    log_p, a, b = _dist_inputs()
    expected = {
        "default": sinkhorn(log_p, lam=20.0),
        "marginals": sinkhorn(log_p, lam=20.0, a=a.float(), b=b.float()),
        "labels": self_label(log_p, lam=20.0),
    }
    for key, want in expected.items():
        got = torch.cat([p[key] for p in parts])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # Without the all-reduce each rank would balance only its own rows over the clusters: make sure that differs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 8 and 5 rows balanced over 5 clusters converge slowly
        local_only = torch.cat([sinkhorn(log_p[:SPLIT], lam=20.0) * SPLIT, sinkhorn(log_p[SPLIT:], lam=20.0) *
                                (N_DIST - SPLIT)]) / N_DIST
    assert (local_only - expected["default"]).abs().max() > 1e-3
    assert "non-finite" in parts[1]["error"]
    assert "another rank" in parts[0]["error"]

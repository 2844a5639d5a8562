"""Sinkhorn-Knopp optimal transport for self-labelling (SeLa: Asano, Rupprecht & Vedaldi, ICLR 2020).

Why an optimal-transport solver: a network that makes its own training labels by clustering its outputs has a
trivial optimum. Put every image in one cluster, predict that cluster with certainty, and the loss is zero
while nothing useful has been learnt (collapse). SeLa rules that out with an *equal-partition* constraint: the
N images must be shared out evenly over the K clusters. Picking the labels Q that the model's log-probabilities
log P agree with best under that constraint is an optimal-transport problem,

    max_Q  <Q, log P>    subject to   Q in U(a, b) = {Q >= 0 : Q 1 = a, Q^T 1 = b},

with sample marginal a = 1/N (every image carries the same mass) and cluster marginal b = 1/K (every cluster
receives the same share). As a linear program that is far too slow at ImageNet scale, so SeLa relaxes it with an
entropy term of weight 1/lam:

    max_Q  <Q, log P> + (1/lam) H(Q)    subject to   Q in U(a, b).

That is the entropic OT problem with cost M = -log P and regularisation 1/lam. Its unique solution has the form
Q = diag(u) P^lam diag(v) and is found by Sinkhorn-Knopp: rescale rows to sum to a, then columns to sum to b,
and repeat; each step is a matrix-vector product, and rows (samples) can be sharded over processes with one
all-reduce of the column sums per iteration. As lam grows, Q approaches the exact LP solution; the argmax of
each row of Q is the sample's hard self-label.

Numerics: with lam = 100 the kernel P^lam = exp(lam log P) spans thousands of orders of magnitude, far beyond
fp32, so plain scaling underflows to 0 and divides by it. The solver therefore keeps log-domain potentials f, g
and runs the cheap scaling iterations on the kernel exp(lam log P + f + g), which is the current plan itself
(entries at most about max(a, b)). Every few iterations the scalings u, v are folded back into f, g and the
kernel is rebuilt, so no scaling ever drifts far from 1 ("absorption", Schmitzer 2019). Entries that
underflow there are below 1e-38 of the total mass and do not matter.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.distributed as dist
from torch import Tensor

from selfsup.distributed import world_size

__all__ = ["sinkhorn", "self_label", "equipartition"]

# Marginal error and the scalings' drift are read back (a host-device sync on GPU) only this often.
CHECK_EVERY = 10
# Scalings are folded into the potentials (and the kernel rebuilt, an exp over the whole matrix) only once one of
# them is further than this many nats from 1: far inside fp32's range (e^88), and rare once the plan settles, so the
# steady-state iteration costs what the textbook one does: two reads of the matrix.
ABSORB_AT = 10.0
# Exponents are clamped here before exp: on a CPU, exp of an argument that underflows takes a slow path (about 13x the
# cost of an ordinary one on a 2-core x86 CPU), and at lam=100 most of the matrix underflows. e^-87 is
# fp32's smallest normal number, so the plan gains at most N*K*1.6e-38 of mass, times e^(2*ABSORB_AT) once the scalings
# have drifted: about 4e-21 at N*K = 5e8, nothing next to its entries of about 1/(N*K). (A much larger ABSORB_AT would
# break that bound.)
EXP_FLOOR = -87.0


def sinkhorn(
    log_p: Tensor,
    lam: float,
    a: Tensor | None = None,
    b: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Entropic OT plan Q = diag(u) exp(lam * log_p) diag(v) whose rows sum to a and columns to b."""
    # Under torch.distributed (world size > 1) rows are sharded: log_p and a are this rank's rows, b is global.
    world = world_size()
    _validate(log_p, lam, a, b, tol, max_iter, dtype, world)
    # No gradient flows through the labels, and bf16/fp16 autocast would wreck the matrix-vector products.
    with torch.no_grad(), torch.autocast(device_type=log_p.device.type, enabled=False):
        return _solve(log_p, float(lam), a, b, tol, max_iter, dtype, world)


def self_label(log_p: Tensor, lam: float, **kwargs) -> Tensor:
    """Hard self-labels (LongTensor[N]): the cluster on which each row's transport plan puts the most mass."""
    return sinkhorn(log_p, lam, **kwargs).argmax(dim=1)


def equipartition(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """SwAV's soft codes (Caron et al. 2020): exp(scores / epsilon), rescaled by a fixed number of Sinkhorn-Knopp
    iterations so the prototypes share the batch about equally; each row (sample) sums to 1.

    Each iteration scales the columns (prototypes) to 1/K of the mass, then the rows (samples) to 1/B, so the rows
    are exact and the columns near equal. `sinkhorn` above iterates to a tolerance instead and ends on the column
    step; SwAV's few iterations are part of its method (soft, slightly unequal codes computed on every batch), so
    they are kept as the authors define them. Under torch.distributed the rows are this rank's samples; the column
    sums and the sample count are all-reduced. The iterations run in the log domain (the same result as the
    authors' scaling of exp(scores / epsilon)), so scores of any scale stay finite in fp32: exp(20 / 0.05) would not.

    Args:
        scores: (B, K) prototype scores of this rank's samples.
        epsilon: the entropic regularisation (SwAV: 0.05).
        iterations: Sinkhorn-Knopp iterations (SwAV: 3).
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ValueError(f"equipartition needs (B, K) scores, got {getattr(scores, 'shape', type(scores))}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    world = world_size()
    with torch.no_grad(), torch.autocast(device_type=scores.device.type, enabled=False):
        log_q = scores.float() / epsilon  # a fresh tensor: the caller's scores are never written to
        scratch = torch.empty_like(log_q)
        rows = torch.tensor(float(log_q.shape[0]), device=log_q.device)
        _all_reduce(rows, world, dist.ReduceOp.SUM)
        log_k, log_b = math.log(log_q.shape[1]), rows.log()
        # The authors' first step (dividing by the total mass) is left out: the column step right after undoes it.
        for _ in range(iterations):
            log_q -= _logsumexp(log_q, 0, scratch, world) + log_k  # every prototype to 1/K (all ranks' samples)
            log_q -= (_logsumexp(log_q, 1, scratch, world) + log_b)[:, None]  # every sample to 1/B
        return _exp_(log_q.add_(log_b))


def _solve(log_p: Tensor, lam: float, a: Tensor | None, b: Tensor | None, tol: float, max_iter: int,
           dtype: torch.dtype, world: int) -> Tensor:
    s = log_p.to(dtype) * lam  # a fresh tensor: the caller's log_p is never written to
    n, k = s.shape
    dev = s.device
    if a is None:
        # Default sample marginal 1/N_total, N_total counted over all ranks so the shards fit together.
        a = torch.full((n,), 1.0 / _total_rows(n, dev, dtype, world), device=dev, dtype=dtype)
    else:
        a = a.to(device=dev, dtype=dtype)
    b = torch.full((k,), 1.0 / k, device=dev, dtype=dtype) if b is None else b.to(device=dev, dtype=dtype)
    mass = b.sum()

    # Row step in the log domain: f = log a - logsumexp_j(s). This is the row-max shift, plus an exact row
    # normalisation, so exp(s + f) cannot overflow. The kernel's memory is the scratch space throughout.
    kernel = torch.empty_like(s)
    f = a.log() - _logsumexp(s, 1, kernel, world)
    # Column step in the log domain too, reduced over ranks: every column of the kernel then sums to b_j exactly,
    # even a column whose entries would all underflow after the row shift alone (at lam=100, any cluster the model
    # rates a couple of nats below its favourite for every sample).
    g = b.log() - _logsumexp(torch.add(s, f[:, None], out=kernel), 0, kernel, world)
    _rebuild(kernel, s, f, g)
    u = torch.ones(n, device=dev, dtype=dtype)
    v = torch.ones(k, device=dev, dtype=dtype)

    err = math.inf
    for it in range(max_iter):
        u = a / (kernel @ v)
        col = u @ kernel  # column sums of diag(u) K, before the column scaling
        _all_reduce(col, world, dist.ReduceOp.SUM)
        if (it + 1) % CHECK_EVERY != 0 and it != max_iter - 1:
            v = b / col
            continue
        # Rows are exact right now; col is identical on every rank, so every rank stops at the same step.
        err_t = (v * col - b).abs().sum() / mass
        v_next = b / col
        drift = torch.maximum(u.log().abs().max(), v_next.log().abs().max())
        _all_reduce(drift, world, dist.ReduceOp.MAX)  # u is per rank: all ranks must absorb together
        err, drift = torch.stack([err_t, drift]).tolist()
        if err <= tol:
            break
        v = v_next
        if drift > ABSORB_AT:
            # Fold the scalings into the potentials and rebuild the kernel (= current plan) from them.
            f += u.log()
            g += v.log()
            _rebuild(kernel, s, f, g)
            u.fill_(1.0)
            v.fill_(1.0)
    else:
        warnings.warn(f"sinkhorn did not converge in {max_iter} iterations (marginal error {err:.1e} > tol "
                      f"{tol:.1e}); raise max_iter, lower lam or use dtype=torch.float64", RuntimeWarning, stacklevel=3)
    return kernel.mul_(u[:, None]).mul_(v)


def _exp_(x: Tensor) -> Tensor:
    """exp in place, with arguments below EXP_FLOOR raised to it first (fast on every device, see EXP_FLOOR)."""
    return x.clamp_(min=EXP_FLOOR).exp_()


def _rebuild(kernel: Tensor, s: Tensor, f: Tensor, g: Tensor) -> None:
    """kernel = exp(s + f_i + g_j), written into kernel's memory."""
    _exp_(torch.add(s, f[:, None], out=kernel).add_(g))


def _logsumexp(x: Tensor, dim: int, scratch: Tensor, world: int) -> Tensor:
    """logsumexp of x over dim, computed in scratch (which may be x itself); over dim 0 the rows of every rank count."""
    m = x.amax(dim=dim, keepdim=True)
    if dim == 0:
        _all_reduce(m, world, dist.ReduceOp.MAX)
    total = _exp_(torch.sub(x, m, out=scratch)).sum(dim=dim, keepdim=True)
    if dim == 0:
        _all_reduce(total, world, dist.ReduceOp.SUM)
    return (m + total.log()).squeeze(dim)


def _all_reduce(t: Tensor, world: int, op: dist.ReduceOp) -> None:
    if world > 1:
        dist.all_reduce(t, op=op)


def _total_rows(n: int, device: torch.device, dtype: torch.dtype, world: int) -> float:
    count = torch.tensor([float(n)], device=device, dtype=dtype)
    _all_reduce(count, world, dist.ReduceOp.SUM)
    return count.item()


def _validate(log_p: object, lam: object, a: Tensor | None, b: Tensor | None, tol: float, max_iter: int,
              dtype: torch.dtype, world: int) -> None:
    """Raise a one-line ValueError for bad input; under torch.distributed every rank raises together."""
    problem = _local_problem(log_p, lam, a, b, tol, max_iter, dtype)
    if world <= 1:
        if problem is None:
            problem = _mass_problem(1.0 if a is None else a.double().sum().item(), b)
        if problem:
            raise ValueError(problem)
        return

    # Raising on one rank only would leave the others stuck in the next all-reduce, so the ranks first agree on
    # whether anyone has a problem (and on K and on whether a was given, which must match across ranks).
    device = log_p.device if isinstance(log_p, Tensor) else torch.device("cpu")
    k = log_p.shape[1] if problem is None else -1
    given = float(a is not None)
    flags = torch.tensor([float(problem is not None), k, -k, given, -given], device=device, dtype=torch.float64)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    bad, k_max, k_min, given_max, given_min = flags[0].item(), flags[1].item(), -flags[2].item(), \
        flags[3].item(), -flags[4].item()
    if bad:
        raise ValueError(problem or "invalid sinkhorn input on another rank (see that rank's error)")
    if k_max != k_min:
        raise ValueError(f"log_p must have the same number of columns on every rank, got {int(k_min)} to {int(k_max)}")
    if given_max != given_min:
        raise ValueError("a must be given on every rank or on none")
    a_total = 1.0
    if a is not None:
        total = a.to(device=device, dtype=torch.float64).sum().reshape(1)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        a_total = total.item()
    problem = _mass_problem(a_total, b)
    if problem:
        raise ValueError(problem)


def _local_problem(log_p: object, lam: object, a: Tensor | None, b: Tensor | None, tol: float, max_iter: int,
                   dtype: torch.dtype) -> str | None:
    """The first thing wrong with this rank's arguments, as a one-line message, or None."""
    if not isinstance(log_p, Tensor):
        return f"log_p must be a torch.Tensor, got {type(log_p).__name__}"
    if log_p.ndim != 2:
        return f"log_p must be 2-D (N x K), got shape {tuple(log_p.shape)}"
    n, k = log_p.shape
    if n == 0 or k == 0:
        return f"log_p must have at least one row and one column, got shape {tuple(log_p.shape)}"
    if not isinstance(lam, numbers.Real) or isinstance(lam, bool) or not math.isfinite(lam) or lam <= 0:
        return f"lam must be a finite number > 0, got {lam!r}"
    if dtype not in (torch.float32, torch.float64):
        return f"dtype must be torch.float32 or torch.float64, got {dtype}"
    if not tol > 0:
        return f"tol must be > 0, got {tol!r}"
    if max_iter < 1:
        return f"max_iter must be >= 1, got {max_iter!r}"
    for name, m, size in (("a", a, n), ("b", b, k)):
        if m is None:
            continue
        if not isinstance(m, Tensor) or tuple(m.shape) != (size,):
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            return f"{name} must be a tensor of shape ({size},) to match log_p {tuple(log_p.shape)}, got {shape}"
        if not bool(torch.isfinite(m).all()) or not bool((m > 0).all()):
            return f"{name} must be finite and strictly positive"
    # min and max are nan if any entry is, and one of them is infinite if any entry is: one fast pass over the matrix.
    if not all(map(math.isfinite, torch.stack(torch.aminmax(log_p.detach())).tolist())):
        return "log_p has non-finite values (nan or inf); pass finite log-probabilities"
    return None


def _mass_problem(a_total: float, b: Tensor | None) -> str | None:
    """A message when the marginals carry different total mass (no plan can meet both), else None; defaults sum to 1."""
    b_total = 1.0 if b is None else b.double().sum().item()
    if not math.isclose(a_total, b_total, rel_tol=1e-4):
        return f"marginals must have the same total: a sums to {a_total:.6g}, b sums to {b_total:.6g}"
    return None

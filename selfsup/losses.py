"""Losses shared by the methods."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from selfsup.distributed import all_gather_nograd, gather_with_grad, rank, world_size
from selfsup.ot import equipartition


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent: mean over all 2N views of -log softmax of the positive against the other 2N-1.

    Under DDP the candidates (positives and negatives) are gathered from every rank with gradients;
    each rank's anchors are its own views, so averaging the ranks' losses (as DDP does) gives the loss
    of one process on the joined batch.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent needs two (N, D) embeddings of the same shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    anchors = torch.cat([z1, z2])  # (2n, d): local views
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    total = all1.shape[0]
    candidates = torch.cat([all1, all2])  # (2 * total, d)
    logits = anchors @ candidates.T / temperature
    offset = rank() * n
    local = torch.arange(n, device=z1.device) + offset
    # Never contrast a view with itself; its positive is the other view of the same image.
    self_idx = torch.cat([local, local + total])
    pos_idx = torch.cat([local + total, local])
    logits[torch.arange(2 * n, device=z1.device), self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)


def _score_lists(name: str, *lists: Sequence[torch.Tensor]) -> None:
    first = lists[0][0] if lists and lists[0] else None
    for group in lists:
        for x in group:
            if not isinstance(x, torch.Tensor) or x.dim() != 2 or first is None or x.shape[1] != first.shape[1]:
                raise ValueError(f"{name} needs lists of (B, K) scores with one K, got "
                                 f"{[tuple(getattr(t, 'shape', ())) for g in lists for t in g]}")


def swav(high_res_scores: Sequence[torch.Tensor], low_res_scores: Sequence[torch.Tensor] = (),
         temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3,
         queue_scores: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    """SwAV's swapped prediction (Caron et al. 2020): each global crop's codes are predicted from every other crop.

    For each global crop i, its codes q_i come from `equipartition` of its prototype scores (no gradient), with the
    scores of queued embeddings stacked above the batch when `queue_scores[i]` is given (only the batch's rows are
    kept). Every other crop v predicts them with softmax(scores_v / temperature); the loss is the cross-entropy
    averaged over samples, over the other crops, then over the global crops. Under DDP the codes are computed over
    the global batch (all-reduced marginals) and the mean is over this rank's samples, so DDP's gradient average is
    the one-process loss of the joined batch.

    Args:
        high_res_scores: (B, K) prototype scores of each global crop (the crops codes are computed for).
        low_res_scores: (B, K) scores of each local crop (predict the codes, have none of their own).
        temperature: of the predicting softmax (SwAV: 0.1).
        epsilon, iterations: of the Sinkhorn-Knopp codes (SwAV: 0.05 and 3).
        queue_scores: per global crop, (Q, K) scores of queued embeddings of earlier batches, or None.

    Example:
        >>> s = [torch.randn(8, 30) for _ in range(2)]
        >>> swav(s, [torch.randn(8, 30)]).shape
        torch.Size([])
    """
    high, low = list(high_res_scores), list(low_res_scores)
    if not high:
        raise ValueError("swav needs the scores of at least one global crop")
    _score_lists("swav", high, low)
    crops = high + low
    if len(crops) < 2:
        raise ValueError("swav needs at least two crops: one crop's codes are predicted from the others")
    log_p = [F.log_softmax(x.float() / temperature, dim=1) for x in crops]
    total = 0.0
    for i, scores in enumerate(high):
        with torch.no_grad():
            s = scores.detach().float()
            queued = queue_scores[i] if queue_scores is not None else None
            if queued is not None:
                s = torch.cat([queued.detach().float(), s])
            codes = equipartition(s, epsilon, iterations)[-len(scores):]
        others = [lp for v, lp in enumerate(log_p) if v != i]
        total = total + sum(-(codes * lp).sum(1).mean() for lp in others) / len(others)
    return total / len(high)


def dino(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], center: torch.Tensor,
         student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINO's self-distillation loss (Caron et al. 2021): cross-entropy from the centred, sharpened teacher
    distribution of each global crop to the student's distribution of every other crop.

    The teacher's probabilities are softmax((t - center) / teacher_temp), without gradient; the student's,
    softmax(s / student_temp). A teacher crop is never compared with the same crop of the student, so the student's
    crops must list the global crops first, in the teacher's order. The loss is the mean over samples of
    sum_k -p_teacher log p_student, averaged over all (teacher crop, other student crop) pairs.

    Args:
        student: (B, K) logits of every crop, the global ones first.
        teacher: (B, K) logits of the global crops.
        center: (K,) or (1, K): the running mean of the teacher's logits (see dino_center).
        student_temp, teacher_temp: the two temperatures (DINO: 0.1; 0.04, or 0.04 -> 0.07 over a warm-up).

    Example:
        >>> t = [torch.randn(8, 64) for _ in range(2)]
        >>> dino(t + [torch.randn(8, 64)], t, torch.zeros(64)).shape
        torch.Size([])
    """
    student, teacher = list(student), list(teacher)
    if not teacher or len(student) < 2:
        raise ValueError("dino needs the teacher's global crops and at least two student crops")
    _score_lists("dino", student, teacher)
    log_p = [F.log_softmax(x.float() / student_temp, dim=-1) for x in student]
    targets = [F.softmax((x.detach().float() - center) / teacher_temp, dim=-1) for x in teacher]
    total, terms = 0.0, 0
    for iq, q in enumerate(targets):
        for v, lp in enumerate(log_p):
            if v != iq:
                total = total + (-q * lp).sum(-1).mean()
                terms += 1
    return total / terms


@torch.no_grad()
def dino_center(center: torch.Tensor, teacher: Sequence[torch.Tensor], momentum: float = 0.9) -> torch.Tensor:
    """DINO's new centre: momentum * center + (1 - momentum) * the mean teacher logits of this (global) batch.

    Under DDP the mean is over every process's rows (an all-reduce), so the centre is the same everywhere.
    """
    t = torch.cat([x.detach().float() for x in teacher])
    stats = torch.cat([t.sum(0), t.new_tensor([t.shape[0]])])
    if world_size() > 1:
        dist.all_reduce(stats)
    mean = (stats[:-1] / stats[-1]).view_as(center)
    return center * momentum + mean * (1 - momentum)


def _same_shape_rows(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{name} needs two (N, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None,
             temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020): each query's positive is its own key, its negatives the queued keys.

    The logits are [q . k_i, q . queue] / temperature over L2-normalised vectors, and the loss is the cross-entropy
    with the positive at index 0, averaged over the queries. The keys and the queue carry no gradient (the caller's
    momentum encoder made them).

    Args:
        q: (N, D) queries (from the trained encoder).
        k: (N, D) keys, row i the positive of query i.
        queue: (Q, D) negatives (keys of earlier batches), or None for the positive alone.
        temperature: MoCo v2: 0.2 (v1: 0.07).

    Example:
        >>> info_nce(torch.randn(8, 16), torch.randn(8, 16), torch.randn(32, 16)).shape
        torch.Size([])
    """
    if q.dim() != 2 or q.shape != k.shape or (queue is not None and (queue.dim() != 2 or queue.shape[1] != q.shape[1])):
        raise ValueError(f"info_nce needs (N, D) queries and keys and a (Q, D) queue, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {None if queue is None else tuple(queue.shape)}")
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    logits = (q * k).sum(1, keepdim=True)
    if queue is not None:
        logits = torch.cat([logits, q @ F.normalize(queue.detach().float(), dim=1).T], dim=1)
    return F.cross_entropy(logits / temperature, torch.zeros(len(q), dtype=torch.long, device=q.device))


def contrastive_across_batch(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo v3's contrastive loss (Chen, Xie & He 2021): each query against the keys of the whole global batch, its
    own key the positive, scaled by 2 * temperature as the authors do.

    The keys carry no gradient and are gathered from every process; each process's queries are its own rows, so the
    mean over processes (DDP's average) is the one-process loss of the joined batch.

    Example:
        >>> contrastive_across_batch(torch.randn(8, 16), torch.randn(8, 16)).shape
        torch.Size([])
    """
    _same_shape_rows("contrastive_across_batch", q, k)
    q = F.normalize(q.float(), dim=1)
    keys = F.normalize(all_gather_nograd(k.detach().float()), dim=1)
    labels = torch.arange(len(q), device=q.device) + rank() * len(q)
    return F.cross_entropy(q @ keys.T / temperature, labels) * (2 * temperature)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Minus the mean cosine similarity of the rows of p and z: SimSiam's D(p, z), and BYOL's loss as 2 + 2 * D.

    The caller detaches z (the stop-gradient branch); this function does not, so it can also be used both ways.

    Example:
        >>> negative_cosine(torch.randn(8, 16), torch.randn(8, 16).detach()).shape
        torch.Size([])
    """
    _same_shape_rows("negative_cosine", p, z)
    return -F.cosine_similarity(p.float(), z.float(), dim=1).mean()


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over the processes, differentiably (x itself in one process).

    A loss built from such sums is the joined batch's loss, the same in every process. Its gradient reaches each
    process's inputs from every process's copy (gather_with_grad sums them: W times the one-process gradient), and
    DDP's average over the W processes brings it back to the one-process gradient, so no rescaling is needed.
    """
    return gather_with_grad(x[None]).sum(0) if world_size() > 1 else x


def _global_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-dimension mean and biased variance of z over the global batch (all-reduced, differentiably), and its size."""
    n = z.shape[0] * world_size()
    mean = _global_sum(z.sum(0)) / n
    centred = z - mean
    return mean, _global_sum((centred * centred).sum(0)) / n, n


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' redundancy reduction (Zbontar et al. 2021).

    Each embedding is standardised per dimension over the global batch (batch-norm statistics without affine:
    biased variance, eps 1e-5), the cross-correlation C = z1n^T z2n / N is taken over the global batch, and the loss
    is sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i != j} C_ij^2. Under DDP the statistics and C are summed over the
    processes with gradients, so every process holds the loss of the joined batch.

    Args:
        z1, z2: (N, D) embeddings of two views (the projector's outputs).
        lambda_offdiag: weight of the off-diagonal terms (the paper: 5e-3; its code 0.0051).
        eps: added to the variance, as nn.BatchNorm1d does.

    Example:
        >>> barlow_twins(torch.randn(8, 16), torch.randn(8, 16)).shape
        torch.Size([])
    """
    _same_shape_rows("barlow_twins", z1, z2)
    z = []
    for x in (z1.float(), z2.float()):
        mean, var, n = _global_moments(x)
        z.append((x - mean) / torch.sqrt(var + eps))
    c = _global_sum(z[0].T @ z[1]) / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambda_offdiag * off


def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
           cov_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg (Bardes, Ponce & LeCun 2022), as in the authors' code.

    invariance: the mean squared error between z1 and z2; variance: for each branch the mean over dimensions of
    relu(1 - sqrt(var + eps)) (unbiased variance over the global batch), averaged over the two branches; covariance:
    for each branch the sum of the squared off-diagonal covariances divided by the dimension, summed over the two.
    The loss is sim_weight * invariance + var_weight * variance + cov_weight * covariance. Under DDP the variance and
    covariance are over the joined batch (the authors gather the embeddings); the invariance is each process's own
    mean, which DDP's average makes the joined batch's.

    Example:
        >>> vicreg(torch.randn(8, 16), torch.randn(8, 16)).shape
        torch.Size([])
    """
    _same_shape_rows("vicreg", z1, z2)
    z1, z2 = z1.float(), z2.float()
    invariance = F.mse_loss(z1, z2)
    variance = covariance = 0.0
    d = z1.shape[1]
    for x in (z1, z2):
        mean, var, n = _global_moments(x)
        if n < 2:
            raise ValueError("vicreg needs at least two samples in the (global) batch for a variance")
        var = var * n / (n - 1)
        variance = variance + F.relu(1 - torch.sqrt(var + eps)).mean() / 2
        centred = x - mean
        cov = _global_sum(centred.T @ centred) / (n - 1)
        covariance = covariance + (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance

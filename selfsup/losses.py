"""Losses shared by the methods."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from selfsup.distributed import gather_with_grad, rank, world_size
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

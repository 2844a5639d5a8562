"""Losses shared by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.distributed import gather_with_grad, rank


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

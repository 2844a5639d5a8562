"""Weighted kNN classification on cosine similarity (Wu et al. 2018), chunked on the features' device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.progress import Progress


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Class scores (M, C) for each test feature: sum over its k nearest training features of exp(sim / T)."""
    bank = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(bank.device).long()
    k = min(k, bank.shape[0])
    scores = []
    n = test_feats.shape[0]
    bar = Progress(-(-n // chunk), f"kNN ({n:,} queries, {bank.shape[0]:,} in the bank)", unit="queries",
                   per_step=chunk)
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start:start + chunk].to(bank.device).float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[idx], weights)
        scores.append(votes)
        bar.update()
    bar.close()
    return torch.cat(scores)


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy (percent) of weighted kNN."""
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature).argmax(1)
    return 100.0 * (pred.cpu() == test_labels.cpu()).float().mean().item()

"""Weighted kNN classification on cosine similarity (Wu et al. 2018), chunked on the features' device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.progress import Progress

BANK_CHUNK = 65_536  # bank rows moved to the device at a time when the bank stays on the host


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Class scores (M, C) for each test feature: sum over its k nearest training features of exp(sim / T).

    The bank is used where it is; given a `device` it is not on (a bank too large for it, kept on the host or in a
    memory-mapped file), it goes through in chunks of BANK_CHUNK rows, each query keeping its running k best."""
    if device is not None and not _same_device(torch.device(device), train_feats.device):
        return _knn_streamed(train_feats, train_labels, test_feats, num_classes, k, temperature, chunk,
                             torch.device(device))
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


def _same_device(wanted: torch.device, actual: torch.device) -> bool:
    """Whether `actual` is `wanted` ('cuda' without an index matches whichever GPU the tensor is on)."""
    return wanted.type == actual.type and (wanted.index is None or wanted.index == actual.index)


def _knn_streamed(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                  num_classes: int, k: int, temperature: float, chunk: int, device: torch.device) -> torch.Tensor:
    n, m = train_feats.shape[0], test_feats.shape[0]
    k = min(k, n)
    queries = F.normalize(test_feats.to(device).float(), dim=1)
    best_sim = torch.full((m, k), -float("inf"), device=device)
    best_label = torch.zeros((m, k), dtype=torch.long, device=device)
    bar = Progress(-(-n // BANK_CHUNK), f"kNN ({m:,} queries, {n:,} in the bank, in chunks)", unit="rows",
                   per_step=BANK_CHUNK)
    for start in range(0, n, BANK_CHUNK):
        bank = F.normalize(train_feats[start:start + BANK_CHUNK].to(device).float(), dim=1)
        labels = train_labels[start:start + BANK_CHUNK].to(device).long()
        for q in range(0, m, chunk):
            sim, idx = (queries[q:q + chunk] @ bank.T).topk(min(k, len(bank)), dim=1)
            sims = torch.cat([best_sim[q:q + chunk], sim], 1)
            labs = torch.cat([best_label[q:q + chunk], labels[idx]], 1)
            top, pos = sims.topk(k, dim=1)
            best_sim[q:q + chunk], best_label[q:q + chunk] = top, labs.gather(1, pos)
        bar.update()
    bar.close()
    votes = torch.zeros(m, num_classes, device=device)
    return votes.scatter_add_(1, best_label, (best_sim / temperature).exp())


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 200, temperature: float = 0.1,
                 device: torch.device | str | None = None) -> float:
    """Top-1 accuracy (percent) of weighted kNN (on `device` when given, see knn_predict)."""
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature, device=device).argmax(1)
    return 100.0 * (pred.cpu() == test_labels.cpu()).float().mean().item()

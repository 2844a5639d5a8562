"""Linear probes on frozen features: one linear classifier per tap, all trained together over cached features."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.progress import Progress

STATS_CHUNK = 65_536  # rows at a time for the statistics of features too large to copy to float32 whole
STATS_AT_ONCE = 2**30  # bytes of float32 features whose statistics are computed in one go


@torch.no_grad()
def _standardise(train: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if train.numel() * 4 <= STATS_AT_ONCE:
        mean = train.float().mean(0)
        std = train.float().std(0).clamp_min(1e-5)
        return mean.to(device), std.to(device)
    # ImageNet-size features (possibly a memory-mapped file): sums in float64 over chunks, never a float32 copy.
    n = len(train)
    total = torch.zeros(train.shape[1], dtype=torch.float64)
    squares = torch.zeros(train.shape[1], dtype=torch.float64)
    for start in range(0, n, STATS_CHUNK):
        part = train[start:start + STATS_CHUNK].double()
        total += part.sum(0)
        squares += (part * part).sum(0)
    mean = total / n
    std = ((squares - n * mean * mean).clamp_min(0) / max(1, n - 1)).sqrt().clamp_min(1e-5)
    return mean.float().to(device), std.float().to(device)


def train_linear_probes(train: dict[str, torch.Tensor], train_labels: torch.Tensor, test: dict[str, torch.Tensor],
                        test_labels: torch.Tensor, num_classes: int, epochs: int = 30, lr: float = 1e-3,
                        weight_decay: float = 5e-4, batch_size: int = 256, device: torch.device | str = "cpu",
                        seed: int = 0) -> dict[str, float]:
    """Top-1 test accuracy (percent) of a linear classifier per layer.

    Features are standardised with the training mean/std (a BatchNorm without affine, as many probe
    protocols do), then every layer's classifier sees the same shuffled mini-batches: AdamW with a cosine
    schedule. Each epoch is one pass over the cached features of all layers.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    names = list(train)
    stats = {n: _standardise(train[n], device) for n in names}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the probes' result must not depend on whatever ran before
        heads = nn.ModuleDict({n: nn.Linear(train[n].shape[1], num_classes) for n in names}).to(device)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    n_train = len(train_labels)
    steps = epochs * math.ceil(n_train / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    y_train = train_labels.long()
    bar = Progress(epochs, f"linear probes on {len(names)} tap{'s' * (len(names) > 1)}, {n_train:,} images",
                   unit="epochs")
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        for start in range(0, n_train, batch_size):
            idx = order[start:start + batch_size]
            y = y_train[idx].to(device)
            loss = 0.0
            for n in names:
                mean, std = stats[n]
                x = (train[n][idx].to(device).float() - mean) / std
                loss = loss + F.cross_entropy(heads[n](x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.update()
    bar.close()
    result = {}
    with torch.no_grad():
        for n in names:
            mean, std = stats[n]
            correct = 0
            for start in range(0, len(test_labels), 4096):
                x = (test[n][start:start + 4096].to(device).float() - mean) / std
                correct += (heads[n](x).argmax(1).cpu() == test_labels[start:start + 4096].long()).sum().item()
            result[n] = 100.0 * correct / len(test_labels)
    return result

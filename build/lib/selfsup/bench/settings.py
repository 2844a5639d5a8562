"""The sizes `selfsup bench` measures at on each device, and the modes of the throughput comparison."""

from __future__ import annotations

import os

import torch

MODES = ("selfsup", "floor", "dataloader")
EPOCH = 50_000  # images in a CIFAR-10 epoch: seconds per epoch are quoted for it, whatever the source


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def settings(device: torch.device, tiny: bool = False) -> dict:
    """The default sizes: the issue's H100 set-up on CUDA, the CPU studies' set-up on CPU, seconds-long ones for
    tests."""
    if tiny:
        return dict(backbone="alexnet_small", width=0.25, batch_size=32, steps=2, warmup=1, source="digits", size=32,
                    sinkhorn_n=2000, sinkhorn_k=100, sinkhorn_iters=10, pot_iters=2, stable_n=1000, stable_k=500,
                    bandwidth_mb=32, knn_train=2000, knn_test=500, feature_dim=64, probe_epochs=1)
    common = dict(size=32, sinkhorn_n=50_000, sinkhorn_k=3_000, stable_n=50_000, stable_k=10_000, knn_train=50_000,
                  knn_test=10_000, feature_dim=512, source="cifar10")
    if device.type == "cuda":
        return dict(common, backbone="resnet18", width=1.0, batch_size=512, steps=40, warmup=10, sinkhorn_iters=200,
                    pot_iters=5, bandwidth_mb=2048, probe_epochs=10)
    return dict(common, backbone="alexnet_small", width=0.25, batch_size=256, steps=20, warmup=3, sinkhorn_iters=30,
                pot_iters=3, bandwidth_mb=1024, probe_epochs=3)


"""A few optimizer steps of a method on a fixed tiny batch, for the tests that check a loss falls."""

import torch

from selfsup.methods.base import Batch


def fit(method, images: torch.Tensor, steps: int, optimizer: torch.optim.Optimizer, seed: int = 1) -> list[dict]:
    """Train `steps` steps on `images` (uint8 B,H,W,3); returns each step's outputs, detached."""
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        out = method(Batch(images, torch.arange(len(images)), gen))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append({k: v.detach() for k, v in out.items()})
    return history

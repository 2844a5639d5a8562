"""Training steps for tests: a few optimizer steps on a fixed tiny batch (the tests that check a loss falls), and one
step with every hook the loop calls."""

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


def hooked_step(method, batch: Batch, optimizer: torch.optim.Optimizer, step: int, total: int) -> dict:
    """One training step as selfsup.fit takes it: forward, backward, on_before_step, the optimizer's step and
    on_step_end (momentum teachers, frozen layers, clipping); returns the method's outputs."""
    out = method(batch)
    optimizer.zero_grad()
    out["loss"].backward()
    method.on_before_step(step, total)
    optimizer.step()
    method.on_step_end(step, total)
    return out

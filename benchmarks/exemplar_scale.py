"""Benchmark: how exemplar learning's cost grows with the number of classes N, in one run.

    python benchmarks/exemplar_scale.py                       # N = 8,000 / 50,000 / 200,000 on the CPU
    python benchmarks/exemplar_scale.py --sizes 50000 1000000 --device cuda

For each N it times training steps of Exemplar-CNN's parametric softmax (a linear classifier over all N
classes) and of the memory-bank mode (a sampled softmax over `negatives` entries of an N x 128 bank), with
the same backbone and batch, and counts the bytes each keeps per N: classifier weights plus their gradient
and momentum, against the bank. The time per step of the parametric classifier grows with N; the bank's
does not.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from selfsup.config import load_config
from selfsup.methods import build_method
from selfsup.methods.base import Batch


def step_seconds(method, images: torch.Tensor, index: torch.Tensor, steps: int) -> float:
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator(device=images.device).manual_seed(0)

    def one():
        loss = method(Batch(images, index, gen))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()  # warm-up (allocations, momentum buffers)
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8_000, 50_000, 200_000])
    p.add_argument("--backbone", default="exemplar_small")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 32, 32, 3), dtype=torch.uint8, generator=g).to(device)
    rows = []
    for n in args.sizes:
        index = torch.randint(n, (args.batch_size,), generator=g).to(device)
        row = {"n": n, "batch_size": args.batch_size, "device": str(device), "threads": torch.get_num_threads()}
        for method_name in ("exemplar", "instance"):
            cfg = load_config(overrides={"method": method_name, "model": {"backbone": args.backbone, "input_size": 32}})
            method = build_method(cfg, n).to(device).train()
            row[f"{method_name}_step_seconds"] = round(step_seconds(method, images, index, args.steps), 4)
            if method_name == "exemplar":  # weights + gradient + SGD momentum of the N-way classifier
                row["exemplar_per_n_bytes"] = 3 * sum(t.numel() * t.element_size()
                                                      for t in method.classifier.parameters())
            else:
                row["instance_per_n_bytes"] = method.bank.numel() * method.bank.element_size()
            del method
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

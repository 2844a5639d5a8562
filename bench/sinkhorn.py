"""Benchmark: selfsup.ot.sinkhorn against POT's ot.sinkhorn on one labelling problem, in one run.

    python bench/sinkhorn.py                      # N=50,000, K=3,000, lam=25, on the GPU if there is one
    python bench/sinkhorn.py --n 10000 --k 1000 --device cpu

Both solvers get the same scores (log-softmax of random logits) and run the same fixed number of
iterations (a tolerance that is never met), so the time per iteration compares like with like; each plan's marginal error
and the largest difference between the two plans are printed beside the timings. POT runs on the CPU in
float64 (its numpy backend), as a user without our solver would run it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--k", type=int, default=3_000)
    p.add_argument("--lam", type=float, default=25.0)
    p.add_argument("--iters", type=int, default=100, help="iterations for both solvers (no early stop)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed solves of ours (the best is reported)")
    p.add_argument("--no-pot", action="store_true", help="skip POT (e.g. when it would not fit in memory)")
    args = p.parse_args()

    import warnings

    from selfsup.ot import sinkhorn

    warnings.simplefilter("ignore", RuntimeWarning)  # a fixed iteration count on purpose: no convergence warning
    g = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(3.0 * torch.randn(args.n, args.k, generator=g), dim=1)
    device = torch.device(args.device)
    x = log_p.to(device)

    def ours() -> torch.Tensor:
        q = sinkhorn(x, args.lam, tol=1e-30, max_iter=args.iters)  # never met: exactly `iters` iterations
        if device.type == "cuda":
            torch.cuda.synchronize()
        return q

    ours()  # warm-up (allocations, kernels)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        q = ours()
        times.append(time.perf_counter() - t0)
    q = q.double().cpu()
    result = {"n": args.n, "k": args.k, "lam": args.lam, "iters": args.iters, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "ours_seconds": round(min(times), 4),
              "ours_marginal_error": float((q.sum(0) - 1 / args.k).abs().sum() * args.k)}
    if not args.no_pot:
        import ot

        a, b = np.full(args.n, 1 / args.n), np.full(args.k, 1 / args.k)
        cost = (-log_p.double()).numpy()
        t0 = time.perf_counter()
        plan = ot.sinkhorn(a, b, cost, reg=1 / args.lam, numItermax=args.iters, stopThr=0.0)
        result["pot_seconds"] = round(time.perf_counter() - t0, 4)
        result["pot_marginal_error"] = float(np.abs(plan.sum(0) - b).sum() * args.k)
        result["speedup"] = round(result["pot_seconds"] / result["ours_seconds"], 1)
        result["max_plan_difference_relative"] = float(np.abs(plan - q.numpy()).max() * args.n * args.k)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

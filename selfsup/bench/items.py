"""The items `selfsup bench` measures, each run by itself in a fresh process (see selfsup.bench)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from selfsup.bench.settings import EPOCH, cores


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _method_config(item: dict):
    from selfsup.config import load_config

    s = item["settings"]
    size = s["size"]
    return load_config(overrides={
        "method": item["method"], "batch_size": s["batch_size"],
        "model": {"backbone": s["backbone"], "width": s["width"], "input_size": size}, "augment": {"size": size}})


def _views_transform(aug, size: int):
    """torchvision's per-sample version of an AugmentConfig, as other libraries build it."""
    import torchvision.transforms as T

    from selfsup.augmentation import MEAN, STD

    steps = [T.RandomResizedCrop(size, scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio)),
             T.RandomHorizontalFlip(aug.flip_p),
             T.RandomApply([T.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)], p=aug.jitter_p),
             T.RandomGrayscale(aug.grayscale_p)]
    if aug.blur_p > 0:
        kernel = 2 * (size // 20) + 1  # about 10% of the image, odd, as SimCLR's
        steps.append(T.RandomApply([T.GaussianBlur(kernel, tuple(aug.blur_sigma))], p=aug.blur_p))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])


class PerSampleViews(torch.utils.data.Dataset):
    """(index, views) for one image at a time, view j from transforms[j] (torchvision, per sample): the usual path."""

    def __init__(self, images: np.ndarray, transforms: list):
        self.images, self.transforms = images, transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return i, tuple(t(img) for t in self.transforms)


def _is_view(draw, batch_size: int) -> bool:
    """A drawn network input: (B, 3, S, S) floats (multi-crop draws views of several sizes)."""
    return isinstance(draw, torch.Tensor) and draw.ndim == 4 and tuple(draw.shape[:2]) == (batch_size, 3) \
        and draw.shape[-1] == draw.shape[-2] and draw.is_floating_point()


def throughput(item: dict, device: torch.device) -> dict:
    """Images per second of one method's training step in one mode (see the module docstring)."""
    from selfsup.data import load_source
    from selfsup.data.stream import placed
    from selfsup.engine import build_optimizer
    from selfsup.methods import Batch, RunInfo, Tape, build_method, get_method

    s, mode = item["settings"], item["mode"]
    cfg = _method_config(item)
    data = load_source(s["source"], "train", s.get("root"))
    torch.manual_seed(0)
    method = build_method(cfg, get_method(cfg.method).data_info(cfg, data)).to(device)
    data = method.prepare_data(data, RunInfo())  # as a run does (Exemplar-CNN: its seed patches)
    host = np.ascontiguousarray(data.images)
    images = placed(host, device)  # as a run places them: on the device when they fit its default budget
    n, bs = len(images), s["batch_size"]
    method.on_train_start(images)
    method.channels_last = True
    method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg.optim)
    if mode == "compiled":  # what `compile: true` does in training: the backbone through torch.compile
        method.backbone.compile()
    gen = torch.Generator(device=device).manual_seed(0)
    bf16 = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(batch: Batch) -> None:
        with torch.autocast(**bf16):
            loss = method(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def index_batch() -> Batch:
        idx = torch.randint(n, (bs,), device=device, generator=gen)
        return Batch(images.gather(idx), idx, gen)

    fixed = index_batch()
    method.tape = Tape()
    step(fixed)  # records one step's draws (and warms up; compiles, in compiled mode)
    recorded = method.tape.draws
    if mode in ("selfsup", "compiled"):
        method.tape = None
        next_batch = index_batch
    elif mode == "floor":
        method.tape = Tape(recorded)
        next_batch = lambda: fixed  # noqa: E731
    else:
        view_slots = [i for i, d in enumerate(recorded) if _is_view(d, bs)]
        # Multi-crop methods draw each crop with its own augmentation (size, scale); the others all with the run's.
        augs = getattr(method, "crop_augs", None)
        augs = augs if augs is not None and len(augs) == len(view_slots) else [cfg.augment] * len(view_slots)
        transforms = [_views_transform(a, recorded[i].shape[-1]) for a, i in zip(augs, view_slots)]
        loader = torch.utils.data.DataLoader(
            PerSampleViews(host, transforms), batch_size=bs,
            shuffle=True, drop_last=True, num_workers=max(1, cores() - 1), pin_memory=device.type == "cuda",
            persistent_workers=True)
        batches = iter(loader)

        def next_batch() -> Batch:
            nonlocal batches
            try:
                idx, views = next(batches)
            except StopIteration:
                batches = iter(loader)
                idx, views = next(batches)
            draws = list(recorded)
            for slot, view in zip(view_slots, views):
                draws[slot] = view.to(device, non_blocking=True)
            method.tape = Tape(draws)
            idx = idx.to(device, non_blocking=True)
            return Batch(fixed.images, idx, gen)

    for _ in range(s["warmup"]):
        step(next_batch())
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(s["steps"]):
        step(next_batch())
    _sync(device)
    seconds = (time.perf_counter() - t0) / s["steps"]
    per_second = bs / seconds
    return {"images_per_second": round(per_second, 1), "seconds_per_epoch": round(EPOCH / per_second, 2)}


def _scores(n: int, k: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    return torch.log_softmax(3.0 * torch.randn(n, k, device=device, generator=g), dim=1)


def copy_bandwidth(item: dict, device: torch.device) -> dict:
    """Bytes read plus bytes written per second by a large device-to-device copy (the best of five)."""
    n = item["settings"]["bandwidth_mb"] * 2**20 // 4
    x = torch.ones(n, device=device)
    y = torch.empty_like(x)
    best = math.inf
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        y.copy_(x)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"bytes_per_second": 2 * 4 * n / best}


def _marginal_error(q: torch.Tensor) -> float:
    """L1 distance of the plan's row and column sums from the uniform marginals (each of mass 1);
    nan when not finite."""
    q = q.double()
    n, k = q.shape
    return float((q.sum(1) - 1 / n).abs().sum() + (q.sum(0) - 1 / k).abs().sum())


def _plain_sinkhorn(log_p: torch.Tensor, lam: float, iters: int) -> torch.Tensor:
    """The textbook scaling iteration on the kernel exp(lam log P): fast, but the kernel underflows for large lam."""
    n, k = log_p.shape
    kernel = torch.exp(lam * log_p)
    u, v = torch.ones(n, device=log_p.device), torch.ones(k, device=log_p.device)
    for _ in range(iters):
        u = (1 / n) / (kernel @ v)
        v = (1 / k) / (u @ kernel)
    return u[:, None] * kernel * v


def _log_sinkhorn(log_p: torch.Tensor, lam: float, iters: int) -> torch.Tensor:
    """The log-domain iteration (two logsumexp passes over the matrix): stable, but each pass is exp-bound."""
    n, k = log_p.shape
    s = lam * log_p
    f, g = torch.zeros(n, device=log_p.device), torch.zeros(k, device=log_p.device)
    for _ in range(iters):
        f = -math.log(n) - torch.logsumexp(s + g, dim=1)
        g = -math.log(k) - torch.logsumexp(s + f[:, None], dim=0)
    return torch.exp(s + f[:, None] + g)


def sinkhorn_item(item: dict, device: torch.device) -> dict:
    """Seconds per iteration of one Sinkhorn solver on the N x K problem, and its plan's marginal error."""
    import warnings

    from selfsup.ot import sinkhorn

    n, k, lam, iters, solver = item["n"], item["k"], item["lam"], item["iters"], item["solver"]
    log_p = _scores(n, k, device)
    if solver.startswith("pot"):
        import ot

        cost = (-log_p.double()).cpu().numpy()
        a, b = np.full(n, 1 / n), np.full(k, 1 / k)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = ot.sinkhorn(a, b, cost, reg=1 / lam, method="sinkhorn_log" if solver == "pot_log" else "sinkhorn",
                               numItermax=iters, stopThr=0.0)
        seconds = time.perf_counter() - t0
        return {"seconds_per_iteration": seconds / iters, "run_seconds": seconds,
                "marginal_error": _marginal_error(torch.from_numpy(plan))}
    solve = {"selfsup": lambda m: sinkhorn(log_p, lam, tol=1e-30, max_iter=m),  # a tolerance never met: m iterations
             "plain": lambda m: _plain_sinkhorn(log_p, lam, m),
             "log": lambda m: _log_sinkhorn(log_p, lam, m)}[solver]
    def timed(m: int) -> tuple[float, torch.Tensor]:
        _sync(device)
        t0 = time.perf_counter()
        plan = solve(m)
        _sync(device)
        return time.perf_counter() - t0, plan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solve(2)  # warm-up
        once, plan = timed(iters)
        twice, _ = timed(2 * iters)
    # The difference of two runs is the steady-state cost of `iters` iterations (set-up cancels out).
    per = (twice - once) / iters
    return {"seconds_per_iteration": per, "run_seconds": once, "marginal_error": _marginal_error(plan),
            "finite": bool(torch.isfinite(plan).all())}


def knn_item(item: dict, device: torch.device) -> dict:
    """Seconds of weighted kNN (k=200) of the test features against the training features."""
    from selfsup.eval.knn import knn_accuracy

    s = item["settings"]
    g = torch.Generator(device=device).manual_seed(0)
    train = torch.randn(s["knn_train"], s["feature_dim"], device=device, generator=g)
    test = torch.randn(s["knn_test"], s["feature_dim"], device=device, generator=g)
    y_train = torch.randint(10, (s["knn_train"],), device=device, generator=g)
    y_test = torch.randint(10, (s["knn_test"],), device=device, generator=g)
    knn_accuracy(train, y_train, test[:256], y_test[:256], 10)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    knn_accuracy(train, y_train, test, y_test, 10)
    _sync(device)
    return {"seconds": time.perf_counter() - t0}


def linear_item(item: dict, device: torch.device) -> dict:
    """Seconds per epoch of a linear probe trained over cached features (batch 256, AdamW)."""
    from selfsup.eval.linear import train_linear_probes

    s = item["settings"]
    g = torch.Generator().manual_seed(0)
    train = torch.randn(s["knn_train"], s["feature_dim"], generator=g)
    test = torch.randn(s["knn_test"], s["feature_dim"], generator=g)
    y_train, y_test = (torch.randint(10, (s["knn_train"],), generator=g),
                       torch.randint(10, (s["knn_test"],), generator=g))
    t0 = time.perf_counter()
    train_linear_probes({"features": train}, y_train, {"features": test}, y_test, 10, epochs=s["probe_epochs"],
                        device=device)
    _sync(device)
    return {"seconds_per_epoch": (time.perf_counter() - t0) / s["probe_epochs"]}


ITEMS = {"throughput": throughput, "bandwidth": copy_bandwidth, "sinkhorn": sinkhorn_item, "knn": knn_item,
         "linear": linear_item}


def run_item(item: dict) -> dict:
    """Measure one item in this process; add its peak memory in MB."""
    import resource

    from selfsup.distributed import pick_device

    device = pick_device(item["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = ITEMS[item["kind"]](item, device)
    if device.type == "cuda":
        result["peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        result["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KB on Linux
    return result


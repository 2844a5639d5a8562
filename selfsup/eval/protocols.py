"""Evaluation entry points: kNN and linear probes on a method or backbone, and `evaluate_run` (what `selfsup eval`
runs: a protocol on a run's frozen backbone, its result appended to the run's eval.jsonl)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from selfsup.augmentation import normalize
from selfsup.config import EvalConfig, apply_overrides, load_config
from selfsup.data import ImageArray
from selfsup.data.stream import placed
from selfsup.engine.logs import log_eval_result
from selfsup.errors import SelfSupError, warn
from selfsup.eval import eval_splits, linear_probes, run_knn, tap_features
from selfsup.eval.classifier import finetune_rows, parse_labels, protocol_for, train_classifier
from selfsup.nets import Backbone

PROTOCOLS = ("knn", "linear", "finetune", "nonlinear", "quadrant")
LINEAR_PROTOCOLS = ("fast", "linear-probes", "simclr")


def _parts(model, input_size: int | None):
    """(backbone, input transform, input size) of a Method or a Backbone."""
    from selfsup.methods.base import Method

    if isinstance(model, Method):
        return model.eval_backbone, model.input_transform, input_size or model.data.input_size
    if isinstance(model, Backbone):
        if input_size is None:
            raise SelfSupError("give input_size (the side of the images the backbone sees) with a bare backbone")
        return model, normalize, input_size
    raise SelfSupError(f"expected a selfsup Method or Backbone, got {type(model).__name__}")


def _config(input_size: int, **eval_keys):
    cfg = load_config()
    cfg.model.input_size = input_size
    cfg.eval = dataclasses.replace(EvalConfig(), **eval_keys)
    return cfg


def knn(model, train: ImageArray, test: ImageArray, k: int = 200, temperature: float = 0.1,
        input_size: int | None = None, device: str | torch.device | None = None, batch_size: int = 512) -> float:
    """Weighted kNN top-1 (percent) of `model`'s frozen features: `test` classified by its k nearest `train` images.

    Args:
        model: a Method (its backbone, input transform and input size are used) or a Backbone (give input_size).
        train, test: labelled ImageArrays (e.g. selfsup.load_source("digits", "train")).
        k, temperature: neighbours and the temperature of their exp(similarity / T) votes.
        device: where features are computed (default: the model's).

    Example:
        >>> selfsup.knn(method, selfsup.load_source("digits", "train"), selfsup.load_source("digits", "test"), k=20)
    """
    backbone, transform, size = _parts(model, input_size)
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    cfg = _config(size, knn_k=k, knn_t=temperature, batch_size=batch_size)
    return run_knn(backbone, cfg, device, (train, test), transform)


def linear_probe(model, train: ImageArray, test: ImageArray, layers: list[str] | None = None,
                 input_size: int | None = None, device: str | torch.device | None = None, probe_dims: int = 9600,
                 epochs: int | None = None, lr: float = 1e-3, weight_decay: float = 5e-4, batch_size: int | None = None,
                 seed: int = 0, protocol: str = "fast", val_fraction: float | None = 0.1) -> dict:
    """Top-1 (percent) of a linear classifier on `model`'s frozen features, by one of three protocols.

    Args:
        model: a Method (its backbone, input transform and input size) or a Backbone (give input_size).
        train, test: labelled ImageArrays; the test split is read once, for the final number.
        protocol: fast (each tap average-pooled to about probe_dims numbers over features cached once,
            standardised, AdamW at lr / weight_decay with a cosine schedule, `epochs` default 30; nothing selected) |
            linear-probes (the seeds' protocol on every tap: selfsup.eval.classifier) | simclr (SimCLR's linear
            evaluation on the pooled representation). The last two train through the backbone on crops and flips
            with their authors' settings (`epochs`, `batch_size` replace theirs) and keep the epoch that did best on
            a held-out val_fraction of `train` (None: the last epoch, every image trains).

    Returns:
        fast: {layer: top-1}; linear-probes and simclr: the dict of selfsup.eval.classifier.train_classifier.

    Example:
        >>> selfsup.linear_probe(method, train, test, protocol="simclr", epochs=10)["top1"]
    """
    backbone, transform, size = _parts(model, input_size)
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    if protocol == "fast":
        cfg = _config(size, probe_dims=probe_dims, probe_epochs=30 if epochs is None else epochs, probe_lr=lr,
                      probe_weight_decay=weight_decay, probe_batch_size=256 if batch_size is None else batch_size)
        cfg.seed = seed
        return linear_probes(tap_features(backbone, cfg, device, layers, (train, test), transform), cfg, device)
    if protocol not in LINEAR_PROTOCOLS:
        raise SelfSupError(f"unknown linear protocol {protocol!r}; use one of {', '.join(LINEAR_PROTOCOLS)}")
    return train_classifier(backbone, protocol_for(protocol, size), train, test, size, device, layers, transform,
                            val_fraction, seed, epochs, batch_size)


def finetune(model, train: ImageArray, test: ImageArray, labels: str = "10%", input_size: int | None = None,
             device: str | torch.device | None = None, epochs: int | None = None, batch_size: int | None = None,
             seed: int = 0, val_fraction: float | None = 0.1) -> dict:
    """Top-1 (percent) of `model`'s backbone fine-tuned whole, with a linear layer, on a share of the labels (SimCLR's
    semi-supervised protocol; the model itself is not changed).

    Args:
        labels: 1%, 10%, 100% or N-per-class: a class-balanced subset of `train` drawn under `seed` after the
            held-out val_fraction (which selects the epoch) is set aside.
        epochs, batch_size: instead of the protocol's (60 epochs for 1% of the labels, else 30; batch 512).

    Example:
        >>> selfsup.finetune(method, train, test, labels="1%")["top1"]["representation"]
    """
    backbone, transform, size = _parts(model, input_size)
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    parse_labels(labels)  # a bad spec fails before any work
    if train.labels is None:
        raise SelfSupError(f"{train.name} has no labels to fine-tune on")
    rows, val_rows = finetune_rows(train.labels, labels, val_fraction, seed)
    result = train_classifier(backbone, protocol_for("finetune", size, labels), train, test, size, device, None,
                              transform, None, seed, epochs, batch_size, rows=rows, val_rows=val_rows)
    return {"labels": labels, **result}


def _rounded(out: dict) -> dict:
    """A classifier protocol's result with its accuracies to two decimals."""
    return {k: ({n: round(a, 2) for n, a in v.items()} if k in ("top1", "val_top1") else v) for k, v in out.items()}


def _probe_history(run: Path, model_name: str, accs: dict[str, float],
                   linear_protocol: str = "fast") -> dict[str, dict[str, float]]:
    """This probe result beside the run's earlier ones by the same protocol on the same layers (so the report shows
    both models)."""
    results: dict[str, dict[str, float]] = {}
    from selfsup.engine.checkpoint import EVAL_LOG, read_jsonl

    for entry in read_jsonl(run / EVAL_LOG):  # a damaged line is skipped (with a warning), never fatal
        if entry.get("protocol") != "linear" or entry.get("linear_protocol", "fast") != linear_protocol:
            continue
        top1 = entry.get("linear_top1") or entry.get("top1") or {}
        if list(top1) == list(accs):
            results[entry.get("model", "pretrained")] = top1
    results[model_name] = accs
    return results


def evaluate_run(run: str | Path, protocol: str = "knn", overrides: list[str] | None = None,
                 layers: list[str] | None = None, device: str = "auto", random_init: bool = False, size: int = 64,
                 classifier: str = "probe", head: str = "mlp", epochs: int | None = None,
                 linear_protocol: str = "fast", labels: str = "10%", batch_size: int | None = None) -> dict:
    """Evaluate a run's backbone with one protocol; the result is appended to RUN/eval.jsonl and returned.

    Args:
        run: a pretraining run directory.
        protocol: knn | linear (`linear_protocol` fast, linear-probes or simclr; fast and linear-probes probe every
            tap, or `layers`, and write report.md and probes.png) | finetune (the whole backbone on `labels`: 1%,
            10%, 100% or N-per-class) | nonlinear (RotNet's classifiers, `head` mlp or conv, `epochs`) | quadrant
            (Exemplar-CNN's, at `size` px, `classifier`).
        overrides: key=value overrides of the run's config (e.g. eval.knn_k=20, eval.source=digits: evaluation, and
            fine-tuning, on another labelled source).
        epochs, batch_size: instead of the protocol's own (linear-probes, simclr, finetune; epochs also nonlinear).
        random_init: the run's architecture at its initialisation instead (a baseline).

    Protocols that select anything (linear-probes, simclr, finetune: the epoch) select on eval.val_fraction of the
    training split held out; the test split is read once, for the final number.
    """
    from selfsup.distributed import pick_device
    from selfsup.engine import load_run
    from selfsup.report import write_probe_report

    if protocol not in PROTOCOLS:
        raise SelfSupError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if linear_protocol not in LINEAR_PROTOCOLS:
        raise SelfSupError(f"unknown linear protocol {linear_protocol!r}; use one of {', '.join(LINEAR_PROTOCOLS)}")
    if protocol == "finetune":
        parse_labels(labels)  # a bad --labels fails before the run is loaded
    run = Path(run)
    dev = pick_device(device)
    method = load_run(run, dev, random_init=random_init)
    cfg = apply_overrides(method.run_config, overrides or [])
    backbone, transform = method.eval_backbone, method.input_transform
    model_name = "random init" if random_init else "pretrained"
    splits = eval_splits(cfg)
    if protocol == "knn":
        top1 = run_knn(backbone, cfg, dev, splits, transform)
        result = {"model": model_name, "knn_top1": round(top1, 2), "k": cfg.eval.knn_k, "t": cfg.eval.knn_t}
    elif protocol == "quadrant":
        from selfsup.data.sources import stl10_folds
        from selfsup.eval.quadrant import run_quadrant

        source = cfg.eval.source or cfg.data.source
        # STL-10's protocol: one classifier per predefined 1,000-image training fold.
        stl10 = source == "stl10" and cfg.eval.train_split == "train"
        folds = stl10_folds(cfg.eval.root or cfg.data.root) if stl10 else None
        result = {"model": model_name, **run_quadrant(backbone, *splits, dev, size, classifier, folds,
                                                      probe_epochs=cfg.eval.probe_epochs, seed=cfg.seed,
                                                      transform=transform)}
    elif protocol == "nonlinear":
        from selfsup.eval.nonlinear import HEADS, train_heads

        if layers is None:  # every tap; the conv classifier needs maps, so every spatial one
            shapes = backbone.tap_shapes(cfg.model.input_size)
            layers = [n for n, shape in shapes.items() if head == "mlp" or len(shape) == 3]
        train, test = splits
        accs = train_heads(backbone, layers, head, train.images, train.labels, test.images, test.labels,
                           cfg.model.input_size, dev, epochs, cfg.seed, transform=transform,
                           budget_gb=cfg.data.device_budget_gb)
        result = {"model": model_name, "head": head, "epochs": epochs or HEADS[head]["epochs"],
                  "top1": {k: round(v, 2) for k, v in accs.items()}}
    elif protocol == "finetune":
        rows, val_rows = finetune_rows(splits[0].labels, labels, cfg.eval.val_fraction, cfg.seed)
        out = train_classifier(backbone, protocol_for("finetune", cfg.model.input_size, labels), *splits,
                               cfg.model.input_size, dev, None, transform, None, cfg.seed, epochs, batch_size,
                               cfg.data.device_budget_gb, rows=rows, val_rows=val_rows)
        result = {"model": model_name, "labels": labels, **_rounded(out)}
    elif linear_protocol != "fast":
        out = train_classifier(backbone, protocol_for(linear_protocol, cfg.model.input_size), *splits,
                               cfg.model.input_size, dev, layers, transform, cfg.eval.val_fraction, cfg.seed, epochs,
                               batch_size, cfg.data.device_budget_gb)
        result = {"model": model_name, "linear_protocol": linear_protocol, **_rounded(out)}
        accs = result["top1"]
    else:
        if epochs is not None:  # --epochs and --batch-size of the fast protocol are its eval section's
            cfg.eval.probe_epochs = epochs
        if batch_size is not None:
            cfg.eval.probe_batch_size = batch_size
        torch.manual_seed(cfg.seed)
        accs = linear_probes(tap_features(backbone, cfg, dev, layers, splits, transform), cfg, dev)
        result = {"model": model_name, "linear_protocol": "fast",
                  "linear_top1": {k: round(v, 2) for k, v in accs.items()}}
    # Logged first, with the epoch of the checkpoint it measured (eval may run beside training): a report that
    # cannot be written afterwards costs a warning, never the result.
    _log_result(run, {"protocol": protocol, "epoch": None if random_init else method.run_epoch, **result})
    log_eval_result(run, cfg, linear_protocol if protocol == "linear" and linear_protocol != "fast" else protocol,
                    result, method.run_epoch, random_init)
    if protocol == "linear" and linear_protocol != "simclr":  # a per-layer picture for the per-layer protocols
        try:
            write_probe_report(run, _probe_history(run, model_name, accs, linear_protocol),
                               title=f"Linear probes ({linear_protocol}): {run.name}",
                               note=f"eval source {cfg.eval.source or cfg.data.source}")
        except OSError as e:
            warn(f"cannot write the probe report in {run} ({e.strerror or e}); the result is in {run / 'eval.jsonl'}")
    return result


def _log_result(run: Path, entry: dict) -> None:
    """Append a computed result to RUN/eval.jsonl; a file that cannot be written costs a warning, not the result."""
    from selfsup.engine.checkpoint import EVAL_LOG, append_jsonl

    try:
        append_jsonl(run / EVAL_LOG, entry)
    except OSError as e:
        warn(f"cannot append to {run / EVAL_LOG} ({e.strerror or e}); the result is only printed")


def export_labels(run: str | Path, output: str | Path = "labels.csv", device: str = "auto",
                  force: bool = False) -> dict:
    """Write a sela/deepcluster run's labels as CSV (index, label_t and confidence_t per head, true_label when known)
    and a grid of each large cluster's images nearest its centre; returns a summary with clustering metrics against
    the true labels when the data has them."""
    import csv

    from selfsup.distributed import pick_device
    from selfsup.engine import load_run, run_images
    from selfsup.eval.cluster import cluster_metrics
    from selfsup.methods.pseudo_labels import PseudoLabelMethod
    from selfsup.report import cluster_grid

    dev = pick_device(device)
    method = load_run(run, dev)
    if not isinstance(method, PseudoLabelMethod):
        raise SelfSupError(f"{run} is a {method.run_config.method} run, which makes no labels; use a sela or "
                           "deepcluster run")
    out = Path(output)
    if out.exists() and not force:
        raise SelfSupError(f"{out} already exists; pass --force to overwrite it")
    data = run_images(method.run_config)  # the images the run trained on (synthesised ones are made again, seeded)
    images = placed(data.images, dev, method.run_config.data.device_budget_gb)  # streamed when over the budget
    labels = method.labels.view(-1, len(data)).cpu()  # (heads, N)
    conf, features = _confidence_and_features(method, images, labels)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        heads = range(labels.shape[0])
        writer.writerow(["index", *[c for t in heads for c in (f"label_{t}", f"confidence_{t}")]]
                        + (["true_label"] if data.labels is not None else []))
        for i in range(len(data)):
            row = [i, *[v for t in heads for v in (int(labels[t, i]), f"{float(conf[i, t]):.4f}")]]
            writer.writerow(row + ([int(data.labels[i])] if data.labels is not None else []))
    tmp.replace(out)
    grid = cluster_grid(np.asarray(data.images), features, labels[0], out.with_name(out.stem + "_clusters.png"))
    result = {"labels": str(out), "cluster_grid": str(grid), "samples": len(data), "heads": labels.shape[0]}
    if data.labels is not None:
        result["head_0"] = {k: round(v, 4) for k, v in cluster_metrics(labels[0].numpy(), data.labels).items()}
    return result


@torch.no_grad()
def _confidence_and_features(method, images, labels: torch.Tensor, chunk: int = 1024
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the model's probability of its label under each head (N, heads), and its features (N, D) in fp16
    for the cluster picture; a chunk at a time, so neither the (N, heads, K) probabilities nor the images are ever
    held whole (SeLa's ImageNet heads: 10 x 3,000 per image)."""
    import torch.nn.functional as F

    from selfsup.augmentation import to_input
    from selfsup.data.stream import chunks, host_buffer
    from selfsup.nets import eval_mode
    from selfsup.progress import Progress

    n = len(images)
    conf = torch.empty((n, labels.shape[0]))
    features = None
    with eval_mode(method), Progress(-(-n // chunk), f"labels' confidence over {n:,} images", unit="img",
                                     per_step=chunk) as bar:
        for start, x in zip(range(0, n, chunk), chunks(images, 0, n, chunk)):
            f = method.backbone(to_input(x, method.data.input_size, method.input_transform))
            probs = F.softmax(method.heads(f).view(len(x), method.num_heads, method.num_classes).float(), dim=-1)
            mine = labels[:, start:start + len(x)].T.to(probs.device)  # (B, heads)
            conf[start:start + len(x)] = probs.gather(2, mine.clamp_min(0)[:, :, None]).squeeze(2).cpu()
            if features is None:
                features = host_buffer((n, f.shape[1]), torch.float16)
            features[start:start + len(x)] = f.float().cpu().half()
            bar.update()
    return conf, features


__all__ = ["knn", "linear_probe", "finetune", "evaluate_run", "export_labels", "PROTOCOLS", "LINEAR_PROTOCOLS"]

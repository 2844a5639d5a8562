"""`selfsup` command line: pretrain, eval knn|linear|nonlinear|quadrant, labels, transfer, export, study, bench, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selfsup.errors import SelfSupError


def _pretrain(args) -> None:
    from selfsup.config import load_config
    from selfsup.train import pretrain

    out = Path(args.out) if args.out else None
    if args.recipe and "=" in args.recipe and not Path(args.recipe).is_file():
        args.overrides, args.recipe = [args.recipe, *args.overrides], None  # `--resume --out R key=value`
    if args.resume:
        if out is None:
            raise SelfSupError("--resume needs --out RUN_DIR (the run to continue)")
        saved = out / "config.yaml"
        if not saved.is_file():
            raise SelfSupError(f"cannot resume: {saved} does not exist")
        cfg = load_config(saved, args.overrides)
    else:
        if args.recipe is None:
            raise SelfSupError("give a recipe, e.g. selfsup pretrain recipes/simclr_cifar10.yaml")
        cfg = load_config(args.recipe, args.overrides)
        if out is None:
            out = Path("runs") / Path(args.recipe).stem
    if args.download:
        cfg.data.download = True
    if args.imbalance:
        cfg.data.imbalance = args.imbalance
    metrics = pretrain(cfg, out, resume=args.resume, force=args.force)
    print(json.dumps({"run": str(out), **metrics}))


def _eval(args) -> None:
    import torch

    from selfsup.config import apply_overrides
    from selfsup.distributed import pick_device
    from selfsup.eval import eval_splits, run_knn, run_linear
    from selfsup.report import write_probe_report
    from selfsup.train import load_backbone

    device = pick_device(args.device)
    method, cfg = load_backbone(args.run, device, random_init=args.random_init)
    apply_overrides(cfg, args.overrides)
    model_name = "random init" if args.random_init else "pretrained"
    splits = eval_splits(cfg)
    layers = None if args.layers == "all" else [s.strip() for s in args.layers.split(",")]
    if args.protocol == "knn":
        top1 = run_knn(method.backbone, cfg, device, splits)
        result = {"model": model_name, "knn_top1": round(top1, 2), "k": cfg.eval.knn_k, "t": cfg.eval.knn_t}
    elif args.protocol == "quadrant":
        from selfsup.data.sources import stl10_folds
        from selfsup.eval.quadrant import run_quadrant

        source = cfg.eval.source or cfg.data.source
        # STL-10's protocol: one classifier per predefined 1,000-image training fold.
        folds = stl10_folds(cfg.eval.root or cfg.data.root) if source == "stl10" and cfg.eval.train_split == "train" else None
        result = {"model": model_name, **run_quadrant(method.backbone, *splits, device, args.size, args.classifier, folds,
                                                      probe_epochs=cfg.eval.probe_epochs, seed=cfg.seed)}
    elif args.protocol == "nonlinear":
        from selfsup.eval.nonlinear import HEADS, train_heads

        if layers is None:  # every tap; the conv classifier needs maps, so every spatial one
            shapes = method.backbone.tap_shapes(cfg.model.input_size)
            layers = [n for n, shape in shapes.items() if args.head == "mlp" or len(shape) == 3]
        train, test = splits
        accs = train_heads(method.backbone, layers, args.head, train.images, train.labels, test.images, test.labels,
                           cfg.model.input_size, device, args.epochs, cfg.seed)
        result = {"model": model_name, "head": args.head, "epochs": args.epochs or HEADS[args.head]["epochs"],
                  "top1": {k: round(v, 2) for k, v in accs.items()}}
    else:
        torch.manual_seed(cfg.seed)
        accs = run_linear(method.backbone, cfg, device, layers, splits)
        result = {"model": model_name, "linear_top1": {k: round(v, 2) for k, v in accs.items()}}
        write_probe_report(Path(args.run), _probe_history(Path(args.run), model_name, accs),
                           title=f"Linear probes: {Path(args.run).name}", note=f"eval source {cfg.eval.source or cfg.data.source}")
    with open(Path(args.run) / "eval.jsonl", "a") as f:
        f.write(json.dumps({"protocol": args.protocol, **result}) + "\n")
    print(json.dumps(result))


def _probe_history(run: Path, model_name: str, accs: dict[str, float]) -> dict[str, dict[str, float]]:
    """This probe result beside the run's earlier ones on the same layers (so the report shows both models)."""
    results: dict[str, dict[str, float]] = {}
    log = run / "eval.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("protocol") == "linear" and list(entry["linear_top1"]) == list(accs):
                results[entry.get("model", "pretrained")] = entry["linear_top1"]
    results[model_name] = accs
    return results


def _labels(args) -> None:
    import csv

    import numpy as np
    import torch
    import torch.nn.functional as F

    from selfsup.distributed import pick_device
    from selfsup.eval.cluster import cluster_metrics
    from selfsup.methods.base import dataset_pass
    from selfsup.report import cluster_grid
    from selfsup.train import load_backbone, training_data

    device = pick_device(args.device)
    method, cfg = load_backbone(args.run, device)
    if not hasattr(method, "labels"):
        raise SelfSupError(f"{args.run} is a {cfg.method} run, which makes no labels; use a sela or deepcluster run")
    out = Path(args.output)
    if out.exists() and not args.force:
        raise SelfSupError(f"{out} already exists; pass --force to overwrite it")
    data = training_data(cfg)[0]  # the same images the run trained on (synthesised ones are made again, seeded)
    images = torch.from_numpy(np.array(data.images)).to(device)
    labels = method.labels.view(-1, len(data)).cpu()  # (heads, N)
    probs = F.softmax(dataset_pass(method.logits, images, cfg.model.input_size), dim=-1).cpu()  # (N, heads, K)
    features = dataset_pass(method.backbone, images, cfg.model.input_size).cpu()
    conf = probs.gather(2, labels.T[:, :, None]).squeeze(2)  # the model's probability of each sample's label
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
    print(json.dumps(result))


def _transfer(args) -> None:
    from selfsup.config import apply_overrides, load_config
    from selfsup.train import load_checkpoint, pretrain

    source = Path(args.source)
    cfg = load_config(overrides=load_checkpoint(source)["config"])
    cfg.method, cfg.data.labels_file, cfg.model.backbone = "supervised", str(args.labels), args.arch
    apply_overrides(cfg, args.overrides)
    out = Path(args.out) if args.out else source.parent / f"{source.name}-transfer-{args.arch}"
    metrics = pretrain(cfg, out, force=args.force)
    print(json.dumps({"run": str(out), **metrics}))


def _export(args) -> None:
    from safetensors.torch import save_file

    from selfsup.nets import ResNet
    from selfsup.train import load_backbone

    method, _ = load_backbone(args.run)
    backbone = method.backbone
    state = backbone.torchvision_state_dict() if isinstance(backbone, ResNet) else backbone.state_dict()
    out = Path(args.output) if args.output else Path(args.run) / "backbone.safetensors"
    if out.exists() and not args.force:
        raise SelfSupError(f"{out} already exists; pass --force to overwrite it")
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(out)
    print(json.dumps({"exported": str(out), "tensors": len(state)}))


def _demo(args) -> None:
    from selfsup.demo import run_demo

    run_demo(Path(args.out), force=args.force, epochs=args.epochs)


def _study(args) -> None:
    from selfsup.study import load_study, run_study

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    study = load_study(args.study, split(args.methods), split(args.sources))
    out = Path(args.out) if args.out else Path("runs") / Path(args.study).stem
    flags = [f"--{k} {v}" for k, v in (("methods", args.methods), ("sources", args.sources), ("out", args.out)) if v]
    command = " ".join(["selfsup study single-image", args.study, *flags])
    results = run_study(study, out, force=args.force, device=args.device, command=command)
    print(json.dumps({name: {"linear": r["linear"], "knn": r["knn"]} for name, r in results.items()}))
    print(f"report: {out / 'report.md'}")


def _bench(args) -> None:
    from selfsup.bench import bench
    from selfsup.methods import METHODS

    methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    overrides = {}
    for pair in args.overrides:
        key, _, value = pair.partition("=")
        overrides[key] = value
    md, results = bench(methods, args.device, args.out, args.tiny, set(filter(None, args.skip.split(","))), overrides,
                        args.force, command="selfsup bench " + " ".join(sys.argv[2:]), compiled=args.compile)
    failed = sum("error" in r["result"] for r in results)
    print(f"report: {md}" + (f" ({failed} item(s) failed; see the report)" if failed else ""))
    if failed:
        raise SelfSupError(f"{failed} of {len(results)} bench items failed; {md} lists them")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description="Self-supervised visual representation learning.")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser("pretrain", help="pretrain a method from a YAML recipe")
    pt.add_argument("recipe", nargs="?", help="recipe YAML (not needed with --resume)")
    pt.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=50 optim.lr=0.3")
    pt.add_argument("--out", "-o", help="run directory (default runs/<recipe name>)")
    pt.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    pt.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    pt.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    pt.add_argument("--imbalance", choices=["light", "heavy"], help="train on an imbalanced subset of a labelled source "
                    "(class c keeps 100%% falling linearly to 50%% or 10%% for the last class); evaluation stays balanced")
    pt.set_defaults(func=_pretrain)

    ev = sub.add_parser("eval", help="evaluate a run's frozen backbone")
    ev.add_argument("protocol", choices=["knn", "linear", "nonlinear", "quadrant"],
                    help="nonlinear: RotNet's classifiers on frozen layers (--head mlp or conv); "
                         "quadrant: Exemplar-CNN's protocol (conv maps max-pooled over 4 quadrants, a linear classifier)")
    ev.add_argument("run", help="run directory")
    ev.add_argument("overrides", nargs="*", help="key=value overrides of the eval section, e.g. eval.knn_k=20")
    ev.add_argument("--layers", default="all", help="taps to probe: all, or a comma list such as conv1,conv2")
    ev.add_argument("--size", type=int, default=64, help="quadrant: image size the net sees (the paper upsamples CIFAR to 64)")
    ev.add_argument("--classifier", choices=["probe", "svm"], default="probe",
                    help="quadrant: the linear probe (default, minutes on CPU) or the paper's linear SVM (slow on CPU for 50k images)")
    ev.add_argument("--head", choices=["mlp", "conv"], default="mlp",
                    help="nonlinear: 3 fully connected layers (mlp) or a NIN conv block (conv), as in RotNet's paper")
    ev.add_argument("--epochs", type=int, help="nonlinear: training epochs (default the paper's: 50 mlp, 100 conv)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--random-init", action="store_true", help="evaluate the run's architecture at its initialisation (a baseline)")
    ev.set_defaults(func=_eval)

    lb = sub.add_parser("labels", help="write a sela/deepcluster run's self-labels (per head, with confidence) as CSV")
    lb.add_argument("run")
    lb.add_argument("--output", "-o", default="labels.csv")
    lb.add_argument("--force", action="store_true")
    lb.add_argument("--device", default="auto")
    lb.set_defaults(func=_labels)

    tr = sub.add_parser("transfer", help="train a fresh network of another architecture on exported self-labels alone")
    tr.add_argument("labels", help="CSV written by `selfsup labels`")
    tr.add_argument("--arch", required=True, help="backbone of the new network, e.g. resnet18 or alexnet_small")
    tr.add_argument("--from", dest="source", required=True, help="the run that made the labels (its data, augmentation, schedule are reused)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=20")
    tr.add_argument("--out", "-o")
    tr.add_argument("--force", action="store_true")
    tr.set_defaults(func=_transfer)

    ex = sub.add_parser("export", help="write the backbone as a safetensors state_dict (torchvision key names for ResNets)")
    ex.add_argument("run")
    ex.add_argument("--output", "-o")
    ex.add_argument("--force", action="store_true")
    ex.set_defaults(func=_export)

    st = sub.add_parser("study", help="run a grid of pretraining runs and probe every layer of each")
    st.add_argument("kind", choices=["single-image"], help="single-image: method x training source (1 image, N, all)")
    st.add_argument("study", help="study YAML (methods, sources, baselines, base, overrides), e.g. recipes/single_image_cpu.yaml")
    st.add_argument("--methods", help="comma list replacing the file's methods, e.g. rotnet,bigan")
    st.add_argument("--sources", help="comma list replacing the file's sources, e.g. all,1,image:skimage/coffee")
    st.add_argument("--out", "-o", help="study directory (default runs/<study name>); finished cells in it are reused")
    st.add_argument("--force", action="store_true", help="redo every cell, overwriting earlier runs")
    st.add_argument("--device", default="auto")
    st.set_defaults(func=_study)

    be = sub.add_parser("bench", help="speed and memory on this device: every method against the compute floor and the "
                        "per-sample DataLoader, Sinkhorn against POT and the bandwidth bound, kNN and probes")
    be.add_argument("overrides", nargs="*", help="setting=value, e.g. steps=20 batch_size=128 backbone=resnet18 root=DIR")
    be.add_argument("--methods", default="all", help="comma list of methods, or all")
    be.add_argument("--device", default="auto")
    be.add_argument("--out", "-o", default="benchmarks/results", help="folder for <device>-<date>.md and .json")
    be.add_argument("--skip", default="", help="comma list of parts to leave out: dataloader, sinkhorn, pot, knn")
    be.add_argument("--tiny", action="store_true", help="seconds-long sizes on digits (a smoke test of the harness)")
    be.add_argument("--compile", action="store_true", help="also time each method with its backbone through torch.compile")
    be.add_argument("--force", action="store_true", help="replace today's results file for this device")
    be.set_defaults(func=_bench)

    de = sub.add_parser("demo", help="offline CPU demo: the single-image study in miniature (RotNet, SimCLR; one photograph "
                        "vs all of digits; probes on every layer)")
    de.add_argument("--out", "-o", default="runs/demo", help="demo directory; finished cells in it are reused")
    de.add_argument("--force", action="store_true", help="redo every cell of an existing demo")
    de.add_argument("--epochs", type=int, default=4, help="pretraining epochs of 6,400 images per cell")
    de.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow the options too (argparse stops collecting positionals at the first option).
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except SelfSupError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfsup: interrupted; the last finished epoch's checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`selfsup` command line: pretrain, eval knn|linear|finetune|nonlinear|quadrant, labels, transfer, export, config,
study, plot, bench, demo. Each handler is a few lines over the library."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import warnings
from pathlib import Path

from selfsup.errors import SelfSupError, SelfSupWarning

_python_showwarning = warnings.showwarning


def _pretrain(args) -> None:
    from selfsup.config import apply_overrides, load_config
    from selfsup.engine import pretrain, resume_config

    out = Path(args.out) if args.out else None
    if args.recipe and "=" in args.recipe and not Path(args.recipe).is_file():
        args.overrides, args.recipe = [args.recipe, *args.overrides], None  # `--resume --out R key=value`
    if args.resume:
        if out is None:
            raise SelfSupError("--resume needs --out RUN_DIR (the run to continue)")
        cfg = apply_overrides(resume_config(out), args.overrides)
    else:
        if args.recipe is None and not args.overrides:
            raise SelfSupError("give a recipe, e.g. selfsup pretrain recipes/simclr_cifar10.yaml "
                               "(or key=value settings)")
        cfg = load_config(args.recipe, args.overrides)
        if out is None:
            out = Path("runs") / (Path(args.recipe).stem if args.recipe else cfg.method)
    if args.download:
        cfg.data.download = True
    if args.imbalance:
        cfg.data.imbalance = args.imbalance
    metrics = pretrain(cfg, out, resume=args.resume, force=args.force)
    print(json.dumps({"run": str(out), **metrics}))


def _layers(text: str) -> list[str] | None:
    return None if text == "all" else [s.strip() for s in text.split(",") if s.strip()]


def _eval(args) -> None:
    from selfsup.eval.protocols import evaluate_run

    if args.labels is not None and args.protocol != "finetune":
        raise SelfSupError("--labels is for selfsup eval finetune")
    if args.linear_protocol is not None and args.protocol != "linear":
        raise SelfSupError("--protocol is for selfsup eval linear (fast, linear-probes or simclr)")
    trains = {"linear", "finetune", "nonlinear"}  # the protocols that train something for a number of epochs
    if args.epochs is not None and args.protocol not in trains:
        raise SelfSupError(f"--epochs is for eval linear, finetune and nonlinear, not {args.protocol}")
    if args.batch_size is not None and args.protocol not in trains - {"nonlinear"}:
        raise SelfSupError(f"--batch-size is for eval linear and finetune, not {args.protocol} (nonlinear trains at "
                           "the paper's 128)")
    pooled = args.protocol in ("finetune", "knn") or args.linear_protocol == "simclr"
    if args.layers != "all" and pooled:
        raise SelfSupError(f"--layers is for the per-layer protocols; {args.linear_protocol or args.protocol} uses the "
                           "pooled representation")
    print(json.dumps(evaluate_run(args.run, args.protocol, args.overrides, _layers(args.layers), args.device,
                                  args.random_init, size=args.size, classifier=args.classifier, head=args.head,
                                  epochs=args.epochs, linear_protocol=args.linear_protocol or "fast",
                                  labels=args.labels or "10%", batch_size=args.batch_size)))


def _labels(args) -> None:
    from selfsup.eval.protocols import export_labels

    print(json.dumps(export_labels(args.run, args.output, args.device, args.force)))


def _transfer(args) -> None:
    from selfsup.methods.supervised import transfer

    print(json.dumps(transfer(args.labels, args.arch, args.source, args.overrides, args.out, args.force)))


def _export(args) -> None:
    from selfsup.export import export_backbone

    print(json.dumps(export_backbone(args.run, args.output, args.format, args.force)))


def _config(args) -> None:
    from selfsup.config import import_modules, keys_table, resolved_yaml

    if args.action == "show":
        print(resolved_yaml(args.target, args.overrides), end="")
        return
    if args.overrides:
        raise SelfSupError(f"config keys takes at most a method name, got {' '.join(args.overrides)}")
    import_modules([m.strip() for m in (args.imports or "").split(",") if m.strip()])
    print(keys_table(args.target))


def _demo(args) -> None:
    from selfsup.demo import run_demo

    run_demo(Path(args.out), force=args.force, epochs=args.epochs)
    report = Path(args.out) / "report.md"
    print("\n".join(line for line in report.read_text().splitlines() if not line.startswith("![")).rstrip())
    print(f"\nreport with pictures: {report}")


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


def _plot(args) -> None:
    from selfsup.report import plot_runs

    out = args.output or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    print(f"plot: {plot_runs(args.runs, out)}")


def _bench(args) -> None:
    from selfsup.bench import bench
    from selfsup.methods import METHODS

    methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    overrides = dict(pair.partition("=")[::2] for pair in args.overrides)
    md, results = bench(methods, args.device, args.out, args.tiny, set(filter(None, args.skip.split(","))), overrides,
                        args.force, command="selfsup bench " + " ".join(sys.argv[2:]), compiled=args.compile)
    failed = sum("error" in r["result"] for r in results)
    print(f"report: {md}" + (f" ({failed} item(s) failed; see the report)" if failed else ""))
    if failed:
        raise SelfSupError(f"{failed} of {len(results)} bench items failed; {md} lists them")


def build_parser() -> argparse.ArgumentParser:
    from selfsup import __version__

    p = argparse.ArgumentParser(prog="selfsup", description="Self-supervised visual representation learning.")
    p.add_argument("--version", action="version", version=f"selfsup {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser("pretrain", help="pretrain a method from a YAML recipe")
    pt.add_argument("recipe", nargs="?", help="recipe YAML (not needed with --resume)")
    pt.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=50 optim.lr=0.3")
    pt.add_argument("--out", "-o", help="run directory (default runs/<recipe name>)")
    pt.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    pt.add_argument("--force", action="store_true",
                    help="replace an existing run (the old one is moved aside until the new one has a checkpoint)")
    pt.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    pt.add_argument("--imbalance", choices=["light", "heavy"],
                    help="train on an imbalanced subset of a labelled source (class c keeps 100%% falling linearly to "
                         "50%% or 10%% for the last class); evaluation stays balanced")
    pt.set_defaults(func=_pretrain)

    ev = sub.add_parser("eval", help="evaluate a run's frozen backbone")
    ev.add_argument("protocol", choices=["knn", "linear", "finetune", "nonlinear", "quadrant"],
                    help="linear: a linear classifier on frozen features (--protocol); finetune: the whole backbone "
                         "and a linear layer on a share of the labels (--labels), as SimCLR's semi-supervised table; "
                         "nonlinear: RotNet's classifiers on frozen layers (--head mlp or conv); "
                         "quadrant: Exemplar-CNN's protocol (conv maps max-pooled over 4 quadrants, a linear "
                         "classifier)")
    ev.add_argument("run", help="run directory")
    ev.add_argument("overrides", nargs="*", help="key=value overrides of the eval section, e.g. eval.knn_k=20")
    ev.add_argument("--layers", default="all", help="taps to probe: all, or a comma list such as conv1,conv2")
    ev.add_argument("--size", type=int, default=64,
                    help="quadrant: image size the net sees (the paper upsamples CIFAR to 64)")
    ev.add_argument("--classifier", choices=["probe", "svm"], default="probe",
                    help="quadrant: the linear probe (default, minutes on CPU) or the paper's linear SVM (slow on CPU "
                         "for 50k images)")
    ev.add_argument("--head", choices=["mlp", "conv"], default="mlp",
                    help="nonlinear: 3 fully connected layers (mlp) or a NIN conv block (conv), as in RotNet's paper")
    ev.add_argument("--protocol", dest="linear_protocol", choices=["fast", "linear-probes", "simclr"],
                    help="linear: fast (default; every tap average-pooled, features cached once, AdamW), "
                         "linear-probes (the seeds' per-layer protocol: max-pool to ~9,600, batch norm without "
                         "affine, SGD 0.01 x0.1 at epochs 10/20/30 of 36, crops and flips, ten-crop test) or simclr "
                         "(one linear layer on the pooled representation, Nesterov, crops and flips, 100 epochs; 90 "
                         "at ImageNet size)")
    ev.add_argument("--labels", help="finetune: the labels used, class-balanced and seeded: 1%%, 10%% (default), 100%% "
                                     "or N-per-class (e.g. 25-per-class)")
    ev.add_argument("--epochs", type=int, help="training epochs instead of the protocol's (nonlinear: 50 mlp, 100 "
                                               "conv; linear-probes 36; simclr 100 or 90; finetune 60 at 1%%, else 30)")
    ev.add_argument("--batch-size", type=int, help="linear-probes, simclr, finetune: batch instead of the protocol's "
                                                   "(192, 512, 512; the simclr and finetune rates follow batch/256)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--random-init", action="store_true",
                    help="evaluate the run's architecture at its initialisation (a baseline)")
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
    tr.add_argument("--from", dest="source", required=True,
                    help="the run that made the labels (its data, augmentation, schedule are reused)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=20")
    tr.add_argument("--out", "-o")
    tr.add_argument("--force", action="store_true")
    tr.set_defaults(func=_transfer)

    ex = sub.add_parser("export", help="write a run's backbone for use without selfsup: safetensors, or a ResNet that "
                        "loads with strict=True into torchvision's or timm's model (the output names the line that "
                        "builds it)")
    ex.add_argument("run")
    ex.add_argument("--format", choices=["safetensors", "torchvision", "timm"], default="safetensors",
                    help="safetensors (default; torchvision key names for ResNets), torchvision (.pth for "
                         "selfsup.nets.torchvision_resnet), timm (.safetensors for selfsup.nets.timm_resnet)")
    ex.add_argument("--output", "-o")
    ex.add_argument("--force", action="store_true")
    ex.set_defaults(func=_export)

    st = sub.add_parser("study", help="run a grid of pretraining runs and probe every layer of each")
    st.add_argument("kind", choices=["single-image"], help="single-image: method x training source (1 image, N, all)")
    st.add_argument("study", help="study YAML (methods, sources, baselines, base, overrides), "
                                  "e.g. recipes/single_image_cpu.yaml")
    st.add_argument("--methods", help="comma list replacing the file's methods, e.g. rotnet,bigan")
    st.add_argument("--sources", help="comma list replacing the file's sources, e.g. all,1,image:skimage/coffee")
    st.add_argument("--out", "-o", help="study directory (default runs/<study name>); finished cells in it are reused")
    st.add_argument("--force", action="store_true", help="redo every cell, overwriting earlier runs")
    st.add_argument("--device", default="auto")
    st.set_defaults(func=_study)

    be = sub.add_parser("bench", help="speed and memory on this device: every method against the compute floor and the "
                        "per-sample DataLoader, Sinkhorn against POT and the bandwidth bound, kNN and probes")
    be.add_argument("overrides", nargs="*",
                    help="setting=value, e.g. steps=20 batch_size=128 backbone=resnet18 root=DIR")
    be.add_argument("--methods", default="all", help="comma list of methods, or all")
    be.add_argument("--device", default="auto")
    be.add_argument("--out", "-o", default="benchmarks/results", help="folder for <device>-<date>.md and .json")
    be.add_argument("--skip", default="", help="comma list of parts to leave out: dataloader, sinkhorn, pot, knn")
    be.add_argument("--tiny", action="store_true", help="seconds-long sizes on digits (a smoke test of the harness)")
    be.add_argument("--compile", action="store_true",
                    help="also time each method with its backbone through torch.compile")
    be.add_argument("--force", action="store_true", help="replace today's results file for this device")
    be.set_defaults(func=_bench)

    pl = sub.add_parser("plot", help="draw loss, learning rate and kNN against epochs for one or more runs (overlaid) "
                        "into a PNG")
    pl.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    pl.add_argument("--output", "-o", help="PNG to write (default RUN/curves.png for one run, curves.png for several)")
    pl.set_defaults(func=_plot)

    cf = sub.add_parser("config",
                        help="show a recipe's resolved config, or list every config key with type and default")
    cf.add_argument("action", choices=["show", "keys"], help="show RECIPE [key=value ...] | keys [METHOD]")
    cf.add_argument("target", nargs="?",
                    help="show: the recipe; keys: a method (only its section besides the common ones)")
    cf.add_argument("overrides", nargs="*", help="show: key=value overrides, e.g. optim.lr=0.3")
    cf.add_argument("--imports", help="keys: modules whose methods to list too (comma list), as the config key imports")
    cf.set_defaults(func=_config)

    de = sub.add_parser("demo", help="offline CPU demo: the single-image study in miniature (RotNet, SimCLR; one "
                        "photograph vs all of digits; probes on every layer)")
    de.add_argument("--out", "-o", default="runs/demo", help="demo directory; finished cells in it are reused")
    de.add_argument("--force", action="store_true", help="redo every cell of an existing demo")
    de.add_argument("--epochs", type=int, default=4, help="pretraining epochs of 6,400 images per cell")
    de.set_defaults(func=_demo)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """selfsup's own warnings as one line, like its errors; others as Python prints them."""
    if issubclass(category, SelfSupWarning):
        print(f"selfsup: warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def _terminated(signum, frame) -> None:
    # SIGTERM (kill, a scheduler's time limit, docker stop, torchrun ending the other ranks) unwinds like Ctrl-C, so
    # a run cleans up as it does then: its lock freed, a run that --force replaced put back if nothing was saved.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2."""
    warnings.showwarning = _show_warning
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
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
        print("selfsup: interrupted; every checkpoint written so far is kept (continue with --resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pretrain on your own folder of images, then measure the features: the two-line workflow, from Python.

    python examples/pretrain_folder.py /data/my_images --epochs 50 --out runs/my_images

The folder holds images (JPEG, PNG, ...), in class sub-folders if you have labels, and `train/` and `test/` (or
`val/`) sub-folders if you have splits; a .tar or .tar.gz of such a folder works too. Without labelled splits the
features are measured on scikit-learn's digits instead (eval.source=digits). Images of different sizes are resized
to --size (shorter side, then a centre crop).
"""

import argparse
import json

import selfsup


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--method", default="simclr", help="any of selfsup.METHODS, e.g. simclr, byol, dino, sela")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--size", type=int, default=32, help="image size the network trains at")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--out", default="runs/my_images")
    p.add_argument("--force", action="store_true", help="replace an earlier run in --out")
    args = p.parse_args(argv)

    source = f"folder:{args.folder}"
    train = selfsup.load_source(source, "train", size=args.size)
    labelled = train.labels is not None
    try:
        test = selfsup.load_source(source, "test", size=args.size) if labelled else None
    except selfsup.SelfSupError:
        test = None  # no test/ or val/ split
    cfg = selfsup.load_config(overrides={
        "method": args.method, "epochs": args.epochs, "batch_size": min(args.batch_size, len(train)),
        "data": {"source": source, "size": args.size},
        "model": {"backbone": args.backbone, "input_size": args.size},
        "augment": {"size": args.size},
        "optim": {"warmup_epochs": min(10, args.epochs - 1) if args.epochs > 1 else 0},
        # The kNN monitor during training needs labelled train and test splits: yours, else digits.
        "eval": {"source": None if test is not None else "digits", "size": args.size, "knn_k": 20},
    })
    method = selfsup.fit(None, None, cfg, out=args.out, force=args.force)

    if test is None:
        train, test = (selfsup.load_source("digits", split, size=args.size) for split in ("train", "test"))
    result = {"run": args.out, "knn_top1": round(selfsup.knn(method, train, test, k=20), 2),
              "linear_top1": {k: round(v, 2) for k, v in selfsup.linear_probe(method, train, test, epochs=10).items()}}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

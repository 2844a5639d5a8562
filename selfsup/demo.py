"""`selfsup demo`: the single-image study (selfsup.study) in miniature, offline and sized for a 2-core CPU.

RotNet and SimCLR, each trained on one photograph that scikit-image ships and on the whole scikit-learn
digits set, beside a random-init and a supervised net; every layer of the quarter-width AlexNet is measured
on digits, as a vector (globally pooled): linear probes with all labels, kNN, and linear probes with 10 labels
per class (mean and std over 5 draws), where an untrained net is weak. Nothing is downloaded. The report is the
study's: what the tables show in a sentence, the tables, accuracy vs layer, conv1 filters and what training
changed in them, and the photograph with the images made from it.
"""

from __future__ import annotations

from pathlib import Path

from selfsup.study import Study, make_study, run_study

DEMO_IMAGE = "image:skimage/astronaut"


def demo_study(epochs: int = 4, samples_per_epoch: int = 6400) -> Study:
    """The demo grid: {rotnet, simclr} x {digits, one photograph} + random init + supervised, probed on digits."""
    return make_study({
        "methods": ["rotnet", "simclr"],
        "sources": ["all", DEMO_IMAGE],
        "baselines": ["random", "supervised"],
        "base": {
            "epochs": epochs,
            "batch_size": 128,
            "log_every": 10,
            "data": {"source": "digits", "size": 32, "samples_per_epoch": samples_per_epoch},
            "model": {"backbone": "alexnet_small", "width": 0.25, "input_size": 32},
            "augment": {"size": 32, "crop_scale": [0.6, 1.0], "jitter_p": 0.0, "grayscale_p": 0.0},
            "optim": {"name": "sgd", "lr": 0.1, "warmup_epochs": 0, "weight_decay": 5e-4},
            # Every layer as a vector (global average pooling, one number per channel), as a backbone's output is
            # used: digits are linearly separable from the raw pixels that ~2,000-dimensional pooled maps of a
            # random net keep (97.8-98.1% for every cell, random init included, in this demo's earlier version),
            # while pooled to its channels a random layer is weak. kNN with k=20 (digits have ~126 training images
            # a class) and probes that see 10 labels per class (5 draws) show what the features give with few labels.
            "eval": {"source": "digits", "size": 32, "knn_every": 0, "knn_k": 20, "probe_dims": 1, "probe_epochs": 30,
                     "probe_batch_size": 64, "few_labels": 10, "few_label_draws": 5},
        },
        "overrides": {
            # SimCLR needs its strong crops and colour distortion; supervised sees real labelled digits (1,258 a pass).
            "simclr": {"augment": {"crop_scale": [0.2, 1.0], "jitter_p": 0.8, "grayscale_p": 0.2},
                       "simclr": {"temperature": 0.2, "proj_hidden": 512, "proj_dim": 128}},
            "supervised": {"epochs": 5 * epochs},
        },
    }, where="demo")


def run_demo(out: Path, force: bool = False, epochs: int = 4, samples_per_epoch: int = 6400) -> dict[str, dict]:
    """Run (or resume) the demo grid into out; returns each cell's probe results."""
    command = "selfsup demo" + (f" --epochs {epochs}" if epochs != 4 else "")
    return run_study(demo_study(epochs, samples_per_epoch), Path(out), force=force, command=command)


__all__ = ["run_demo", "demo_study", "DEMO_IMAGE"]

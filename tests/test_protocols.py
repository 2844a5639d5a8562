"""The evaluation protocols: linear (fast, linear-probes, simclr), fine-tuning on a share of the labels, transfer to
another labelled source, and the held-out split that every selection uses instead of the test split."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import selfsup
from selfsup.cli import main
from selfsup.data import ImageArray, load_source
from selfsup.errors import SelfSupError
from selfsup.eval import eval_splits, held_out, held_out_rows
from selfsup.eval.classifier import (
    PROTOCOLS,
    _batch_bounds,
    _checks,
    _ProbeHead,
    label_rows,
    protocol_for,
    train_classifier,
)
from selfsup.nets import build_backbone

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    """600 training and 300 test digits: each protocol runs in seconds and still leaves chance (10%) far behind."""
    from selfsup.data import subset

    return subset(load_source("digits", "train"), 600), subset(load_source("digits", "test"), 300)


def _net():
    """A quarter-width AlexNet at its seed-0 initialisation whose batch-norm statistics are those of the digits (as
    after training): at their initial (0, 1) the pooled features of a random net are about 0.02 in size, too small
    for a linear layer's first hundred steps."""
    from selfsup.augmentation import to_input

    torch.manual_seed(0)
    net = build_backbone("alexnet_small", width=0.25)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        net.train()(to_input(torch.from_numpy(np.array(load_source("digits", "train").images[:512])), 16))
    return net.eval()


def test_held_out_rows_are_class_balanced_seeded_and_disjoint():
    labels = np.repeat(np.arange(4), [40, 20, 10, 1])
    labels = np.concatenate([labels, [-1, -1]])  # unlabelled rows stay on the train side
    keep, held = held_out_rows(labels, 0.1)
    assert np.intersect1d(keep, held).size == 0 and len(keep) + len(held) == len(labels)
    assert np.bincount(labels[held], minlength=4).tolist() == [4, 2, 1, 0]  # a class of one keeps its image
    assert set(np.flatnonzero(labels < 0)) <= set(keep)
    again, _ = held_out_rows(labels, 0.1)
    assert np.array_equal(keep, again)  # the same rows every time: selections made on them compare
    with pytest.raises(SelfSupError, match="val_fraction"):
        held_out_rows(labels, 1.0)


def test_heldout_split_stands_in_for_the_test_split():
    cfg = selfsup.load_config(None, ["data.source=digits", "eval.test_split=heldout", "eval.val_fraction=0.2"])
    train, val = eval_splits(cfg)
    full = load_source("digits", "train")
    # The train side is the whole split, not a copy, with the held-out rows' labels set to -1 (left out everywhere).
    held = np.flatnonzero(train.labels < 0)
    assert train.images.filename == full.images.filename and abs(len(held) / len(full) - 0.2) < 0.01  # one memmap
    assert np.array_equal(train.labels[train.labels >= 0], full.labels[full.labels >= 0][np.isin(
        np.arange(len(full)), held, invert=True)])
    assert np.array_equal(val.images, np.asarray(full.images)[held]) and np.array_equal(val.labels, full.labels[held])
    # What is held out never trains a protocol: the fast probes and kNN see only the rest.
    net = _net()
    small = selfsup.linear_probe(net, train, val, ["conv2"], input_size=16, epochs=2)
    assert 10 < small["conv2"] <= 100
    assert selfsup.knn(net, train, val, k=10, input_size=16) > 50


def test_label_shares_are_class_balanced_and_seeded():
    labels = np.repeat(np.arange(5), 200)
    one = label_rows(labels, "1%")
    assert np.bincount(labels[one]).tolist() == [2] * 5
    assert np.bincount(labels[label_rows(labels, "10%")]).tolist() == [20] * 5
    assert len(label_rows(labels, "100%")) == 1000
    assert np.bincount(labels[label_rows(labels, "7-per-class")]).tolist() == [7] * 5
    assert np.array_equal(one, label_rows(labels, "1%", seed=0))
    assert not np.array_equal(one, label_rows(labels, "1%", seed=1))
    # With a part set aside first, a share is still of each class's whole count (10% of 200 = 20), drawn from the rest.
    among = np.flatnonzero(np.arange(1000) % 10 != 0)
    ten = label_rows(labels, "10%", among=among)
    assert np.bincount(labels[ten]).tolist() == [20] * 5 and np.isin(ten, among).all()
    assert len(label_rows(labels, "100%", among=among)) == len(among)
    for bad in ("0%", "150%", "ten", "0-per-class", "5"):
        with pytest.raises(SelfSupError, match="--labels") as info:
            label_rows(labels, bad)
        assert "\n" not in str(info.value)


def test_protocol_settings_are_the_authors():
    lp = PROTOCOLS["linear-probes"]
    assert (lp.epochs, lp.batch_size, lp.lr, lp.momentum, lp.weight_decay, lp.milestones, lp.gamma, lp.ten_crop) == (
        36, 192, 0.01, 0.9, 1e-5, (10, 20, 30), 0.1, True)
    simclr = protocol_for("simclr", 32)
    assert (simclr.epochs, simclr.nesterov, simclr.weight_decay, simclr.rate(512)) == (100, True, 0.0, 0.2)
    assert protocol_for("simclr", 224).epochs == 90
    assert protocol_for("finetune", 224, "1%").epochs == 60 and protocol_for("finetune", 224, "10%").epochs == 30
    assert protocol_for("finetune", 224, "10%").rate(4096) == pytest.approx(0.8)  # SimCLR B.5: 0.05 x 4096 / 256
    # The probe head: AlexNet's conv1 at 224 px (96 x 55 x 55) max-pooled to 96 x 10 x 10 = 9,600, batch norm
    # without affine parameters.
    head = _ProbeHead((96, 55, 55), 1000)
    assert head.linear.in_features == 9600 and not head.norm.affine
    assert _ProbeHead((256, 13, 13), 1000).linear.in_features == 9216
    assert _ProbeHead((384, 13, 13), 1000).linear.in_features == 9600


def test_linear_probes_and_simclr_protocols_learn_and_leave_the_backbone_frozen(digits):
    train, test = digits
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    probes = train_classifier(net, PROTOCOLS["linear-probes"], train, test, 16, CPU, ["conv2", "conv3"], epochs=4,
                              batch_size=32, progress=False)
    assert list(probes["top1"]) == ["conv2", "conv3"] and min(probes["top1"].values()) > 50  # chance is 10%
    # Scored on the held-out tenth at the end of each learning-rate stage (10/20/30 of 36 epochs; 1/2/3 of 4).
    assert _checks(PROTOCOLS["linear-probes"], 36) == {10, 20, 30, 36}
    assert _checks(PROTOCOLS["linear-probes"], 4) == {1, 2, 3, 4}
    assert probes["val_images"] == len(held_out_rows(train.labels, 0.1)[1])
    assert all(e in _checks(PROTOCOLS["linear-probes"], 4) for e in probes["epoch"].values())
    simclr = train_classifier(net, protocol_for("simclr", 16), train, test, 16, CPU, epochs=5, batch_size=32,
                              progress=False)
    assert list(simclr["top1"]) == ["representation"] and simclr["top1"]["representation"] > 30
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # batch-norm statistics too


def test_finetuning_trains_the_backbone_of_a_copy_on_a_share_of_the_labels(digits, monkeypatch):
    train, test = digits
    net = _net().requires_grad_(False)  # frozen, as a DINO run's teacher: fine-tuning still trains every weight
    before = {k: v.clone() for k, v in net.state_dict().items()}
    kept = []
    original = torch.nn.Module.load_state_dict

    def spy(module, state, *args, **kw):  # the backbone state the selected epoch goes back to
        if any(k.startswith("stages.") for k in state):
            kept.append({k: v.clone() for k, v in state.items()})
        return original(module, state, *args, **kw)

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", spy)
    out = selfsup.finetune(net, train, test, labels="30-per-class", input_size=16, epochs=8, batch_size=16)
    assert out["train_images"] == 300 and out["labels"] == "30-per-class"
    assert out["top1"]["representation"] > 30
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's net is untouched
    assert len(kept) == 1 and not torch.equal(kept[0]["stages.conv1.0.weight"], before["stages.conv1.0.weight"])


def test_batches_leave_no_image_out_and_no_batch_of_one():
    assert _batch_bounds(10, 4) == [0, 4, 8, 10]
    assert _batch_bounds(9, 4) == [0, 4, 9]  # the ninth image joins the last batch
    assert _batch_bounds(8, 4) == [0, 4, 8] and _batch_bounds(3, 4) == [0, 3]


def _shuffled_test(test: ImageArray) -> ImageArray:
    """A test split whose images are noise and whose labels are wrong: any selection that reads it goes elsewhere."""
    rng = np.random.default_rng(1)
    labels = (test.labels + 1 + rng.integers(0, 8, len(test))) % 10
    return ImageArray("noise", rng.integers(0, 256, test.images.shape, dtype=np.uint8), labels, test.classes)


@pytest.mark.parametrize("protocol", ["linear-probes", "simclr", "finetune", "fast", "knn"])
def test_no_protocol_reads_the_test_split_before_its_final_number(digits, protocol):
    """Every choice a protocol makes (the epoch kept, the weights trained, the held-out scores) is the same whatever
    the test split holds; only the final number changes. A protocol that selected on the test split would keep
    another epoch here, or report other held-out numbers."""
    train, test = digits
    noise = _shuffled_test(test)
    runs = []
    for split in (test, noise):
        net = _net()
        torch.manual_seed(0)
        trained = {}
        if protocol == "knn":
            runs.append({"top1": selfsup.knn(net, train, split, k=10, input_size=16)})
            continue
        if protocol == "fast":
            runs.append({"top1": selfsup.linear_probe(net, train, split, ["conv2"], input_size=16, epochs=3)})
            continue
        kwargs = dict(input_size=16, epochs=3, batch_size=32)
        original = torch.nn.Module.load_state_dict

        def spy(module, state, *args, **kw):  # the weights each selected model goes back to
            trained.setdefault(type(module).__name__, []).append({k: v.clone() for k, v in state.items()})
            return original(module, state, *args, **kw)

        torch.nn.Module.load_state_dict = spy
        try:
            out = (selfsup.finetune(net, train, split, labels="30-per-class", **kwargs) if protocol == "finetune"
                   else selfsup.linear_probe(net, train, split, ["conv2", "conv3"], protocol=protocol, **kwargs))
        finally:
            torch.nn.Module.load_state_dict = original
        runs.append({**out, "weights": trained})
    real, fake = runs
    assert real["top1"] != fake["top1"]  # the final number did read the test split
    if protocol in ("knn", "fast"):
        return  # nothing selected: the test split is read only for the final number by construction
    assert real["epoch"] == fake["epoch"] and real["val_top1"] == fake["val_top1"]
    assert real["weights"].keys() == fake["weights"].keys() and real["weights"]
    for name in real["weights"]:
        for a, b in zip(real["weights"][name], fake["weights"][name]):
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert max(fake["top1"].values()) < 25  # noise with wrong labels: near chance, so it really was the other split


def _two_colour_folder(root):
    """A labelled folder source: train/ and test/ of two classes (reddish and bluish 8x8 PNGs), 12 images each."""
    from PIL import Image

    for split in ("train", "test"):
        for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(12):
                noise = np.random.default_rng(i + 100 * c).integers(-20, 20, (8, 8, 3))
                Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return f"folder:{root}"


def test_cli_runs_every_protocol_and_fine_tunes_on_another_source(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "method=rotnet", "data.source=digits", "data.num_images=256",
                 "model.backbone=alexnet_small", "model.width=0.25", "model.input_size=16", "augment.size=16",
                 "epochs=1", "batch_size=64", "eval.knn_every=0", "--out", str(run)]) == 0
    capsys.readouterr()
    # Transfer: the digits backbone evaluated, and fine-tuned, on another labelled source.
    other = f"eval.source={_two_colour_folder(tmp_path / 'other')}"
    for args in (["linear", "--protocol", "linear-probes", "--layers", "conv2", "--epochs", "2", "--batch-size", "8"],
                 ["linear", "--protocol", "simclr", "--epochs", "2", "--batch-size", "8"],
                 ["linear", "--protocol", "fast", "--layers", "conv2"],
                 ["finetune", "--labels", "50%", "--epochs", "2", "--batch-size", "8"],
                 ["finetune", "--labels", "5-per-class", "--epochs", "2", "--batch-size", "8"]):
        assert main(["eval", args[0], str(run), *args[1:], other, "eval.val_fraction=0.2"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert all(0 <= v <= 100 for v in (result.get("top1") or result.get("linear_top1")).values())
    log = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e.get("linear_protocol") for e in log] == ["linear-probes", "simclr", "fast", None, None]
    # 2 classes x 12 training images: 2 of each held out, then half of each class's 12, or 5, from the other 10.
    assert [(e.get("train_images"), e.get("val_images")) for e in log[3:]] == [(12, 4), (10, 4)]
    assert log[0]["val_images"] == 4 and log[0]["train_images"] == 20 and set(log[0]["epoch"]) == {"conv2"}
    assert (run / "report.md").exists()
    assert main(["eval", "finetune", str(run), "--labels", "half"]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["eval", "knn", str(run), "--labels", "1%"]) == 2
    assert main(["eval", "knn", str(run), "--epochs", "3"]) == 2  # a flag a protocol would ignore is an error
    assert main(["eval", "linear", str(run), "--protocol", "simclr", "--layers", "conv1"]) == 2
    assert "--layers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse's own error names the choices
        main(["eval", "linear", str(run), "--protocol", "probes"])
    assert info.value.code == 2


def test_the_probe_head_pools_maps_and_passes_flat_features():
    head = _ProbeHead((4096,), 10)
    assert head.linear.in_features == 4096
    # 32 channels would pool to 17 x 17 for 9,600 numbers, but a 12 x 12 map is kept whole (never upsampled).
    assert _ProbeHead((32, 12, 12), 10)(torch.randn(3, 32, 12, 12)).shape == (3, 10)
    assert _ProbeHead((32, 12, 12), 10).linear.in_features == 32 * 12 * 12
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 3, 3] = 5.0  # max-pooled, not averaged: one strong activation survives whole
    pooled = _ProbeHead((1, 4, 4), 10).pool
    pooled[0].output_size = 2
    assert pooled(x).flatten().tolist() == [0.0, 0.0, 0.0, 5.0]
    assert isinstance(pooled[0], nn.AdaptiveMaxPool2d)


def test_held_out_needs_labels():
    with pytest.raises(SelfSupError, match="no labels"):
        held_out(ImageArray("x", np.zeros((4, 8, 8, 3), np.uint8)), 0.1)

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data import load_source
from selfsup.data.sources import stl10_folds
from selfsup.errors import SelfSupError

rng = np.random.default_rng(0)


def _cifar10_files(root: Path, n_per_batch: int = 4) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        truth[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    return truth


def test_cifar10_python_batches(tmp_path):
    truth = _cifar10_files(tmp_path)
    train = load_source("cifar10", "train", root=str(tmp_path))
    test = load_source("cifar10", "test", root=str(tmp_path))
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    data, labels = truth["data_batch_1"]
    # Row-major CHW planes: pixel (y, x) of channel c sits at c*1024 + y*32 + x.
    assert train.images[0, 5, 7, 1] == data[0, 1024 + 5 * 32 + 7]
    # Every image and label, batches 1..5 in order: the same decoding, written out pixel by pixel.
    order = [truth[f"data_batch_{i}"] for i in range(1, 6)]
    flat = np.concatenate([d for d, _ in order])
    for k, (y, x, c) in enumerate([(0, 0, 0), (31, 31, 2), (5, 7, 1), (17, 3, 2), (30, 1, 0)]):
        np.testing.assert_array_equal(train.images[:, y, x, c], flat[:, c * 1024 + y * 32 + x])
    np.testing.assert_array_equal(train.images, flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert train.labels.tolist() == [label for _, ls in order for label in ls]
    assert test.labels.tolist() == truth["test_batch"][1]
    np.testing.assert_array_equal(test.images[:, 9, 4, 2], truth["test_batch"][0][:, 2 * 1024 + 9 * 32 + 4])
    assert train.classes == [f"class{i}" for i in range(10)]
    # Second load comes from the memory-mapped cache.
    again = load_source("cifar10", "train", root=str(tmp_path))
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(again.images), train.images)


def test_cifar100_python_files(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": [0, 5, 99, 3, 2, 1], b"coarse_labels": [0] * 6}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    arr = load_source("cifar100", "train", root=str(tmp_path))
    assert arr.images.shape == (6, 32, 32, 3) and arr.num_classes == 100
    assert arr.labels.tolist() == [0, 5, 99, 3, 2, 1]  # the fine labels, not the coarse ones
    assert arr.classes[99] == "c99"
    np.testing.assert_array_equal(arr.images[:, 20, 11, 1], data[:, 1024 + 20 * 32 + 11])


def test_stl10_binary(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    imgs = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)  # (N,H,W,C) ground truth
    # The binary stores each image channel by channel, column-major: (N, C, W, H).
    imgs.transpose(0, 3, 2, 1).tofile(folder / "train_X.bin")
    np.array([1, 10, 3], dtype=np.uint8).tofile(folder / "train_y.bin")
    imgs[:2].transpose(0, 3, 2, 1).tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(f"n{i}" for i in range(10)))
    (folder / "fold_indices.txt").write_text("0 2\n1\n")
    train = load_source("stl10", "train", root=str(tmp_path))
    np.testing.assert_array_equal(train.images, imgs)
    assert list(train.labels) == [0, 9, 2] and train.classes[9] == "n9"
    unl = load_source("stl10", "unlabeled", root=str(tmp_path))
    assert unl.labels is None and len(unl) == 2
    both = load_source("stl10", "train+unlabeled", root=str(tmp_path))
    assert len(both) == 5 and list(both.labels) == [0, 9, 2, -1, -1]
    assert [f.tolist() for f in stl10_folds(str(tmp_path))] == [[0, 2], [1]]


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)})
    arr = load_source("svhn", "test", root=str(tmp_path))
    np.testing.assert_array_equal(arr.images, x.transpose(3, 0, 1, 2))  # (H, W, C, N) in the file
    assert list(arr.labels) == [0, 1, 2, 0, 9]


def _write_images(root: Path, layout: dict[str, int], size=(10, 12)) -> None:
    for rel, count in layout.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / rel / f"{i}.png")


# Flat-colour images that carry their own truth: red codes the class folder, green the split, blue the image's number
# within its folder, so every decoded image can be checked against the label it was given.
CLASS_RED = {"bird": 30, "cat": 90, "dog": 150, "eel": 210}
SPLIT_GREEN = {"train": 40, "test": 120, "val": 120, None: 200}


def _write_coded(root: Path, layout: dict[str, int], size=(10, 12)) -> None:
    """layout: folder (split/class[/deeper], class[/deeper] or "") -> image count; each image one flat colour."""
    for rel, count in layout.items():
        parts = Path(rel).parts
        split = parts[0] if parts and parts[0] in SPLIT_GREEN else None
        rest = parts[1:] if split else parts
        red = CLASS_RED[rest[0]] if rest else 0
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            blue = 10 * i + 3 * len(parts)  # deeper folders give other numbers, so no image is counted twice
            colour = (red, SPLIT_GREEN[split], blue)
            Image.fromarray(np.full((*size, 3), colour, np.uint8)).save(root / rel / f"{i}.png")


def _check_coded(arr, layout: dict[str, int], split: str | None) -> None:
    """Every image of the split decoded once, flat, and labelled with the class whose colour it has."""
    expect = []
    for rel, count in layout.items():
        parts = Path(rel).parts
        in_split = parts[0] if parts and parts[0] in SPLIT_GREEN else None
        if {"val": "test"}.get(in_split, in_split) != split:
            continue
        rest = parts[1:] if in_split else parts
        expect += [(CLASS_RED[rest[0]] if rest else 0, SPLIT_GREEN[in_split], 10 * i + 3 * len(parts))
                   for i in range(count)]
    images = np.asarray(arr.images)
    assert (images == images[:, :1, :1]).all()  # each image one colour, as written
    got = [tuple(int(v) for v in im[0, 0]) for im in images]
    assert sorted(got) == sorted(expect)
    if arr.labels is None:
        assert all(red == 0 for red, _, _ in got)
        return
    by_red = {v: k for k, v in CLASS_RED.items()}
    assert arr.classes == sorted(arr.classes)
    assert [arr.classes[label] for label in arr.labels] == [by_red[red] for red, _, _ in got]


def _splits(spec: str, layout: dict[str, int]):
    """The train and test splits of a folder source, each image's label checked against its colour."""
    train, test = load_source(spec, "train"), load_source(spec, "test")
    _check_coded(train, layout, "train")
    _check_coded(test, layout, "test")
    return train, test


def test_folder_with_splits_and_classes(tmp_path):
    layout = {"train/cat": 3, "train/dog": 2, "train/bird": 2, "val/cat": 1, "val/dog": 2, "val/bird": 1}
    _write_coded(tmp_path / "data", layout)
    train, test = _splits(f"folder:{tmp_path / 'data'}", layout)
    assert train.images.shape == (7, 10, 12, 3) and train.classes == ["bird", "cat", "dog"]
    assert test.classes == train.classes


def test_folder_splits_share_class_numbers(tmp_path):
    """A test split without one of the classes keeps the training split's numbering (else probes score wrong)."""
    layout = {"train/bird": 2, "train/cat": 2, "train/dog": 1, "test/cat": 2, "test/dog": 1}
    _write_coded(tmp_path, layout)
    train, test = _splits(f"folder:{tmp_path}", layout)
    assert test.classes == train.classes == ["bird", "cat", "dog"]
    assert sorted(test.labels.tolist()) == [1, 1, 2]


def test_nested_folders_label_by_their_top_class_folder(tmp_path):
    """A wrapping folder is skipped; images deeper inside a class folder belong to that class."""
    layout = {"train/cat": 2, "train/cat/indoor": 2, "train/eel/a/b": 1, "train/dog": 1, "test/cat/x": 1, "test/eel": 2}
    _write_coded(tmp_path / "wrap", layout)  # the whole layout inside one wrapping folder
    train, _ = _splits(f"folder:{tmp_path}", layout)
    assert train.classes == ["cat", "dog", "eel"] and len(train) == 6
    # Without splits: class folders at the top, deeper folders inside them.
    flat = {"cat": 1, "cat/deep/er": 2, "bird": 2}
    _write_coded(tmp_path / "flat", flat)
    arr = load_source(f"folder:{tmp_path / 'flat'}", "train")
    assert arr.classes == ["bird", "cat"]
    _check_coded(arr, flat, None)


def test_folder_unlabelled_and_resize(tmp_path):
    _write_coded(tmp_path, {"": 4})
    arr = load_source(f"folder:{tmp_path}", "train", size=8)
    assert arr.images.shape == (4, 8, 8, 3) and arr.labels is None
    _check_coded(arr, {"": 4}, None)  # flat colours stay exact through the resize


def test_tarball_read_without_extracting(tmp_path):
    src = tmp_path / "src"
    layout = {"train/dog": 2, "train/bird": 3, "train/cat/sub": 1, "test/bird": 1, "test/dog": 2}
    _write_coded(src / "wrapped", layout)
    for name, mode in (("imgs.tar.gz", "w:gz"), ("imgs.tar", "w")):
        archive = tmp_path / name
        with tarfile.open(archive, mode) as tar:
            tar.add(src / "wrapped", arcname="wrapped")
        train, test = _splits(f"folder:{archive}", layout)
        assert train.images.shape == (6, 10, 12, 3) and train.classes == ["bird", "cat", "dog"]
        assert test.classes == train.classes
    assert not (tmp_path / "wrapped").exists()


def test_single_image_and_skimage_photo(tmp_path):
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "one.jpg")
    arr = load_source(f"image:{tmp_path / 'one.jpg'}")
    assert arr.images.shape == (1, 20, 30, 3) and arr.labels is None
    astro = load_source("image:skimage/astronaut")
    assert astro.images.shape == (1, 512, 512, 3) and astro.images.dtype == np.uint8


def test_digits_is_a_fixed_stratified_split():
    train, test = load_source("digits", "train"), load_source("digits", "test")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (8, 8, 3)
    assert set(np.unique(test.labels)) == set(range(10))
    assert abs(len(test) / 1797 - 0.3) < 0.01
    np.testing.assert_array_equal(load_source("digits", "test").labels, test.labels)
    assert load_source("digits", "train", size=32).images.shape == (len(train), 32, 32, 3)


# --------------------------------------------------------------------------- bad input: one clear line each

def _error(fn) -> str:
    with pytest.raises(SelfSupError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_corrupt_image_names_the_file(tmp_path):
    _write_images(tmp_path, {"a": 2})
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    msg = _error(lambda: load_source(f"folder:{tmp_path}", "train"))
    assert "broken.jpg" in msg and "cannot read image" in msg


def test_empty_folder(tmp_path):
    msg = _error(lambda: load_source(f"folder:{tmp_path}", "train"))
    assert "no images found" in msg and str(tmp_path) in msg


def test_wrong_archive(tmp_path):
    bad = tmp_path / "fake.tar.gz"
    bad.write_bytes(b"\x00" * 100)
    assert "neither a folder nor a readable" in _error(lambda: load_source(f"folder:{bad}", "train"))


def test_missing_dataset_says_download(tmp_path):
    msg = _error(lambda: load_source("cifar10", "train", root=str(tmp_path)))
    assert "--download" in msg and "cifar10" in msg


def test_missing_split_unknown_source_and_sizes(tmp_path):
    _write_images(tmp_path / "x", {"train/a": 1})
    assert "no 'test' split" in _error(lambda: load_source(f"folder:{tmp_path / 'x'}", "test"))
    assert "unknown data source" in _error(lambda: load_source("imagenet42"))
    assert "does not exist" in _error(lambda: load_source(f"folder:{tmp_path / 'nope'}"))
    _write_images(tmp_path / "mixed", {"": 1})
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "mixed" / "small.png")
    assert "data.size" in _error(lambda: load_source(f"folder:{tmp_path / 'mixed'}"))
    assert "scikit-image has no photograph" in _error(lambda: load_source("image:skimage/no_such_photo"))


@pytest.mark.shared_data
def test_shared_cifar10_jpeg_copy(shared_cifar, shared_cache, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(shared_cache))
    train = load_source(f"folder:{shared_cifar}", "train")
    test = load_source(f"folder:{shared_cifar}", "test")
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.classes[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_download_flag_fetches_missing_dataset(tmp_path, monkeypatch):
    """--download hands the official URL and checksum to torchvision's downloader, then reads what it wrote."""
    import torchvision.datasets.utils as tvu

    calls = []

    def fake_download(url, root, md5=None, **kw):
        calls.append((url, md5))
        _cifar10_files(Path(root))

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake_download)
    arr = load_source("cifar10", "test", root=str(tmp_path / "data"), download=True)
    assert len(arr) == 4
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    load_source("cifar10", "train", root=str(tmp_path / "data"), download=True)
    assert len(calls) == 1  # present now: no second download


def test_subset_keeps_a_seeded_random_count():
    from selfsup.data import subset

    digits = load_source("digits", "train")
    ten = subset(digits, 10, seed=4)
    assert len(ten) == 10 and np.array_equal(ten.images, subset(digits, 10, seed=4).images)
    assert not np.array_equal(ten.images, subset(digits, 10, seed=5).images)
    assert np.array_equal(ten.images[0],
                          digits.images[np.flatnonzero((digits.images == ten.images[0]).all((1, 2, 3)))[0]])
    with pytest.raises(SelfSupError, match="holds only"):
        subset(digits, len(digits) + 1)

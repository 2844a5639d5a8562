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
    assert list(train.labels[:4]) == labels
    assert train.classes[3] == "class3"
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
    assert arr.images.shape == (6, 32, 32, 3) and arr.labels[2] == 99 and arr.num_classes == 100


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
    np.testing.assert_array_equal(arr.images[1], x[..., 1])
    assert list(arr.labels) == [0, 1, 2, 0, 9]


def _write_images(root: Path, layout: dict[str, int], size=(10, 12)) -> None:
    for rel, count in layout.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / rel / f"{i}.png")


def test_folder_with_splits_and_classes(tmp_path):
    _write_images(tmp_path / "data", {"train/cat": 3, "train/dog": 2, "val/cat": 1, "val/dog": 2})
    train = load_source(f"folder:{tmp_path / 'data'}", "train")
    test = load_source(f"folder:{tmp_path / 'data'}", "test")
    assert train.images.shape == (5, 10, 12, 3) and train.classes == ["cat", "dog"]
    assert sorted(train.labels.tolist()) == [0, 0, 0, 1, 1]
    assert len(test) == 3 and sorted(test.labels.tolist()) == [0, 1, 1]


def test_folder_unlabelled_and_resize(tmp_path):
    _write_images(tmp_path, {"": 4})
    arr = load_source(f"folder:{tmp_path}", "train", size=8)
    assert arr.images.shape == (4, 8, 8, 3) and arr.labels is None


def test_tarball_read_without_extracting(tmp_path):
    src = tmp_path / "src"
    _write_images(src / "wrapped", {"train/a": 2, "train/b": 2, "test/a": 1, "test/b": 1})
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "wrapped", arcname="wrapped")
    train = load_source(f"folder:{archive}", "train")
    assert train.images.shape == (4, 10, 12, 3) and train.classes == ["a", "b"]
    assert len(load_source(f"folder:{archive}", "test")) == 2
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

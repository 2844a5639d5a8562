"""ImageNet-size sources and the parallel, resumable, atomic cache build, on tiny fabricated files in the real formats:
the ILSVRC-2012 layout (train, flat val labelled by Kaggle's CSV or the devkit), WebDataset tar shards, and folders
with unreadable files, killed builds, changed sources and a full disk."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import selfsup.data.build as build
import selfsup.data.files as files
from selfsup.data import load_source
from selfsup.data.cache import lookup
from selfsup.errors import SelfSupError, SelfSupWarning

rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _announce_every_build(monkeypatch):
    """The tests' builds are tiny; announce them as a real-size build is, so the announcement is checked."""
    monkeypatch.setattr(build, "ANNOUNCE_MIN", 0)
DECODE = build.decode_image
SIZES = [(40, 30), (30, 52), (64, 64), (25, 25)]


def _error(fn) -> str:
    with pytest.raises(SelfSupError) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def _code(label: int) -> int:
    """The red level that codes a class in the fabricated images (well apart, so JPEG and resizing keep it)."""
    return 12 + 12 * label


def _save(path: Path, colour, size=(40, 30), fmt: str = "JPEG") -> None:
    """A flat-colour image (colour: RGB triple) in a real on-disk format; fmt CMYK and L write those JPEG modes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, tuple(int(c) for c in colour))
    if fmt in ("CMYK", "L"):
        img.convert(fmt).save(path, "JPEG", quality=95)
    else:
        img.save(path, fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))


def _means(arr) -> np.ndarray:
    return np.asarray(arr.images).reshape(len(arr), -1, 3).mean(1)


def _check_codes(arr, skip_rows=()) -> None:
    """Every image's red level codes the class it is labelled with."""
    means = _means(arr)
    for row, label in enumerate(arr.labels):
        if row not in skip_rows:
            assert abs(means[row, 0] - _code(label)) < 4, (row, means[row], label)


# --------------------------------------------------------------------------- ImageNet

WNIDS = sorted({f"n{int(x):08d}" for x in rng.integers(1_000_000, 16_000_000, 20)})
assert len(WNIDS) == 20
CREATED = list(rng.permutation(WNIDS))  # written in another order than sorted, so the numbering is checked
INDEX = {w: i for i, w in enumerate(WNIDS)}
SPECIAL = {0: "CMYK", 1: "L", 2: "PNG", 3: "WEBP"}  # the first image of these classes (in creation order)


def _imagenet(root: Path, val_labels: int = 20) -> list[str]:
    """ImageNet's train layout (20 classes x 3 images of mixed sizes and formats) and a flat val of `val_labels`
    images; returns the wnid of each val image (ILSVRC2012_val_00000001 first)."""
    for c, wnid in enumerate(CREATED):
        for i in range(3):
            fmt = SPECIAL.get(c) if i == 0 else "JPEG"
            name = f"{wnid}_{i}.webp" if fmt == "WEBP" else f"{wnid}_{i}.JPEG"  # a PNG named .JPEG, as ImageNet has
            colour = (_code(INDEX[wnid]), 40 + 60 * i, 100)
            _save(root / "train" / wnid / name, colour, SIZES[(c + i) % 4], fmt or "JPEG")
    val = [str(w) for w in rng.choice(WNIDS, val_labels)]
    for i, wnid in enumerate(val, start=1):
        _save(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", (_code(INDEX[wnid]), 200, 50), SIZES[i % 4])
    return val


def _devkit(root: Path, val: list[str], tarball: bool) -> None:
    """The devkit's meta.mat (ILSVRC2012_IDs shuffled against the wnids, plus inner synsets) and ground truth."""
    from scipy.io import savemat

    ids = {wnid: i + 1 for i, wnid in enumerate(rng.permutation(WNIDS))}
    synsets = np.zeros((23, 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O"),
                                        ("words", "O")])
    for wnid, i in ids.items():
        synsets[i - 1, 0] = (i, wnid, 0, "a leaf")
    for j in range(20, 23):  # inner nodes of the hierarchy: never a class
        synsets[j, 0] = (j + 1, f"n9999999{j - 20}", 3, "an inner node")
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in val))
    if tarball:
        with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
            tar.add(root / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
        for path in sorted(data.parent.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        data.parent.rmdir()


def test_imagenet_train_mixed_sizes_and_formats(tmp_path):
    _imagenet(tmp_path / "in")
    train = load_source(f"imagenet:{tmp_path / 'in'}", "train", size=16, workers=1)
    assert train.images.shape == (60, 16, 16, 3) and isinstance(train.images, np.memmap)
    assert train.classes == WNIDS  # sorted wnids of train/, as torchvision numbers them
    assert train.labels.tolist() == [c for c in range(20) for _ in range(3)]  # sorted paths: wnid, then file
    grey = 3 * INDEX[CREATED[1]]  # the grayscale JPEG: one grey level in all three channels
    _check_codes(train, skip_rows={grey})
    img = np.asarray(train.images[grey]).astype(int)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert "data.cache_size" in _error(lambda: load_source(f"imagenet:{tmp_path / 'in'}", "train"))


def test_imagenet_flat_val_from_kaggle_csv(tmp_path):
    val = _imagenet(tmp_path / "in")
    rows = [f"ILSVRC2012_val_{i:08d},{w} 1 2 30 40 {w} 5 6 7 8" for i, w in enumerate(val, start=1)]
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    arr = load_source(f"imagenet:{tmp_path / 'in'}", "val", size=12, workers=1)  # the CSV in ROOT/..
    assert arr.classes == WNIDS and arr.labels.tolist() == [INDEX[w] for w in val]
    _check_codes(arr)
    assert arr.images.shape == (20, 12, 12, 3)


@pytest.mark.parametrize("tarball", [False, True], ids=["devkit-folder", "devkit-tar.gz"])
def test_imagenet_flat_val_from_the_devkit(tmp_path, tarball):
    val = _imagenet(tmp_path)
    _devkit(tmp_path, val, tarball)
    arr = load_source(f"imagenet:{tmp_path}", "test", size=12, workers=1)
    assert arr.labels.tolist() == [INDEX[w] for w in val] and arr.classes == WNIDS
    _check_codes(arr)


def test_imagenet_val_in_class_folders_and_missing_pieces(tmp_path):
    _imagenet(tmp_path / "in", val_labels=0)
    assert "train/" in _error(lambda: load_source(f"imagenet:{tmp_path / 'in' / 'val'}", "train", size=8))
    msg = _error(lambda: load_source(f"imagenet:{tmp_path / 'in'}", "val", size=8))
    assert "val is missing" in msg
    for i, wnid in enumerate(WNIDS[::7]):
        _save(tmp_path / "in" / "val" / wnid / f"v{i}.JPEG", (_code(INDEX[wnid]), 0, 0))
    arr = load_source(f"imagenet:{tmp_path / 'in'}", "val", size=8, workers=1)
    assert arr.labels.tolist() == [INDEX[w] for w in WNIDS[::7]]
    _check_codes(arr)
    flat = tmp_path / "flat"
    _imagenet(flat, val_labels=3)
    msg = _error(lambda: load_source(f"imagenet:{flat}", "val", size=8))
    assert "LOC_val_solution.csv" in msg and "ILSVRC2012_devkit_t12" in msg
    assert "needs a path, e.g. imagenet:/" in _error(lambda: load_source("imagenet:"))


# --------------------------------------------------------------------------- tar shards

def _shard(path: Path, samples: list[tuple[str, int | None, str]], compress: bool = False) -> None:
    """A WebDataset shard: per sample an image member (coded by its label) and a label member of the given kind."""
    with tarfile.open(path, "w:gz" if compress else "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for key, label, kind in samples:
            buf = io.BytesIO()
            image = Image.new("RGB", SIZES[len(key) % 4], (_code(label or 0), 90, 90))
            image.save(buf, "PNG" if "p" in key else "JPEG")
            add(f"{key}.{'png' if 'p' in key else 'jpg'}", buf.getvalue())
            if label is not None:
                text = {"cls": str(label), "json-label": json.dumps({"label": label, "extra": [1]}),
                        "json-cls": json.dumps({"cls": label}), "json-int": json.dumps(label)}[kind]
                add(f"{key}.{kind.split('-')[0]}", text.encode())


def test_shards_with_cls_and_json_labels_and_brace_ranges(tmp_path):
    labels = [[3, 0, 5, 1], [2, 2, 0], [4, 6, 1, 1, 0]]
    kinds = ["cls", "json-label", "json-cls", "json-int"]
    for s, shard in enumerate(labels):
        _shard(tmp_path / f"train-{s:04d}.tar",
               [(f"dir/s{s}_{i}{'p' if i == 1 else ''}", y, kinds[(s + i) % 4]) for i, y in enumerate(shard)])
    arr = load_source(f"shards:{tmp_path}/train-{{0000..0002}}.tar", size=10, workers=1)
    assert arr.labels.tolist() == sum(labels, []) and arr.classes == [str(i) for i in range(7)]
    assert arr.images.shape == (12, 10, 10, 3)
    _check_codes(arr)
    # The same shards through a glob and a brace list.
    assert load_source(f"shards:{tmp_path}/train-*.tar", size=10).labels.tolist() == sum(labels, [])
    assert load_source(f"shards:{tmp_path}/train-{{0002,0000}}.tar", size=10).labels.tolist() == labels[2] + labels[0]
    assert "missing" in _error(lambda: load_source(f"shards:{tmp_path}/train-{{0000..0003}}.tar", size=10))
    assert "{split}" in _error(lambda: load_source(f"shards:{tmp_path}/train-{{0000..0002}}.tar", "test", size=10))


@pytest.mark.parametrize("kept", [True, False], ids=["one-pass", "streamed"])
def test_compressed_and_unlabelled_shards_and_split_names(tmp_path, monkeypatch, kept):
    if not kept:  # as if the images were too many to keep from the listing: the main process reads them again
        monkeypatch.setattr(files, "KEEP_BYTES", 0)
    _shard(tmp_path / "val-0.tar.gz", [(f"k{i}", y, "cls") for i, y in enumerate([1, 0, 2])], compress=True)
    _shard(tmp_path / "val-1.tar.gz", [("k9", 3, "cls")], compress=True)
    arr = load_source(f"shards:{tmp_path}/{{split}}-{{0..1}}.tar.gz", "val", size=6, workers=1)
    assert arr.labels.tolist() == [1, 0, 2, 3] and arr.classes == ["0", "1", "2", "3"]
    _check_codes(arr)
    same_size = load_source(f"shards:{tmp_path}/{{split}}-{{0..1}}.tar.gz", "val", workers=2)  # keeps its size
    assert same_size.images.shape == (4, 64, 64, 3) and same_size.labels.tolist() == [1, 0, 2, 3]
    _shard(tmp_path / "plain.tar", [("a", None, "cls"), ("b", None, "cls")])
    unlabelled = load_source(f"shards:{tmp_path}/plain.tar", size=6)
    assert unlabelled.labels is None and unlabelled.classes == [] and len(unlabelled) == 2
    (tmp_path / "bad.tar").write_bytes(b"not a tar archive " * 100)
    assert "not a readable tar" in _error(lambda: load_source(f"shards:{tmp_path}/bad.tar", size=6))


# --------------------------------------------------------------------------- parallel, resumable, atomic

def _folder(root: Path, n_per_class: int = 10, classes: int = 4) -> None:
    for c in range(classes):
        for i in range(n_per_class):
            _save(root / f"c{c}" / f"{i:03d}.jpg", (_code(c), 20 * i % 256, 7 * c), SIZES[(c + i) % 4])


def test_workers_give_the_same_array_as_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "CHUNK", 5)  # 8 chunks for 2 processes
    monkeypatch.setattr(files, "KEEP_BYTES", 0)  # compressed archives: members read by the main process, handed over
    _folder(tmp_path / "d")
    with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "d", arcname="d")
    _shard(tmp_path / "s.tar.gz", [(f"k{i}", i % 3, "cls") for i in range(12)], compress=True)
    got = {}
    for workers in (1, 2):
        monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / f"cache{workers}"))
        got[workers] = (load_source(f"folder:{tmp_path / 'd'}", size=12, workers=workers),
                        load_source(f"folder:{tmp_path / 'd.tar.gz'}", size=12, workers=workers),
                        load_source(f"shards:{tmp_path}/s.tar.gz", size=12, workers=workers))
    # The folder and its tarball (archive order, then sorted here) decode alike.
    folder, tarball = got[2][0], got[2][1]
    order = np.lexsort(np.asarray(tarball.images).reshape(len(tarball), -1).T[::-1])
    reference = np.lexsort(np.asarray(folder.images).reshape(len(folder), -1).T[::-1])
    np.testing.assert_array_equal(np.asarray(tarball.images)[order], np.asarray(folder.images)[reference])
    for one, two in zip(got[1], got[2]):
        np.testing.assert_array_equal(np.asarray(one.images), np.asarray(two.images))
        np.testing.assert_array_equal(one.labels, two.labels)
    _check_codes(got[2][0])


KILLED_BUILD = """
import sys, time
import selfsup.data.build as build
import selfsup.data.files as files
from selfsup.data import load_source
build.CHUNK = 3
decode = build.decode_image
def slow(*args):
    time.sleep(0.05)
    return decode(*args)
build.decode_image = slow
load_source(sys.argv[1], size=12, workers=2)
"""


def _done_chunks(progress: Path) -> int:
    done = 0
    for line in progress.read_text().splitlines()[1:]:
        try:
            done += "chunk" in json.loads(line)
        except ValueError:
            break
    return done


def _counting(monkeypatch) -> list:
    calls = []

    def counted(*args):
        calls.append(args[1])
        return DECODE(*args)

    monkeypatch.setattr(build, "decode_image", counted)
    return calls


def test_a_killed_build_resumes_without_decoding_done_chunks(tmp_path, monkeypatch):
    _folder(tmp_path / "d", n_per_class=15)  # 60 images, 20 chunks of 3
    cache = tmp_path / "cache"
    env = dict(os.environ, SELFSUP_CACHE=str(cache), SELFSUP_PROGRESS="off")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, f"folder:{tmp_path / 'd'}"], env=env,
                            start_new_session=True)  # its own process group: the kill takes its workers too
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            progress = list((cache / "arrays").glob("*.progress")) if (cache / "arrays").is_dir() else []
            if progress and _done_chunks(progress[0]) >= 4:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the build ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    arrays = cache / "arrays"
    (progress,) = arrays.glob("*.progress")
    done = _done_chunks(progress)
    assert 4 <= done < 20
    # Half-built: a temporary array and progress, no entry; nothing that a load would take for one.
    assert list(arrays.glob("*.partial")) and not list(arrays.glob("*.json")) and not list(arrays.glob("*.images.npy"))
    stem = progress.name.removesuffix(".progress")
    assert lookup(*stem.rsplit("-", 1)) is None

    monkeypatch.setenv("SELFSUP_CACHE", str(cache))
    monkeypatch.setattr(build, "CHUNK", 3)
    calls = _counting(monkeypatch)
    resumed = load_source(f"folder:{tmp_path / 'd'}", size=12, workers=1)
    assert len(calls) == 60 - 3 * done  # the chunks recorded as done are not decoded again
    assert not list(arrays.glob("*.progress")) and not list(arrays.glob("*.partial"))
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "fresh"))
    fresh = load_source(f"folder:{tmp_path / 'd'}", size=12, workers=1)
    np.testing.assert_array_equal(np.asarray(resumed.images), np.asarray(fresh.images))
    np.testing.assert_array_equal(resumed.labels, fresh.labels)
    _check_codes(resumed)


def _interrupted(monkeypatch, after: int) -> None:
    """Make the next build stop (as Ctrl-C would) at its `after`-th image."""
    calls = []

    def stop(*args):
        calls.append(1)
        if len(calls) > after:
            raise KeyboardInterrupt
        return DECODE(*args)

    monkeypatch.setattr(build, "decode_image", stop)


def test_a_half_built_cache_is_never_used_and_a_changed_source_starts_over(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "CHUNK", 4)
    _folder(tmp_path / "d")
    _interrupted(monkeypatch, after=9)
    with pytest.raises(KeyboardInterrupt):
        load_source(f"folder:{tmp_path / 'd'}", size=8, workers=1)
    arrays = Path(os.environ["SELFSUP_CACHE"]) / "arrays"
    assert list(arrays.glob("*.partial")) and not list(arrays.glob("*.json"))
    # Resumed: 2 chunks of 4 were done, 32 images are left.
    calls = _counting(monkeypatch)
    assert "resuming: 8 already done" in _announce(capsys, lambda: load_source(f"folder:{tmp_path / 'd'}", size=8,
                                                                               workers=1))
    assert len(calls) == 32
    # Interrupted again after a file was added: the next build starts over, and the old files are gone.
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "other"))
    _interrupted(monkeypatch, after=9)
    with pytest.raises(KeyboardInterrupt):
        load_source(f"folder:{tmp_path / 'd'}", size=8, workers=1)
    _save(tmp_path / "d" / "c1" / "new.jpg", (_code(1), 0, 0))
    calls = _counting(monkeypatch)
    with pytest.warns(SelfSupWarning, match="changed since it was decoded"):
        arr = load_source(f"folder:{tmp_path / 'd'}", size=8, workers=1)
    assert len(calls) == len(arr) == 41
    arrays = tmp_path / "other" / "arrays"
    assert len(list(arrays.glob("*.partial"))) == 0 and len(list(arrays.glob("*.progress"))) == 0
    assert len(list(arrays.glob("*.json"))) == 1
    _check_codes(arr)


def _announce(capsys, fn) -> str:
    capsys.readouterr()
    fn()
    return capsys.readouterr().err


def test_a_changed_folder_rebuilds(tmp_path):
    _folder(tmp_path / "d", n_per_class=2)
    assert len(load_source(f"folder:{tmp_path / 'd'}", size=8)) == 8
    (tmp_path / "d" / "c0" / "000.jpg").unlink()
    with pytest.warns(SelfSupWarning, match="changed since it was decoded"):
        arr = load_source(f"folder:{tmp_path / 'd'}", size=8)
    assert len(arr) == 7 and arr.labels.tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert len(list((Path(os.environ["SELFSUP_CACHE"]) / "arrays").glob("*.images.npy"))) == 1


def test_unreadable_images_error_or_are_skipped_and_listed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "CHUNK", 3)
    _folder(tmp_path / "d", n_per_class=3)
    (tmp_path / "d" / "c1" / "001b.jpg").write_bytes(b"not a jpeg")  # rows 4 and 10: the kept rows move down
    (tmp_path / "d" / "c3" / "000b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    msg = _error(lambda: load_source(f"folder:{tmp_path / 'd'}", size=8, workers=1))
    assert "001b.jpg" in msg and "cannot read image" in msg and "data.bad_images=skip" in msg
    err = _announce(capsys, lambda: load_source(f"folder:{tmp_path / 'd'}", size=8, bad_images="skip", workers=2))
    assert "skipped 2 unreadable images" in err
    arr = load_source(f"folder:{tmp_path / 'd'}", size=8, bad_images="skip")  # from the cache now
    assert isinstance(arr.images, np.memmap) and arr.images.shape == (12, 8, 8, 3)
    assert arr.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    _check_codes(arr)
    (listing,) = (Path(os.environ["SELFSUP_CACHE"]) / "arrays").glob("*.skipped.txt")
    lines = listing.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path / "d" / "c1" / "001b.jpg"),
                                                       str(tmp_path / "d" / "c3" / "000b.png")]
    assert listing.name in err
    # Mixed sizes without a size name the setting.
    assert "data.cache_size" in _error(lambda: load_source(f"folder:{tmp_path / 'd'}", bad_images="skip"))


def test_a_full_disk_is_refused_before_decoding(tmp_path, monkeypatch, capsys):
    _folder(tmp_path / "d", n_per_class=2)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(build.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    calls = _counting(monkeypatch)
    capsys.readouterr()
    msg = _error(lambda: load_source(f"folder:{tmp_path / 'd'}", size=16, workers=1))
    assert "not enough disk space" in msg and "6.1 kB" in msg and "SELFSUP_CACHE" in msg
    err = capsys.readouterr().err  # announced first: images, resolution and bytes
    assert "decoding 8 images" in err and "at 16x16" in err and "6.1 kB" in err
    assert not calls and not list((Path(os.environ["SELFSUP_CACHE"]) / "arrays").glob("*.partial"))


def test_concurrent_loads_take_turns_and_decode_once(tmp_path, monkeypatch):
    """Two loaders of one entry at once (as torchrun ranks are): one builds, the other waits and reads it."""
    import threading

    monkeypatch.setattr(build, "CHUNK", 4)
    _folder(tmp_path / "d", n_per_class=5)
    calls = _counting(monkeypatch)
    got = [None, None]

    def load(i: int) -> None:
        got[i] = load_source(f"folder:{tmp_path / 'd'}", size=8, workers=1)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 20
    np.testing.assert_array_equal(np.asarray(got[0].images), np.asarray(got[1].images))
    assert not list((Path(os.environ["SELFSUP_CACHE"]) / "arrays").glob("*.lock"))


def test_bad_settings_are_one_line_errors(tmp_path):
    _folder(tmp_path / "d", n_per_class=1)
    spec = f"folder:{tmp_path / 'd'}"
    assert "data.bad_images must be error or skip" in _error(lambda: load_source(spec, bad_images="ignore"))
    assert "data.workers" in _error(lambda: load_source(spec, workers=0))
    assert "data.cache_size" in _error(lambda: load_source(spec, size=-3))
    assert "shards:" in _error(lambda: load_source("nope:x")) and "imagenet:ROOT" in _error(lambda: load_source("x"))
    assert len(load_source(spec, size=np.int64(8), workers=np.int32(1))) == 4


def test_a_build_interrupted_at_its_end(tmp_path, monkeypatch):
    """Killed after its last chunk (before the entry is written) it only writes the entry; killed while moving rows
    over skipped images it starts over, as its rows are no longer where its progress file says."""
    import selfsup.data.cache as cache_module

    monkeypatch.setattr(build, "CHUNK", 4)
    _folder(tmp_path / "d", n_per_class=3)

    def interrupt(*args):
        raise KeyboardInterrupt

    spec = f"folder:{tmp_path / 'd'}"
    with monkeypatch.context() as m:
        m.setattr(cache_module, "finish", interrupt)
        with pytest.raises(KeyboardInterrupt):
            load_source(spec, size=8, workers=1)
    calls = _counting(monkeypatch)
    arr = load_source(spec, size=8, workers=1)
    assert not calls and len(arr) == 12 and not list((Path(os.environ["SELFSUP_CACHE"]) / "arrays").glob("*.partial"))
    (tmp_path / "d" / "c0" / "bad.jpg").write_bytes(b"broken")
    with monkeypatch.context() as m:
        m.setattr(build, "_compact", interrupt)
        with pytest.raises(KeyboardInterrupt):
            load_source(spec, size=8, workers=1, bad_images="skip")
    calls.clear()
    arr = load_source(spec, size=8, workers=1, bad_images="skip")
    assert len(calls) == 13 and len(arr) == 12
    _check_codes(arr)


def test_the_cache_build_benchmark_runs_at_a_small_size(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cache_build.py"
    subprocess.run([sys.executable, str(script), "--dir", str(tmp_path / "jpegs"), "--n", "300", "--size", "32",
                    "--out", str(tmp_path / "out")], check=True, capture_output=True)
    (result,) = (tmp_path / "out").glob("cache_build-*.json")
    data = json.loads(result.read_text())
    assert data["images"] == 300 and data["size"] == 32 and data["cache_build_img_s"] > 0
    assert data["pil_single_process_img_s"] > 0 and data["speedup"] > 0
    assert data["mean_abs_diff_vs_full_decode"] < 5  # draft decoding stays close to the full decode
    assert "images/s" in result.with_suffix(".md").read_text()

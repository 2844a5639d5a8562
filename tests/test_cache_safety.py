"""The decode cache never serves stale or damaged arrays, an unwritable cache still loads, odd files fail cleanly."""

import io
import json
import os
import pickle
import re
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data import load_source
from selfsup.data.sources import _to_rgb
from selfsup.errors import SelfSupError, SelfSupWarning

rng = np.random.default_rng(0)


def _permissions_enforced(tmp_path: Path) -> bool:
    """Whether chmod stops this process (root, or a process holding CAP_DAC_OVERRIDE, ignores it)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    os.chmod(probe, 0o555)
    try:
        (probe / "x").write_text("x")
    except PermissionError:
        return True
    finally:
        os.chmod(probe, 0o755)
    return False


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _pixels(h: int = 6, w: int = 5) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _classes(root: Path, counts: dict[str, int], ext: str = "png") -> dict[str, np.ndarray]:
    """Class folders of random images; returns {relative path: pixels}."""
    truth = {}
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            truth[f"{cls}/{i}.{ext}"] = px = _pixels()
            Image.fromarray(px).save(root / cls / f"{i}.{ext}")
    return truth


def _row(arr, pixels: np.ndarray) -> int:
    hits = np.flatnonzero((np.asarray(arr.images) == pixels).all((1, 2, 3)))
    assert len(hits) == 1
    return int(hits[0])


def _no_warning(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SelfSupWarning)
        return fn()


def _error(fn) -> str:
    with pytest.raises(SelfSupError) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------- a changed source decodes again


def _changed(fn):
    """fn() must say that the source changed (and is decoded again)."""
    with pytest.warns(SelfSupWarning, match="changed since it was decoded"):
        return fn()


def test_moving_a_file_between_class_folders_changes_its_label(tmp_path, cache):
    truth = _classes(tmp_path / "d", {"cat": 2, "dog": 2})
    first = load_source(f"folder:{tmp_path / 'd'}")
    assert first.labels[_row(first, truth["cat/0.png"])] == 0
    # A rename keeps the file count and every mtime: the old count+newest-mtime key did not change.
    os.rename(tmp_path / "d" / "cat" / "0.png", tmp_path / "d" / "dog" / "9.png")
    moved = _changed(lambda: load_source(f"folder:{tmp_path / 'd'}"))
    assert moved.labels[_row(moved, truth["cat/0.png"])] == 1
    assert sorted(moved.labels.tolist()) == [0, 1, 1, 1]
    assert len(list((cache / "arrays").glob("*.images.npy"))) == 1  # the stale entry is deleted, not kept
    _no_warning(lambda: load_source(f"folder:{tmp_path / 'd'}"))  # and the new one is used from then on


def test_replacing_an_image_with_its_mtime_kept_serves_the_new_pixels(tmp_path, cache):
    truth = _classes(tmp_path / "d", {"a": 2}, ext="bmp")  # BMP: same dimensions, same byte size
    path = tmp_path / "d" / "a" / "1.bmp"
    load_source(f"folder:{tmp_path / 'd'}")
    before = os.stat(path)
    new = _pixels()
    with open(path, "r+b") as f:  # rewritten in place: same inode, same size, mtime set back below
        f.write(_bmp(new))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    for _ in range(300):  # on a filesystem with coarse timestamps, wait until ctime moves (utime moves it)
        if os.stat(path).st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.01)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    arr = _changed(lambda: load_source(f"folder:{tmp_path / 'd'}"))
    np.testing.assert_array_equal(arr.images[1], new)
    np.testing.assert_array_equal(arr.images[0], truth["a/0.bmp"])


def test_an_official_dataset_file_rewritten_in_place_is_decoded_again(tmp_path, cache):
    # The key stamped the dataset folder, whose mtime only moves when files are added or removed.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    def write_batch(data: np.ndarray) -> None:
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({b"data": data, b"labels": [1, 2]}, f)

    write_batch(rng.integers(0, 256, (2, 3072), dtype=np.uint8))
    load_source("cifar10", "test", root=str(tmp_path))
    folder_mtime = os.stat(folder).st_mtime_ns
    new = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    write_batch(new)
    assert os.stat(folder).st_mtime_ns == folder_mtime
    arr = _changed(lambda: load_source("cifar10", "test", root=str(tmp_path)))
    np.testing.assert_array_equal(arr.images[1], new[1].reshape(3, 32, 32).transpose(1, 2, 0))


def _bmp(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "BMP")
    return buf.getvalue()


# --------------------------------------------------------------------------- damaged entries are rebuilt, loudly

def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "flipped image byte": ("images.npy", _flip_last_byte, "fails its checksum"),
    # The last image is labelled 1; its label, the last 8 bytes, becomes 0.
    "flipped label byte": ("labels.npy", lambda p: p.write_bytes(p.read_bytes()[:-8] + bytes(8)), "fails its checksum"),
    "truncated images": ("images.npy", _truncate, "bytes but its metadata says"),
    "deleted images": ("images.npy", Path.unlink, "is missing"),
    "deleted labels": ("labels.npy", Path.unlink, "is missing"),
    "bad metadata": ("json", lambda p: p.write_text('{"version": 2, "shape": [4, '), "not valid metadata"),
    "wrong shape in metadata": ("json", lambda p: p.write_text(p.read_text().replace('"shape": [4,', '"shape": [3,')),
                                "metadata says uint8 [3,"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_reported_and_rebuilt(tmp_path, cache, damage):
    suffix, spoil, reason = DAMAGE[damage]
    truth = _classes(tmp_path / "d", {"a": 1, "b": 3})
    expect = load_source(f"folder:{tmp_path / 'd'}")
    expected_images, expected_labels = np.array(expect.images), expect.labels.copy()
    assert expected_labels.tolist() == [0, 1, 1, 1]
    np.testing.assert_array_equal(expected_images[-1], truth["b/2.png"])
    (target,) = (cache / "arrays").glob(f"*.{suffix}")
    spoil(target)
    with pytest.warns(SelfSupWarning, match=f"damaged decode cache in .*{re.escape(reason)}.*decoding folder-train"):
        arr = load_source(f"folder:{tmp_path / 'd'}")
    np.testing.assert_array_equal(np.asarray(arr.images), expected_images)
    np.testing.assert_array_equal(arr.labels, expected_labels)
    again = _no_warning(lambda: load_source(f"folder:{tmp_path / 'd'}"))  # rebuilt: clean from now on
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(again.labels, expected_labels)


def test_a_large_array_is_checked_on_a_spread_of_rows(tmp_path, cache, monkeypatch):
    import selfsup.data.cache as cache_module

    # As if the array were past FULL_CHECK_BYTES: the checksum covers 2 rows, the first and the last.
    monkeypatch.setattr(cache_module, "FULL_CHECK_BYTES", 0)
    monkeypatch.setattr(cache_module, "SAMPLE_BYTES", 1)
    monkeypatch.setattr(cache_module, "MIN_SAMPLE_ROWS", 2)
    _classes(tmp_path / "d", {"a": 4})
    expected = np.array(load_source(f"folder:{tmp_path / 'd'}").images)
    (meta,) = (cache / "arrays").glob("*.json")
    assert json.loads(meta.read_text())["images_rows"] == 2
    (target,) = (cache / "arrays").glob("*.images.npy")
    _flip_last_byte(target)  # in the last row
    with pytest.warns(SelfSupWarning, match="fails its checksum"):
        np.testing.assert_array_equal(load_source(f"folder:{tmp_path / 'd'}").images, expected)


# --------------------------------------------------------------------------- unwritable cache folders

def test_a_cache_folder_that_is_a_file_warns_once_and_decodes(tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "not-a-folder"))
    truth = _classes(tmp_path / "d", {"a": 2, "b": 1})
    with pytest.warns(SelfSupWarning, match="cannot write the decode cache in .*not-a-folder.*SELFSUP_CACHE"):
        arr = load_source(f"folder:{tmp_path / 'd'}")
    assert arr.labels[_row(arr, truth["b/0.png"])] == 1
    assert len(_no_warning(lambda: load_source(f"folder:{tmp_path / 'd'}"))) == 3  # warned once


def test_a_valid_cache_is_read_where_nothing_can_be_written(tmp_path, cache, monkeypatch):
    import selfsup.data.cache as cache_module

    truth = _classes(tmp_path / "d", {"a": 2})
    load_source(f"folder:{tmp_path / 'd'}")

    def refuse(path, array):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module, "_save_npy_atomic", refuse)  # root ignores chmod; this refuses every write
    arr = _no_warning(lambda: load_source(f"folder:{tmp_path / 'd'}"))
    assert isinstance(arr.images, np.memmap) and _row(arr, truth["a/1.png"]) == 1
    _classes(tmp_path / "e", {"x": 1})
    with pytest.warns(SelfSupWarning, match="cannot write the decode cache .*Permission denied"):
        assert len(load_source(f"folder:{tmp_path / 'e'}")) == 1


def test_a_read_only_cache_folder(tmp_path, cache):
    if not _permissions_enforced(tmp_path):
        pytest.skip("this process ignores file permissions (root)")
    truth = _classes(tmp_path / "d", {"a": 2})
    load_source(f"folder:{tmp_path / 'd'}")
    os.chmod(cache / "arrays", 0o555)
    try:
        arr = _no_warning(lambda: load_source(f"folder:{tmp_path / 'd'}"))
        assert isinstance(arr.images, np.memmap) and _row(arr, truth["a/0.png"]) == 0
        _classes(tmp_path / "e", {"x": 1})
        with pytest.warns(SelfSupWarning, match="cannot write the decode cache .*writable folder"):
            assert len(load_source(f"folder:{tmp_path / 'e'}")) == 1
    finally:
        os.chmod(cache / "arrays", 0o755)


# --------------------------------------------------------------------------- 16-bit images

def _png16(pixels: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot save 16-bit colour): grey 0, RGB 2, grey+alpha 4, RGBA 6."""
    h, w = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


GRADIENT = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)


def _assert_scaled(grey8: np.ndarray) -> None:
    flat = grey8.reshape(-1).astype(int)
    assert flat[0] == 0 and flat[-1] == 255 and (np.diff(flat) >= 0).all()
    counts = np.bincount(flat, minlength=256)
    assert counts.min() >= 15 and counts.max() <= 17  # 4096 pixels over 256 levels: 16 each, not 99% at 255


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path, cache):
    (tmp_path / "d").mkdir()
    Image.fromarray(GRADIENT).save(tmp_path / "d" / "grey16.png")  # Pillow writes uint16 as a 16-bit grey PNG
    assert Image.open(tmp_path / "d" / "grey16.png").mode == "I;16"
    (img,) = load_source(f"folder:{tmp_path / 'd'}").images
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
    _assert_scaled(img[..., 0])
    # The same through image:PATH.
    _assert_scaled(load_source(f"image:{tmp_path / 'd' / 'grey16.png'}").images[0, ..., 0])


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_grey_modes(mode):
    dtype = ">u2" if mode == "I;16B" else "<u2"
    img = Image.frombytes(mode, (64, 64), GRADIENT.astype(dtype).tobytes())
    _assert_scaled(np.asarray(_to_rgb(img, "test"))[..., 0])


def test_16bit_pgm_opens_as_mode_i_and_is_scaled(tmp_path, cache):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "g.pgm").write_bytes(b"P5 64 64 65535\n" + GRADIENT.astype(">u2").tobytes())
    assert Image.open(tmp_path / "d" / "g.pgm").mode == "I"
    _assert_scaled(load_source(f"folder:{tmp_path / 'd'}").images[0, ..., 0])


def test_32bit_integer_pixels_are_refused():
    img = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    assert "32-bit integer pixels" in _error(lambda: _to_rgb(img, "x.tif"))


@pytest.mark.parametrize("color_type", [2, 4, 6])
def test_16bit_colour_pngs_keep_their_range(tmp_path, cache, color_type):
    channels = {2: 3, 4: 2, 6: 4}[color_type]
    path = tmp_path / "c16.png"
    path.write_bytes(_png16(np.repeat(GRADIENT[..., None], channels, axis=2), color_type))
    (img,) = load_source(f"image:{path}").images
    _assert_scaled(img[..., 0])


def test_8bit_grey_palette_cmyk_and_rgba_still_decode(tmp_path, cache):
    (tmp_path / "d").mkdir()
    px = _pixels(8, 8)
    grey = px[..., 0]
    Image.fromarray(grey).save(tmp_path / "d" / "0grey.png")
    Image.fromarray(px).quantize(16).save(tmp_path / "d" / "1palette.png")
    Image.fromarray(px).convert("CMYK").save(tmp_path / "d" / "2cmyk.jpg", quality=100)
    Image.fromarray(np.dstack([px, np.full((8, 8), 128, np.uint8)])).save(tmp_path / "d" / "3rgba.png")
    arr = load_source(f"folder:{tmp_path / 'd'}")
    np.testing.assert_array_equal(arr.images[0], np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(arr.images[1], np.asarray(Image.open(tmp_path / "d" / "1palette.png").convert("RGB")))
    assert np.abs(arr.images[2].astype(int) - px).mean() < 8  # JPEG, through CMYK
    np.testing.assert_array_equal(arr.images[3], px)


# --------------------------------------------------------------------------- symlinks and folders given as images

@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loops_and_broken_links_name_the_file(tmp_path, cache):
    _classes(tmp_path / "d", {"a": 1})
    os.symlink("loop.png", tmp_path / "d" / "a" / "loop.png")
    msg = _error(lambda: load_source(f"folder:{tmp_path / 'd'}"))
    assert "loop.png" in msg and "symlink loop" in msg
    assert "symlink loop" in _error(lambda: load_source(f"image:{tmp_path / 'd' / 'a' / 'loop.png'}"))
    os.remove(tmp_path / "d" / "a" / "loop.png")
    os.symlink("gone.png", tmp_path / "d" / "a" / "dangling.png")
    msg = _error(lambda: load_source(f"folder:{tmp_path / 'd'}"))
    assert "dangling.png" in msg and "broken symlink" in msg
    assert "broken symlink" in _error(lambda: load_source(f"image:{tmp_path / 'd' / 'a' / 'dangling.png'}"))


def test_an_unreadable_image_names_the_file(tmp_path, cache):
    if not _permissions_enforced(tmp_path):
        pytest.skip("this process ignores file permissions (root)")
    _classes(tmp_path / "d", {"a": 2})
    os.chmod(tmp_path / "d" / "a" / "1.png", 0)
    msg = _error(lambda: load_source(f"folder:{tmp_path / 'd'}"))
    assert "1.png" in msg and "Permission denied" in msg


def test_image_given_a_folder_points_at_folder_source(tmp_path):
    msg = _error(lambda: load_source(f"image:{tmp_path}"))
    assert "is a folder" in msg and f"folder:{tmp_path}" in msg

"""Image sources: official dataset formats, image folders (or tarballs of them), ImageNet, tar shards, one image,
sklearn digits.

Every source yields an ImageArray: uint8 images (N,H,W,3) and int64 labels when known. Decoding happens
once; later runs memory-map the cached array (see cache.py). The official formats are read by our own
small readers so that any file in the right format works (torchvision's readers insist on the official
checksums); torchvision's downloader fetches the archives when the user passes --download. Image folders,
ImageNet and shards are decoded in parallel, resumably, by build.py.
"""

from __future__ import annotations

import hashlib
import operator
import os
import pickle
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.data.build import DECODER, Plan, build_cached, decode_image, resize_center_crop
from selfsup.data.build import to_rgb as _to_rgb  # noqa: F401 — tests and older callers import it from here
from selfsup.data.cache import cache_dir, cache_key, cached_arrays, made_once
from selfsup.data.files import IMAGE_EXTENSIONS, Fingerprint, list_tar, scan_folder, stat_given, unreadable
from selfsup.data.files import file_stamps as _file_stamps
from selfsup.data.imagenet import load_imagenet
from selfsup.data.shards import load_shards
from selfsup.errors import SelfSupError

SPLIT_ALIASES = {"val": "test", "valid": "test", "validation": "test"}
BAD_IMAGES = ("error", "skip")
PATH_KINDS = {"folder": "PATH", "image": "PATH", "imagenet": "ROOT", "shards": "PATTERN"}
PATH_EXAMPLES = {"folder": "folder:/path/to/images", "image": "image:/path/to/photo.jpg",
                 "imagenet": "imagenet:/path/to/ILSVRC2012", "shards": "shards:/path/to/train-{0000..0127}.tar"}


@dataclass
class ImageArray:
    """A decoded split: images uint8 (N,H,W,3), labels int64 (N,) or None, and class names."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def parse_source(spec: str) -> tuple[str, str]:
    """Split 'kind:arg' into (kind, arg); 'cifar10' gives ('cifar10', '')."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in SOURCES:
        raise SelfSupError(f"unknown data source {spec!r}; use one of "
                           f"{', '.join(s + (':' + PATH_KINDS[s] if s in PATH_KINDS else '') for s in SOURCES)}")
    if kind in PATH_KINDS and not arg:
        raise SelfSupError(f"data source {spec!r} needs a {'pattern' if kind == 'shards' else 'path'}, e.g. "
                           f"{PATH_EXAMPLES[kind]}")
    return kind, arg


def load_source(spec: str, split: str = "train", root: str | None = None, download: bool = False,
                size: int | None = None, bad_images: str = "error", workers: int | None = None) -> ImageArray:
    """Load one split of a source spec such as 'cifar10', 'folder:PATH', 'imagenet:ROOT', 'shards:PATTERN', 'digits'.

    size: resize the shorter side to `size` (bicubic) and centre-crop size x size (data.cache_size). bad_images:
    "error" stops at an unreadable image, naming it; "skip" leaves such images out (image folders, ImageNet, shards).
    workers: decoding processes for those (None: one per core).
    """
    kind, arg = parse_source(spec)
    if bad_images not in BAD_IMAGES:
        raise SelfSupError(f"data.bad_images must be error or skip, got {bad_images!r}")
    workers = _whole(workers, "data.workers", "(or null: one process per core)")
    size = _whole(size, "data.cache_size", "pixels (or null: keep the images' size)")
    split = SPLIT_ALIASES.get(split, split)
    data_root = Path(root).expanduser() if root else cache_dir() / "datasets"
    return SOURCES[kind](arg=arg, split=split, root=data_root, download=download, size=size, bad_images=bad_images,
                         workers=workers)


def _whole(value, key: str, unit: str) -> int | None:
    """None, or a whole number of at least 1 (numpy integers included) as an int; anything else is an error."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = 0
    if number < 1:
        raise SelfSupError(f"{key} must be a whole number of at least 1 {unit}, got {value!r}")
    return number


IMBALANCE_MIN_FRACTION = {"light": 0.5, "heavy": 0.1}


def imbalanced(arr: ImageArray, level: str, seed: int = 0) -> ImageArray:
    """Keep a fraction of each class falling linearly from 100% (class 0) to 50% (light) or 10% (heavy) (last class).

    Class c of C keeps round(n_c * (1 - (1 - f_min) * c / (C - 1))) images, chosen by a seeded permutation,
    in their original order.
    """
    if level not in IMBALANCE_MIN_FRACTION:
        raise SelfSupError(f"imbalance must be light or heavy, got {level!r}")
    if arr.labels is None or (arr.labels < 0).any():
        raise SelfSupError(f"imbalance needs a fully labelled source; {arr.name} has images without labels")
    f_min = IMBALANCE_MIN_FRACTION[level]
    classes = int(arr.labels.max()) + 1
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(classes):
        idx = np.flatnonzero(arr.labels == c)
        fraction = 1.0 - (1.0 - f_min) * c / max(1, classes - 1)
        keep.append(rng.permutation(idx)[: round(len(idx) * fraction)])
    keep = np.sort(np.concatenate(keep))
    return ImageArray(f"{arr.name}[{level} imbalance]", kept_rows(arr.images, keep, f"{level} imbalance"),
                      arr.labels[keep], arr.classes)


def subset(arr: ImageArray, count: int, seed: int = 0) -> ImageArray:
    """A seeded random subset of `count` images (e.g. 1 or 10 of a dataset), in their original order."""
    if count < 1:
        raise SelfSupError(f"data.num_images must be at least 1, got {count}")
    if count > len(arr):
        raise SelfSupError(f"data.num_images={count} but {arr.name} holds only {len(arr)} images")
    keep = np.sort(np.random.default_rng(seed).permutation(len(arr))[:count])
    labels = None if arr.labels is None else arr.labels[keep]
    return ImageArray(f"{arr.name}[{count} images]", kept_rows(arr.images, keep, f"{count:,}-image subset"), labels,
                      arr.classes)


KEPT_CHUNK = 4096  # rows copied at a time into a subset's cache file


def kept_rows(images: np.ndarray, keep: np.ndarray, what: str) -> np.ndarray:
    """images[keep] (sorted row numbers): in memory, or, when the images are the decode cache's memory map and the
    kept rows are more than RAM allows (an imbalanced ImageNet keeps three quarters of 193 GB), copied once in
    chunks into a file of the cache beside it and memory-mapped from there."""
    from selfsup.data.stream import DEFAULT_RAM_SHARE, available_ram

    row_bytes = int(np.prod(images.shape[1:], dtype=np.int64))
    source = getattr(images, "filename", None)
    if source is None or len(keep) * row_bytes <= DEFAULT_RAM_SHARE * available_ram():
        return np.asarray(images[keep])
    # The entry's file name holds its source's fingerprint: with the rows kept, it names this subset exactly.
    key = cache_key("rows", Path(source).name, images.shape, hashlib.sha1(np.ascontiguousarray(keep)).hexdigest())

    def fill(out: np.ndarray) -> None:
        for start in range(0, len(keep), KEPT_CHUNK):
            out[start:start + KEPT_CHUNK] = images[keep[start:start + KEPT_CHUNK]]

    return made_once("subsets", key, (len(keep), *images.shape[1:]), fill,
                     f"copying the {what}'s {len(keep):,} images")


# --------------------------------------------------------------------------- official formats

_DOWNLOADS = {
    "cifar10": [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")],
    "cifar100": [("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")],
    "stl10": [("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb")],
    "svhn": [
        ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
        ("http://ufldl.stanford.edu/housenumbers/extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
    ],
}


def _download(name: str, root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    root.mkdir(parents=True, exist_ok=True)
    for url, md5 in _DOWNLOADS[name]:
        if url.endswith(".mat"):
            download_url(url, str(root), md5=md5)
        else:
            download_and_extract_archive(url, str(root), md5=md5)


def _require(path: Path, name: str, root: Path, download: bool) -> Path:
    if not path.exists() and download:
        _download(name, root)
    if not path.exists():
        raise SelfSupError(f"{name} not found at {path}; pass --download to fetch it, "
                           "or data.root=DIR pointing at the folder that holds it")
    return path


def _check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise SelfSupError(f"{name} has no split {split!r}; use one of {', '.join(allowed)}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 — any failure here means the file is not a CIFAR batch
        raise SelfSupError(f"cannot read CIFAR batch {path}: {e}; "
                           "delete it and pass --download to fetch it again") from None


def _cifar(arg: str, split: str, root: Path, download: bool, size: int | None, hundred: bool, **_
           ) -> ImageArray:
    name = "cifar100" if hundred else "cifar10"
    _check_split(name, split, ("train", "test"))
    folder = _require(root / ("cifar-100-python" if hundred else "cifar-10-batches-py"), name, root, download)
    if hundred:
        files, label_key, meta_file, names_key = [split], b"fine_labels", "meta", b"fine_label_names"
    else:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_file, names_key = b"labels", "batches.meta", b"label_names"

    def decode():
        images, labels = [], []
        for fname in files:
            batch = _unpickle(_require(folder / fname, name, root, False))
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(batch[label_key])
        meta = folder / meta_file
        classes = ([c.decode() for c in _unpickle(meta)[names_key]] if meta.exists()
                   else [str(i) for i in range(max(labels) + 1)])
        return np.concatenate(images), np.asarray(labels, dtype=np.int64), classes

    key = cache_key(folder.resolve(), split, _file_stamps(folder, files + [meta_file]))
    return ImageArray(name, *cached_arrays(name + "-" + split, key, decode, f"{name} {split} in {folder.resolve()}"))


def _stl10(arg: str, split: str, root: Path, download: bool, size: int | None, **_) -> ImageArray:
    _check_split("stl10", split, ("train", "test", "unlabeled", "train+unlabeled"))
    folder = _require(root / "stl10_binary", "stl10", root, download)

    def read_x(part: str) -> np.ndarray:
        path = _require(folder / f"{part}_X.bin", "stl10", root, False)
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise SelfSupError(f"{path} is not an STL-10 image file (size {raw.size} is not a multiple of 3*96*96)")
        # The binary stores each image column-major (C, W, H); transpose to (H, W, C).
        return raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)

    def read_y(part: str, n: int) -> np.ndarray:
        if part == "unlabeled":
            return np.full(n, -1, dtype=np.int64)
        y = np.fromfile(_require(folder / f"{part}_y.bin", "stl10", root, False), dtype=np.uint8).astype(np.int64) - 1
        if len(y) != n:
            raise SelfSupError(f"{folder}/{part}_y.bin holds {len(y)} labels for {n} images")
        return y

    def decode():
        parts = split.split("+")
        xs = [read_x(p) for p in parts]
        ys = [read_y(p, len(x)) for p, x in zip(parts, xs)]
        names = folder / "class_names.txt"
        classes = names.read_text().split() if names.exists() else [str(i) for i in range(10)]
        labels = np.concatenate(ys)
        return np.concatenate(xs), (None if split == "unlabeled" else labels), classes

    read = [f"{p}_X.bin" for p in split.split("+")] + [f"{p}_y.bin" for p in split.split("+") if p != "unlabeled"]
    key = cache_key(folder.resolve(), split, _file_stamps(folder, read + ["class_names.txt"]))
    return ImageArray("stl10", *cached_arrays("stl10-" + split.replace("+", "_"), key, decode,
                                              f"stl10 {split} in {folder.resolve()}"))


def stl10_folds(root: str | None = None) -> list[np.ndarray]:
    """The ten predefined STL-10 training folds (indices into the train split)."""
    path = Path(root).expanduser() if root else cache_dir() / "datasets"
    path = _require(path / "stl10_binary" / "fold_indices.txt", "stl10", path, False)
    return [np.asarray(line.split(), dtype=np.int64) for line in path.read_text().splitlines() if line.strip()]


def _svhn(arg: str, split: str, root: Path, download: bool, size: int | None, **_) -> ImageArray:
    from scipy.io import loadmat

    _check_split("svhn", split, ("train", "test", "extra"))
    path = _require(root / f"{split}_32x32.mat", "svhn", root, download)

    def decode():
        try:
            mat = loadmat(str(path))
            x, y = mat["X"], mat["y"]
        except Exception as e:  # noqa: BLE001
            raise SelfSupError(f"cannot read SVHN file {path}: {e}; "
                               "delete it and pass --download to fetch it again") from None
        # Digit 0 is stored as label 10.
        return x.transpose(3, 0, 1, 2), np.asarray(y, dtype=np.int64).reshape(-1) % 10, [str(i) for i in range(10)]

    key = cache_key(path.resolve(), _file_stamps(path.parent, [path.name]))
    return ImageArray("svhn", *cached_arrays("svhn-" + split, key, decode, f"svhn {path.resolve()}"))


# --------------------------------------------------------------------------- image folders

def _folder_layout(paths: list[tuple[str, ...]]) -> tuple[list[tuple[str, ...]], dict[str, str]]:
    """Strip a single wrapping directory; map split names to their top-level folder when train/ and test/ exist.

    Paths are tuples of their parts (plain strings: for a million files PurePosixPath objects cost seconds)."""
    while paths and all(len(p) > 1 for p in paths) and len({p[0] for p in paths}) == 1:
        if paths[0][0].lower() in ("train", "test", "val"):
            break
        paths = [p[1:] for p in paths]
    tops = {p[0] for p in paths if len(p) > 1}
    splits = {}
    if "train" in tops:
        splits["train"] = "train"
        for name in ("test", "val", "valid", "validation"):
            if name in tops:
                splits["test"] = name
                break
    return paths, splits


def _folder_entries(path: Path, scan: list | None) -> tuple[list[tuple[str, ...]], list[str], list, list[str]]:
    """Every image of a folder (as scanned) or tarball: (path parts, names for messages, sources, archives), in
    sorted order for a folder and archive order for a tarball (see build.Plan for sources and archives)."""
    if scan is not None:
        names = [full for _, full, _ in scan]
        return [tuple(rel.split("/")) for rel, _, _ in scan], names, names, []
    def parts_of(name: str) -> tuple[str, ...] | None:
        """The path parts of an image member; None for another member or a macOS resource fork."""
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if not parts or os.path.splitext(parts[-1])[1].lower() not in IMAGE_EXTENSIONS or parts[-1].startswith("._"):
            return None
        return parts

    random_access, entries, _, kept = list_tar(
        path, f"{path} is neither a folder nor a readable .tar/.tar.gz archive; give a folder of images or a tarball "
              "of one", keep=lambda name: parts_of(name) is not None)
    parts, names, sources = [], [], []
    for e in entries:
        name = parts_of(e.name)
        if name is None:
            continue
        parts.append(name)
        names.append(f"{path}/{'/'.join(name)}")
        sources.append((str(path), e.offset, e.size) if random_access else
                       kept[e.ordinal] if kept is not None else (0, e.ordinal))
    return parts, names, sources, [] if random_access or kept is not None else [str(path)]


def _folder(arg: str, split: str, root: Path, download: bool, size: int | None, bad_images: str = "error",
            workers: int | None = None) -> ImageArray:
    path = Path(arg).expanduser()
    stat_given(path, "image folder",
               f"image folder {path} does not exist; give an existing folder or .tar/.tar.gz of images")
    # The key hashes every image's relative path and stamp, so a file moved between class folders, added, removed or
    # replaced (even with its mtime set back) misses the cache; the decoder reads exactly this listing. The stat
    # comes before the read, so a file changed mid-decode makes the next load miss instead of hiding the change.
    # Cost on a cache hit, 50,000 files in 10 folders, page cache warm, best of 5 on a busy 2-core machine: scan
    # 0.36 s + stamps and key 0.15 s, against 0.22 s for the old count-and-newest-mtime walk (a decode takes minutes).
    scan = scan_folder(path) if path.is_dir() else None
    fingerprint = Fingerprint()
    if scan is None:
        fingerprint.add(_file_stamps(path.parent, [path.name]))
    else:
        fingerprint.add_scan(scan)

    def plan() -> Plan:
        parts, names, sources, archives = _folder_entries(path, scan)
        if not parts:
            raise SelfSupError(f"no images found in {path}; "
                               f"it must hold image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        rel, splits = _folder_layout(parts)
        if splits:
            if split not in splits:
                raise SelfSupError(f"{path} has no {split!r} split; it has {', '.join(sorted(splits))}")
            chosen = [i for i, r in enumerate(rel) if r[0] == splits[split]]
            within = [rel[i][1:] for i in chosen]
        elif split in ("train", "all"):
            chosen, within = list(range(len(rel))), rel
        else:
            raise SelfSupError(f"{path} has no {split!r} split (no train/ and test/ sub-folders); use split 'train'")
        if not chosen:
            raise SelfSupError(f"no images in the {split!r} split of {path}")
        labelled = all(len(r) > 1 for r in within)
        classes = set()
        if labelled:
            classes = {r[0] for r in within}
            if splits:  # one numbering for every split: a test/ folder without some class must not renumber the others
                classes |= {r[1] for r in rel if r[0] in splits.values() and len(r) > 2}
        classes = sorted(classes)
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([index[r[0]] for r in within], dtype=np.int64) if labelled else None
        return Plan([names[i] for i in chosen], [sources[i] for i in chosen], labels, classes, archives)

    key = cache_key(path.resolve(), split, size, bad_images, DECODER, fingerprint.hexdigest())
    source = (f"{path.resolve()} ({split} split{f', size {size}' if size else ''}"
              f"{', skipping unreadable images' if bad_images == 'skip' else ''})")
    images, labels, classes = build_cached("folder-" + split, key, plan, size, bad_images, workers,
                                           what=f"{path} ({split} split)", source=source)
    return ImageArray(f"folder:{path.name}", images, labels, classes)


def _imagenet(arg: str, split: str, root: Path, download: bool, size: int | None, bad_images: str = "error",
              workers: int | None = None) -> ImageArray:
    return ImageArray("imagenet", *load_imagenet(arg, split, size, bad_images, workers))


def _shards(arg: str, split: str, root: Path, download: bool, size: int | None, bad_images: str = "error",
            workers: int | None = None) -> ImageArray:
    return ImageArray(f"shards:{Path(arg).name}", *load_shards(arg, split, size, bad_images, workers))

# --------------------------------------------------------------------------- one image, digits

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "cat")  # ship with scikit-image (no download)


def load_image(arg: str) -> np.ndarray:
    """Read one image as uint8 (H,W,3): a file path, or skimage/NAME for a photograph scikit-image ships."""
    if arg.startswith("skimage/"):
        from skimage import data as skdata

        name = arg.split("/", 1)[1]
        loader = getattr(skdata, name, None)
        if loader is None or name.startswith("_"):
            raise SelfSupError(f"scikit-image has no photograph {name!r}; try one of {', '.join(SKIMAGE_PHOTOS)}")
        try:
            img = np.asarray(loader())
        except Exception as e:  # noqa: BLE001 — some skimage images need a download we cannot do
            raise SelfSupError(f"scikit-image photograph {name!r} is not available offline ({e}); "
                               "try astronaut, coffee or chelsea") from None
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    path = Path(arg).expanduser()
    st = stat_given(path, "image",
                     f"image {path} does not exist; give an image file or skimage/NAME (e.g. skimage/astronaut)")
    if stat.S_ISDIR(st.st_mode):
        raise SelfSupError(f"image {path} is a folder; use folder:{path} to load the images in it")
    if not stat.S_ISREG(st.st_mode):
        raise SelfSupError(f"image {path} is not a regular file; give an image file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise unreadable(f"image {path}", e) from None
    return decode_image(data, str(path), None)


def _image(arg: str, split: str, root: Path, download: bool, size: int | None, **_) -> ImageArray:
    img = load_image(arg)
    if size:
        img = np.asarray(resize_center_crop(Image.fromarray(img), size))
    return ImageArray(f"image:{Path(arg).name}", img[None])


def _digits(arg: str, split: str, root: Path, download: bool, size: int | None, **_) -> ImageArray:
    _check_split("digits", split, ("train", "test", "all"))

    def decode():
        from sklearn.datasets import load_digits

        digits = load_digits()
        # 8x8 grey levels 0..16 -> uint8 RGB.
        images = np.repeat((digits.images * (255.0 / 16.0)).round().astype(np.uint8)[..., None], 3, axis=3)
        labels = digits.target.astype(np.int64)
        if split != "all":
            # A fixed, stratified 70/30 split so every run probes on the same test images.
            rng = np.random.default_rng(0)
            test = np.zeros(len(labels), dtype=bool)
            for c in range(10):
                idx = rng.permutation(np.flatnonzero(labels == c))
                test[idx[: round(0.3 * len(idx))]] = True
            keep = test if split == "test" else ~test
            images, labels = images[keep], labels[keep]
        if size:
            images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])
        return images, labels, [str(i) for i in range(10)]

    # Cached like every other source: resizing 1,797 images with PIL costs more than reading them back.
    return ImageArray("digits", *cached_arrays(f"digits-{split}", cache_key("digits", split, size), decode))


SOURCES = {
    "cifar10": lambda **kw: _cifar(hundred=False, **kw),
    "cifar100": lambda **kw: _cifar(hundred=True, **kw),
    "stl10": _stl10,
    "svhn": _svhn,
    "folder": _folder,
    "imagenet": _imagenet,
    "shards": _shards,
    "image": _image,
    "digits": _digits,
}

"""ILSVRC-2012 (ImageNet-1k) as distributed: ROOT/train/<wnid>/*.JPEG, and ROOT/val/ either sorted into class folders
or flat (ILSVRC2012_val_00000001.JPEG ...) with its labels in the devkit or in Kaggle's LOC_val_solution.csv.

The classes are the wnids, numbered in sorted order of train/'s folders (as torchvision's ImageNet), one numbering
for both splits.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np

from selfsup.data.build import DECODER, Plan, build_cached
from selfsup.data.cache import cache_key
from selfsup.data.files import Fingerprint, file_stamps, scan_folder, stat_given, unreadable
from selfsup.errors import SelfSupError

DEVKIT = "ILSVRC2012_devkit_t12"
GROUND_TRUTH = f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt"
META = f"{DEVKIT}/data/meta.mat"
KAGGLE_CSV = "LOC_val_solution.csv"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)$")
HOW = "imagenet:ROOT reads the ILSVRC-2012 layout ROOT/train/<wnid>/*.JPEG and ROOT/val/"


def _subfolders(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.is_dir())
    except OSError as e:
        raise unreadable(f"folder {folder}", e) from None


def _devkit_files(root: Path) -> tuple[bytes, bytes, Path] | None:
    """(ground truth text, meta.mat bytes, where) from the devkit folder or its tarball in ROOT; None when absent."""
    folder = root / DEVKIT
    if folder.is_dir():
        try:
            return (root / GROUND_TRUTH).read_bytes(), (root / META).read_bytes(), folder
        except OSError as e:
            missing = GROUND_TRUTH if not (root / GROUND_TRUTH).exists() else META
            raise SelfSupError(f"the devkit {folder} lacks {root / missing} ({e.strerror or e}); extract "
                               f"{DEVKIT}.tar.gz again") from None
    archive = root / f"{DEVKIT}.tar.gz"
    if not archive.is_file():
        return None
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in (GROUND_TRUTH, META) and member.isfile():
                    found[name] = tar.extractfile(member).read()
                    if len(found) == 2:
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise SelfSupError(f"archive {archive} is damaged ({type(e).__name__}); download it again") from None
    for name in (GROUND_TRUTH, META):
        if name not in found:
            raise SelfSupError(f"{archive} holds no {name}; download the ILSVRC-2012 devkit (Development kit, Task 1 "
                               "& 2) again")
    return found[GROUND_TRUTH], found[META], archive


def _leaf_wnids(meta: bytes, where: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1,000 leaf synsets (num_children == 0) of the devkit's meta.mat."""
    from scipy.io import loadmat

    try:
        synsets = np.atleast_1d(loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]).ravel()
        ids = {}
        for s in synsets:
            if int(np.asarray(s["num_children"]).item()) == 0:
                ids[int(np.asarray(s["ILSVRC2012_ID"]).item())] = str(np.asarray(s["WNID"]).item())
    except Exception as e:  # noqa: BLE001 — scipy raises many types for a file that is not this one
        raise SelfSupError(f"cannot read the synsets of {where}'s meta.mat ({type(e).__name__}: {e}); download the "
                           "devkit again") from None
    return ids


def _devkit_labels(root: Path) -> tuple[dict[int, str], Path] | None:
    """val image number -> wnid from the devkit; None when there is no devkit."""
    found = _devkit_files(root)
    if found is None:
        return None
    truth, meta, where = found
    wnids = _leaf_wnids(meta, where)
    labels = {}
    for number, line in enumerate(truth.decode().split(), start=1):
        try:
            labels[number] = wnids[int(line)]
        except (ValueError, KeyError):
            raise SelfSupError(f"line {number} of {where}'s validation ground truth is {line!r}, not an ILSVRC2012_ID "
                               "of a leaf synset in meta.mat; download the devkit again") from None
    return labels, where


def _kaggle_csv(root: Path) -> Path | None:
    for folder in (root, root.parent):
        if (folder / KAGGLE_CSV).is_file():
            return folder / KAGGLE_CSV
    return None


def _csv_labels(path: Path) -> dict[str, str]:
    """ImageId -> wnid from Kaggle's LOC_val_solution.csv (the PredictionString starts with the wnid)."""
    labels = {}
    try:
        with open(path, newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
                raise SelfSupError(f"{path} does not start with the header ImageId,PredictionString; use Kaggle's "
                                   f"{KAGGLE_CSV}")
            for row in rows:
                if len(row) >= 2 and row[1].split():
                    labels[row[0].strip()] = row[1].split()[0]
    except OSError as e:
        raise unreadable(str(path), e) from None
    return labels


def _classes(root: Path) -> list[str]:
    train = root / "train"
    if not train.is_dir():
        raise SelfSupError(f"{train} is missing; {HOW} (train/'s class folders give the class order of both splits)")
    classes = _subfolders(train)
    if not classes:
        raise SelfSupError(f"{train} holds no class folders; {HOW}")
    return classes


def load_imagenet(arg: str, split: str, size: int | None, bad_images: str, workers: int | None
                  ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(images, labels, classes) of ImageNet's train or val split ('test' is val: the test set has no labels)."""
    root = Path(arg).expanduser()
    stat_given(root, "ImageNet folder", f"ImageNet folder {root} does not exist; {HOW}")
    if split not in ("train", "test"):
        raise SelfSupError(f"imagenet has no split {split!r}; use train or val")
    classes = _classes(root)
    folder = root / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise SelfSupError(f"{folder} is missing; {HOW}")
    scan = scan_folder(folder)
    if not scan:
        raise SelfSupError(f"no images found in {folder}; {HOW}")
    flat = [rel for rel, _, _ in scan if "/" not in rel]
    if flat and len(flat) != len(scan):
        raise SelfSupError(f"{folder} mixes class folders with loose images (e.g. {flat[0]}); keep one layout")
    if flat and split == "train":
        raise SelfSupError(f"{folder} holds loose images (e.g. {flat[0]}); the train split needs class folders "
                           "train/<wnid>/")
    fingerprint = Fingerprint(classes).add_scan(scan)
    csv_path, devkit = None, root / DEVKIT
    if flat:  # the label file is part of the source
        devkit_tar = root / f"{DEVKIT}.tar.gz"
        csv_path = _kaggle_csv(root)
        for path in (devkit / "data" / "meta.mat", devkit / "data" / GROUND_TRUTH.rsplit("/", 1)[1], devkit_tar,
                     csv_path):
            if path is not None:
                fingerprint.add(file_stamps(path.parent, [path.name]))

    def plan() -> Plan:
        index = {c: i for i, c in enumerate(classes)}
        names = [full for _, full, _ in scan]
        if not flat:
            wnids = [rel.split("/", 1)[0] for rel, _, _ in scan]
            origin = f"{folder}'s class folders"
        else:
            wnids, origin = _flat_val_wnids(root, folder, [rel for rel, _, _ in scan])
        labels = np.empty(len(scan), dtype=np.int64)
        for i, wnid in enumerate(wnids):
            if wnid not in index:
                raise SelfSupError(f"{names[i]} is labelled {wnid} by {origin}, which is not a class folder of "
                                   f"{root / 'train'}; the splits must share their classes")
            labels[i] = index[wnid]
        return Plan(names, names, labels, classes)

    key = cache_key(root.resolve(), split, size, bad_images, DECODER, fingerprint.hexdigest())
    tag = "val" if split == "test" else split
    source = f"imagenet {root.resolve()} ({tag}{f', size {size}' if size else ''}" \
             f"{', skipping unreadable images' if bad_images == 'skip' else ''})"
    return build_cached(f"imagenet-{tag}", key, plan, size, bad_images, workers,
                        what=f"imagenet {tag} ({root})", source=source)


def _flat_val_wnids(root: Path, folder: Path, rels: list[str]) -> tuple[list[str], str]:
    """The wnid of each flat val image, from the devkit (by image number) or Kaggle's CSV (by image name)."""
    devkit = _devkit_labels(root)
    if devkit is not None:
        by_number, where = devkit
        wnids = []
        for rel in rels:
            match = VAL_NAME.match(rel.split(".", 1)[0])
            if match is None or int(match.group(1)) not in by_number:
                raise SelfSupError(f"{folder / rel} is not one of the devkit's ILSVRC2012_val_NNNNNNNN.JPEG images, "
                                   f"so {where} cannot label it; remove it or sort val/ into class folders")
            wnids.append(by_number[int(match.group(1))])
        return wnids, str(where)
    csv_path = _kaggle_csv(root)
    if csv_path is None:
        raise SelfSupError(f"cannot label the loose images of {folder}: put {DEVKIT}.tar.gz (or its extracted folder) "
                           f"or Kaggle's {KAGGLE_CSV} in {root} (the CSV may also be in {root.parent}), or sort val/ "
                           "into class folders val/<wnid>/")
    by_name = _csv_labels(csv_path)
    wnids = []
    for rel in rels:
        image_id = rel.split(".", 1)[0]
        if image_id not in by_name:
            raise SelfSupError(f"{csv_path} has no row for {folder / rel}; remove the image or use the full "
                               f"{KAGGLE_CSV}")
        wnids.append(by_name[image_id])
    return wnids, str(csv_path)

"""Tar shards in the WebDataset layout: `shards:DIR/train-{0000..0127}.tar` (brace ranges and lists, a glob, or one
tar). Members are grouped into samples by key (the member name up to the first dot of its basename, as WebDataset
does); each sample gives one image (jpg, png, webp, ...) and optionally a label from `.cls` (an integer as text) or
`.json` (an object with "label" or "cls", or a bare integer).

Uncompressed shards (the usual kind) are listed by their headers alone and their images read by offset in the
decoding processes; compressed ones are read front to back by the main process.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import numpy as np

from selfsup.data.build import DECODER, Plan, build_cached
from selfsup.data.cache import cache_key
from selfsup.data.files import IMAGE_EXTENSIONS, Fingerprint, file_stamps, list_tar
from selfsup.errors import SelfSupError
from selfsup.progress import say

IMAGE_SUFFIXES = [".jpg", ".jpeg", ".png", ".webp"] + sorted(IMAGE_EXTENSIONS - {".jpg", ".jpeg", ".png", ".webp"})
LABEL_SUFFIXES = ("cls", "json")
SPLIT_NAMES = {"train": ("train",), "test": ("test", "val", "validation", "valid")}
_BRACE = re.compile(r"\{([^{}]*)\}")
EXAMPLE = "shards:DIR/train-{0000..0127}.tar"


def expand_braces(pattern: str) -> list[str]:
    """Expand {a..b} ranges (zero-padded when a bound is: {0000..0127}) and {x,y} lists, as WebDataset does."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        lo, hi = span.groups()
        width = max(len(lo), len(hi)) if (lo.startswith("0") and len(lo) > 1) or len(lo) == len(hi) else 0
        if int(lo) > int(hi):
            raise SelfSupError(f"shard range {{{body}}} in {pattern!r} runs backwards; write {{{hi}..{lo}}}")
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    elif "," in body:
        options = body.split(",")
    else:
        raise SelfSupError(f"cannot read {{{body}}} in the shard pattern {pattern!r}; use a range like "
                           "{0000..0127} or a list like {a,b}")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def shard_paths(pattern: str, split: str) -> list[Path]:
    """The shard files a pattern names ({split} in it becomes the split's name, e.g. train, test or val)."""
    if "{split}" not in pattern and split != "train":
        raise SelfSupError(f"shards:{pattern} names one set of shards, read as the train split; to read the {split!r} "
                           "split put {split} in the pattern, e.g. shards:DIR/{split}-{0000..0127}.tar")
    tried = []
    for name in SPLIT_NAMES.get(split, (split,)) if "{split}" in pattern else (None,):
        spec = pattern.replace("{split}", name) if name else pattern
        tried.append(spec)
        paths = []
        for expanded in expand_braces(spec):
            expanded = str(Path(expanded).expanduser())
            if glob.has_magic(expanded):
                paths += sorted(glob.glob(expanded))
            else:
                paths.append(expanded)
        missing = [p for p in paths if not Path(p).is_file()]
        if paths and not missing:
            return [Path(p) for p in paths]
        if name is None or (paths and len(missing) < len(paths)):
            what = f"{len(missing)} of the {len(paths)} shards are missing, e.g. {missing[0]}" if missing \
                else "no file matches it"
            raise SelfSupError(f"shard pattern {spec!r}: {what}; give existing .tar files, e.g. {EXAMPLE}")
    raise SelfSupError(f"no shards for the {split!r} split: nothing matches {' or '.join(tried)}")


def _key_and_suffix(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: the key is everything up to the first dot of the basename."""
    folder, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def _label(data: bytes, suffix: str, where: str) -> int:
    try:
        text = data.decode("utf-8").strip()
        value = int(text) if suffix == "cls" else json.loads(text)
        if isinstance(value, dict):
            value = value["label"] if "label" in value else value["cls"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(value)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        what = "an integer" if suffix == "cls" else 'an integer or an object with "label" or "cls"'
        raise SelfSupError(f"{where} does not hold a class label ({what} of at least 0); fix or remove it") from None
    return value


def _image_rank(suffix: str) -> int | None:
    """Which image member a sample uses when it has several (jpg first); None for a member that is no image."""
    last = "." + suffix.rsplit(".", 1)[-1]
    return IMAGE_SUFFIXES.index(last) if last in IMAGE_SUFFIXES else None


def load_shards(arg: str, split: str, size: int | None, bad_images: str, workers: int | None
                ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(images, labels, classes) of the samples in a set of tar shards, in shard order then archive order."""
    paths = shard_paths(arg, split)
    fingerprint = Fingerprint([str(p.resolve()) for p in paths])
    for p in paths:
        fingerprint.add(file_stamps(p.parent, [p.name]))

    def plan() -> Plan:
        names, sources, labels, archives, imageless = [], [], [], [], 0
        for path in paths:
            # Compressed shards are read front to back by the main process (uncompressed ones by offset in the
            # workers): their images are kept from this pass when small enough (files.KEEP_BYTES, per shard).
            random_access, entries, small, kept = list_tar(
                path, f"shard {path} is not a readable tar archive; give WebDataset-style .tar shards, e.g. {EXAMPLE}",
                read=lambda name: _key_and_suffix(name)[1] in LABEL_SUFFIXES,
                keep=lambda name: _image_rank(_key_and_suffix(name)[1]) is not None)
            samples: dict[str, dict] = {}
            for entry in entries:
                key, suffix = _key_and_suffix(entry.name)
                if key.rpartition("/")[2].startswith("._"):
                    continue  # macOS resource forks
                sample = samples.setdefault(key, {})
                rank = _image_rank(suffix)
                if rank is not None:
                    if rank < sample.get("rank", len(IMAGE_SUFFIXES)):
                        sample.update(rank=rank, entry=entry)
                elif suffix in LABEL_SUFFIXES and (suffix == "cls" or "label" not in sample):  # .cls over .json
                    sample["label"] = _label(small[entry.name], suffix, f"{path}/{entry.name}")
            if not random_access and kept is None:
                archives.append(str(path))
            # Archive order of the image members, so a compressed shard is read once, front to back.
            for sample in sorted((s for s in samples.values() if "entry" in s), key=lambda s: s["entry"].ordinal):
                entry = sample["entry"]
                names.append(f"{path}/{entry.name}")
                sources.append((str(path), entry.offset, entry.size) if random_access else
                               kept[entry.ordinal] if kept is not None else (len(archives) - 1, entry.ordinal))
                labels.append(sample.get("label", -1))
            imageless += sum("entry" not in s for s in samples.values())
        if imageless:
            say(f"{imageless} sample{'s' if imageless > 1 else ''} of the shards {arg!r} hold no image; left out")
        if not names:
            raise SelfSupError(f"no images in the shards {arg!r}; each sample needs an image member "
                               f"({', '.join(s[1:] for s in IMAGE_SUFFIXES)})")
        array = np.asarray(labels, dtype=np.int64)
        has_labels = bool((array >= 0).any())
        classes = [str(i) for i in range(int(array.max()) + 1)] if has_labels else []
        return Plan(names, sources, array if has_labels else None, classes, archives)

    key = cache_key(arg, split, size, bad_images, DECODER, fingerprint.hexdigest())
    source = f"shards {arg} ({split}{f', size {size}' if size else ''}" \
             f"{', skipping unreadable images' if bad_images == 'skip' else ''})"
    return build_cached(f"shards-{split}", key, plan, size, bad_images, workers,
                        what=f"shards {arg} ({split})", source=source)

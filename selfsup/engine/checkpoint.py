"""The run directory: its checks, verified checkpoints (the last two kept), and the metrics and eval logs.

A checkpoint is a plain torch dict (torch.load reads it) that also carries a sha256 of its own contents: every
tensor's bytes, dtype and shape and every other value, walked in order. Hashing runs at about 1.7 GB/s here (half
the cost of torch.save itself), and it turns a damaged file from a silently wrong model into a warning and the
previous checkpoint, which is kept beside the last one for that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch

from selfsup.engine.lock import LOCK
from selfsup.errors import SelfSupError, warn

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"  # the checkpoint before the last one: the fallback when the last is damaged
METRICS = "metrics.jsonl"
CLUSTERS = "clusters.png"  # a clustering method's largest clusters at the end of a run
CURVES = "curves.png"  # loss, lr and kNN against epochs, drawn at the end of a run (selfsup plot draws it too)
KEPT = "checkpoint-epoch{:04d}.pt"  # the periodic checkpoints of checkpoint.save_every
CONFIG = "config.yaml"
EVAL_LOG = "eval.jsonl"


def _save_synced(obj, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over it."""
    tmp = path.with_name(path.name + ".tmp")
    _save_synced(obj, tmp)
    os.replace(tmp, path)


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for value in obj:
            _feed(h, value)
    else:
        h.update(repr((type(obj).__name__, obj)).encode())


def state_digest(state: dict) -> str:
    """sha256 of a checkpoint's contents (tensors by their bytes, dtype and shape; other values by their repr)."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(run_dir: Path, state: dict, replace_damaged: bool = False) -> None:
    """Write checkpoint.pt atomically with its digest; the one it replaces becomes checkpoint.prev.pt (unless it is
    known to be damaged: then it is simply replaced, and checkpoint.prev.pt stays the good one it fell back to)."""
    run_dir = Path(run_dir)
    state = _to_cpu(state)  # one copy off the device, hashed and saved from the same tensors
    path, tmp = run_dir / CHECKPOINT, run_dir / (CHECKPOINT + ".tmp")
    try:
        _save_synced({**state, "digest": state_digest(state)}, tmp)
        if path.exists() and not replace_damaged:
            _keep_as_previous(path, run_dir / PREVIOUS)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
        raise SelfSupError(f"cannot write the checkpoint in {run_dir} ({reason}); the previous checkpoint is "
                           "kept") from None


def keep_checkpoint(run_dir: Path, epoch: int) -> Path:
    """checkpoint.pt also kept as checkpoint-epochNNNN.pt (checkpoint.save_every): a hard link, as the next save
    replaces checkpoint.pt by a rename and leaves this file alone; a copy where links are not supported."""
    path, kept = Path(run_dir) / CHECKPOINT, Path(run_dir) / KEPT.format(epoch)
    try:
        kept.unlink(missing_ok=True)
        try:
            os.link(path, kept)
        except OSError:
            shutil.copy2(path, kept)
    except OSError as e:
        raise SelfSupError(f"cannot keep epoch {epoch}'s checkpoint as {kept} ({e.strerror or e}); checkpoint.pt is "
                           "saved (resume with --resume)") from None
    return kept


def _keep_as_previous(path: Path, previous: Path) -> None:
    """checkpoint.pt becomes checkpoint.prev.pt without ever being absent: a hard link is renamed over the previous
    one (a reader, or a kill, between the steps still finds checkpoint.pt); a rename where links are not supported."""
    link = previous.with_name(previous.name + ".tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, previous)
    except OSError:
        os.replace(path, previous)


class DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be read or whose contents do not match its digest."""


def read_checkpoint(path: Path) -> dict:
    """One checkpoint file, verified against its digest (files written before digests existed load unverified)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — a truncated or garbled file fails in zip, pickle or storage code alike
        raise DamagedCheckpoint(f"cannot be read ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "method" not in ckpt or "epoch" not in ckpt:
        raise DamagedCheckpoint("is not a selfsup checkpoint")
    digest = ckpt.pop("digest", None)
    if digest is not None and digest != state_digest(ckpt):
        raise DamagedCheckpoint("does not match the checksum saved in it")
    return ckpt


def load_checkpoint(run_dir: str | Path) -> dict:
    """The run's last good checkpoint: checkpoint.pt, or checkpoint.prev.pt with a warning when the last is
    damaged or missing; a one-line error when there is none. The returned dict's "file" names the one read."""
    run_dir = Path(run_dir)
    damaged = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        if not path.is_file():
            if name == CHECKPOINT and (run_dir / PREVIOUS).is_file():
                damaged.append(f"{name} is missing")
            continue
        try:
            ckpt = read_checkpoint(path)
        except DamagedCheckpoint as e:
            damaged.append(f"{name} {e}")
            continue
        if damaged:
            warn(f"{run_dir}/{damaged[0]}; using {name} (epoch {ckpt['epoch']}) instead")
        ckpt["file"] = name
        return ckpt
    if damaged:
        raise SelfSupError(f"every checkpoint in {run_dir} is damaged ({'; '.join(damaged)}); start the run again "
                           "with --force")
    raise SelfSupError(f"no checkpoint in {run_dir}; give the directory of a pretraining run")


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run directory holds a checkpoint to resume from (the last or the previous one)."""
    return (run_dir / CHECKPOINT).is_file() or (run_dir / PREVIOUS).is_file()


def require_checkpoint(run_dir: Path) -> None:
    """A one-line error when a run to resume has no checkpoint (saying why when it stopped in its first epoch)."""
    if not has_checkpoint(run_dir):
        raise SelfSupError(f"cannot resume: no {CHECKPOINT} in {run_dir}"
                           + (" (the run stopped before its first epoch ended; start it again with --force)"
                              if (run_dir / CONFIG).is_file() else ""))


def _contents(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name != LOCK] if path.is_dir() else []


def is_run_dir(path: Path) -> bool:
    """A selfsup run directory: one with a config or checkpoint written by a run (or a run --force replaced)."""
    return (any((path / name).is_file() for name in (CONFIG, CHECKPOINT, PREVIOUS))
            or any(p.name.startswith(ASIDE) for p in _contents(path)))


def check_run_dir(out: Path, resume: bool, force: bool, data_paths: list[Path] = ()) -> None:
    """Refuse what would lose a user's files: a run that exists (without `force`), a folder that is not a run, a
    folder that holds the data; `resume` needs a checkpoint to continue from."""
    if resume:
        require_checkpoint(out)
        return
    if not _contents(out):
        return
    if not force:
        raise SelfSupError(f"run directory {out} already exists; pass --resume to continue it or --force to "
                           "overwrite it")
    target = out.resolve()
    for data in data_paths:
        data = Path(data).expanduser().resolve()
        if data == target or target in data.parents:
            raise SelfSupError(f"--force would delete {data}, which this run reads its data from; choose another "
                               "--out")
    if not is_run_dir(out):
        raise SelfSupError(f"{out} is not a selfsup run (no {CONFIG} or {CHECKPOINT}) and not empty; --force only "
                           "replaces runs — choose another --out")


ASIDE = ".replaced-"  # prefix of the folder inside a run that holds the run --force replaces
# What selfsup writes into a run directory (and the study into a cell): a replaced run made only of these is deleted
# once the new run has a checkpoint; one holding anything else is kept (it may be the user's).
RUN_FILES = {CONFIG, CHECKPOINT, PREVIOUS, CHECKPOINT + ".tmp", METRICS, METRICS + ".tmp", EVAL_LOG, "tb",
             "samples.png", "report.md", "probes.png", "seeds.npz", "probes.json", "probes.tmp", "conv1_filters.npy",
             "conv1_change.npy",
             "backbone.safetensors", "backbone_torchvision.pth", "backbone_timm.safetensors", CURVES, CLUSTERS, "wandb",
             "wandb-id.txt"}


def move_aside(out: Path) -> Path | None:
    """Move an existing run's files into OUT/.replaced-<time>/ (kept until the new run has written its first
    checkpoint). Inside the run directory, so it works for a symlinked or mounted directory and `--out .` alike."""
    entries = _contents(out)
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = out / f"{ASIDE}{stamp}", 1
    while aside.exists():
        n += 1
        aside = out / f"{ASIDE}{stamp}-{n}"
    try:
        aside.mkdir()
        for entry in entries:
            os.rename(entry, aside / entry.name)
    except OSError as e:
        raise SelfSupError(f"cannot move the old run in {out} aside: {e.strerror or e}; its files are in {out} and "
                           f"{aside}") from None
    return aside


def foreign_files(aside: Path) -> list[str]:
    """The files of a replaced run that selfsup did not write (kept rather than deleted)."""
    return sorted(p.name for p in aside.iterdir()
                  if p.name not in RUN_FILES and not re.fullmatch(r"checkpoint-epoch\d+\.pt", p.name))


def restore_aside(out: Path, aside: Path) -> None:
    """Put a run moved aside back in place of the new run that failed before its first checkpoint."""
    for entry in _contents(out):
        if entry != aside:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in aside.iterdir():
        os.rename(entry, out / entry.name)
    aside.rmdir()


def _ends_mid_line(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def append_jsonl(path: Path, entry: dict) -> None:
    """One JSON line appended; a partial last line (a killed writer) is closed first, never appended onto."""
    line = json.dumps(entry) + "\n"
    with open(path, "a") as f:
        f.write(("\n" if _ends_mid_line(path) else "") + line)


def read_jsonl(path: Path) -> list[dict]:
    """Every line of a JSON-lines log that parses; damaged lines are skipped with a warning naming them."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        warn(f"{path}: skipped {len(bad)} damaged line(s) ({', '.join(map(str, bad[:5]))})")
    return rows


def append_metrics(out: Path, metrics: dict) -> None:
    """One line of metrics.jsonl."""
    append_jsonl(out / METRICS, metrics)


def write_metrics(out: Path, history: list[dict]) -> None:
    """metrics.jsonl rewritten from a checkpoint's history: every epoch up to it, none lost, none from after it."""
    path = out / METRICS
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(m) + "\n" for m in history))
    os.replace(tmp, path)


def read_metrics(out: Path, steps: bool = False) -> list[dict]:
    """The epoch lines of a run's metrics.jsonl, and with `steps` the per-step rows (log_steps: rows with "step")
    too, in file order (a damaged line is skipped with a warning)."""
    rows = read_jsonl(Path(out) / METRICS)
    return rows if steps else [r for r in rows if "step" not in r]


__all__ = ["CHECKPOINT", "PREVIOUS", "METRICS", "CONFIG", "CURVES", "CLUSTERS", "KEPT", "EVAL_LOG", "ASIDE",
           "RUN_FILES", "keep_checkpoint", "save_atomic", "save_checkpoint", "load_checkpoint", "read_checkpoint",
           "state_digest", "has_checkpoint", "require_checkpoint", "is_run_dir", "check_run_dir", "move_aside",
           "restore_aside", "foreign_files", "append_jsonl", "read_jsonl", "append_metrics", "write_metrics",
           "read_metrics", "DamagedCheckpoint"]

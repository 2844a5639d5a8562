"""The run lock: one writer per run directory.

The lock is a file in the run directory, `selfsup.lock`, that holds the writer's pid, host, start time and command,
and that the writer keeps locked with flock(2) while it runs. The kernel frees that lock when the process dies,
however it dies (kill -9 included), so a lock file left behind by a dead process on this machine is stale by
construction and is taken over, with a warning naming the process that left it. A lock file written on another
host cannot be checked from here (network file systems differ in what they lock), so it is never taken over: the
error names the file to delete once that process is known to be gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from selfsup.errors import SelfSupError, warn

LOCK = "selfsup.lock"
_HELD: dict[tuple[int, int], list] = {}  # (device, inode) -> [open file, count]: locks this process holds


def _holder_text(holder: dict) -> str:
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}{command}"


def _read_holder(f) -> dict:
    f.seek(0)
    try:
        holder = json.loads(f.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """The lock of one run directory, taken by `acquire` (creating the directory if needed) and freed by `release`.
    A process may take the same lock again (a study cell around its training run); it is freed at the last release.

    Args:
        run_dir: the run directory.

    Example:
        >>> with RunLock("runs/simclr"):
        ...     ...  # write into the run
    """

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK
        self.created_dir = False  # this lock made the directory (so an aborted run can remove it again)
        self._key: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise a one-line SelfSupError naming the process that holds it."""
        for parent in [self.dir, *self.dir.parents]:
            if parent.exists() and not parent.is_dir():
                where = "is a file" if parent == self.dir else f"is under {parent}, which is a file"
                raise SelfSupError(f"run directory {self.dir} {where}; give a directory for the run")
        try:
            if not self.dir.exists():
                self.dir.mkdir(parents=True)
                self.created_dir = True
        except FileExistsError:  # made by another process just now: the lock below decides
            pass
        except OSError as e:
            raise SelfSupError(f"cannot create run directory {self.dir}: {e.strerror or e}") from None
        for _ in range(5):
            try:
                f = open(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
            except OSError as e:
                raise SelfSupError(f"cannot write in run directory {self.dir}: {e.strerror or e}") from None
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino)
            if key in _HELD:  # this process holds it already (nested use): share it
                f.close()
                _HELD[key][1] += 1
                self._key = key
                return self
            holder = _read_holder(f)
            foreign = holder.get("host") not in (None, socket.gethostname())
            try:
                if foreign:
                    raise BlockingIOError
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                hint = "once that process is gone (it runs on another host, which cannot be checked from here)" \
                    if foreign else "if that process is gone"
                raise SelfSupError(f"run directory {self.dir} is in use by {_holder_text(holder)}; wait for it to "
                                   f"finish, or delete {self.path} {hint}") from None
            try:
                same = os.stat(self.path).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the file we locked was removed by its releasing holder meanwhile: lock the new one
                f.close()
                continue
            holder = _read_holder(f)  # as it is now that we hold the lock
            if holder.get("pid"):
                warn(f"taking over the stale lock of {_holder_text(holder)} in {self.dir} (that process no longer "
                     "runs)")
            argv = sys.argv or [""]
            f.seek(0)
            f.truncate()
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "command": " ".join([Path(argv[0]).name, *argv[1:]])}, f)
            f.flush()
            _HELD[key] = [f, 1]
            self._key = key
            return self
        raise SelfSupError(f"could not take the lock {self.path}: other processes keep replacing it")

    def release(self) -> None:
        """Free the lock if this process holds it: the file is removed while still locked, so a process that opened
        it meanwhile sees it gone and locks a new one (the file may have moved with its directory: no error)."""
        if self._key is None:
            return
        key, self._key = self._key, None
        entry = _HELD[key]
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[key]
        f = entry[0]
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == key:
                self.path.unlink()
        except OSError:
            pass
        f.close()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK", "RunLock"]

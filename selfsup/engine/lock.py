"""The run lock: one writer per run directory.

A lock file in the run directory holds the writer's pid, host and start time. It is created with O_EXCL, so of two
processes that start on one directory exactly one gets it; the other is refused with a line naming the holder. A
lock left by a process that died (kill -9, a crashed node) is stale when its pid no longer runs on this host, or
runs but started at another time (a reused pid); it is then taken over with a warning. A lock from another host
cannot be checked from here, so it is never taken over: the message says which file to delete.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from selfsup.errors import SelfSupError, warn

LOCK = "selfsup.lock"
_HELD: dict[Path, int] = {}  # locks this process holds, with how many RunLocks hold each (a study cell around fit)


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder_text(holder: dict) -> str:
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}{command}"


class RunLock:
    """The lock of one run directory, taken by `acquire` (creating the directory if needed) and freed by `release`.

    Args:
        run_dir: the run directory.

    Example:
        >>> lock = RunLock("runs/simclr").acquire()
        >>> try: ...  # write into the run
        ... finally: lock.release()
    """

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK
        self.created_dir = False  # this lock made the directory (so an aborted run can remove it again)
        self.held = False

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
        key = self.path.resolve()
        if key in _HELD:  # this process holds it already (nested use): share it
            _HELD[key] += 1
            self.held = True
            return self
        argv = sys.argv or [""]
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "process_start": _process_start(os.getpid()), "command": " ".join([Path(argv[0]).name, *argv[1:]])}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # removed meanwhile, or stale and removed: try again
                raise SelfSupError(f"run directory {self.dir} is in use by {_holder_text(holder)}; wait for it to "
                                   f"finish, or delete {self.path} if that process is gone") from None
            except OSError as e:
                raise SelfSupError(f"cannot write in run directory {self.dir}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            _HELD[key] = 1
            return self
        raise SelfSupError(f"could not take the lock {self.path}: other processes keep replacing it")

    def _holder(self) -> dict | None:
        """Who holds the existing lock file; None when the file is gone or its holder is dead (the file removed)."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SelfSupError(f"cannot read the run lock {self.path}: {e.strerror or e}") from None
        try:
            holder = json.loads(text)
            pid = int(holder["pid"])
        except (ValueError, KeyError, TypeError):
            # Being written this instant (the holder is between open and write), or garbage from a crash.
            if age < 10:
                time.sleep(0.2)
                return {"pid": "?", "host": "?", "started": "just now"} if self.path.exists() else None
            holder, pid = {}, None
        if pid is not None and holder.get("host") != socket.gethostname():
            return holder
        if pid is not None and _alive(pid) and _process_start(pid) in (None, holder.get("process_start")):
            return holder
        warn(f"taking over the stale lock of {_holder_text(holder) if pid is not None else 'an unreadable holder'} "
             f"in {self.dir} (that process no longer runs)")
        self.path.unlink(missing_ok=True)
        return None

    def release(self) -> None:
        """Free the lock if this process holds it (the run directory may have been renamed meanwhile: no error)."""
        if not self.held:
            return
        self.held = False
        key = self.path.resolve()
        _HELD[key] = _HELD.get(key, 1) - 1
        if _HELD[key] <= 0:
            del _HELD[key]
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK", "RunLock"]

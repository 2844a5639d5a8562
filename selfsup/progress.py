"""Progress that reads well everywhere: tqdm's bar on a terminal, plain timestamped lines in a log file.

A bar is a run of `\\r` updates: in a job log (stderr redirected to a file) it becomes one enormous line with no
newline until it closes. So when stderr is not a terminal, `Progress` writes nothing but one line every
`interval()` seconds (30 by default; a run's `log_seconds`, or `SELFSUP_LOG_SECONDS`):

    2026-11-26 23:50:01 epoch 3/10: 120/390 (31%) loss=1.2340 lr=0.1 | 412 img/s | ETA 1m05s

and one when it ends, for work that lasted longer than that. Short work prints nothing. `SELFSUP_PROGRESS=bar|lines|off`
overrides the choice. Every long loop of selfsup (training, labelling passes, k-means, kNN, features, probes, cache
builds, the bench) goes through this class; `say` is the one-off line (a terminal gets it bare, a log timestamped).

Example:
    >>> with Progress(len(chunks), "features", unit="img", per_step=512) as bar:
    ...     for chunk in chunks:
    ...         work(chunk)
    ...         bar.update()
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from tqdm import tqdm

MODES = ("bar", "lines", "off")
_state = {"interval": None, "enabled": True}


def interval() -> float:
    """Seconds between two progress lines in a log (a run's log_seconds, else $SELFSUP_LOG_SECONDS, else 30)."""
    if _state["interval"] is not None:
        return _state["interval"]
    try:
        return max(0.0, float(os.environ.get("SELFSUP_LOG_SECONDS", 30)))
    except ValueError:
        return 30.0


def set_interval(seconds: float | None) -> float | None:
    """Set the seconds between progress lines for this process (None: back to the environment's or 30); returns
    the setting it replaces."""
    before, _state["interval"] = _state["interval"], seconds
    return before


@contextlib.contextmanager
def shown(enabled: bool):
    """Within the block, progress is shown only when `enabled` (fit(progress=False) silences every pass inside)."""
    before = _state["enabled"]
    _state["enabled"] = before and enabled
    try:
        yield
    finally:
        _state["enabled"] = before


def mode(file=None) -> str:
    """bar on a terminal, lines elsewhere, off when silenced or on a process other than rank 0."""
    if not _state["enabled"] or int(os.environ.get("RANK", "0")) != 0:
        return "off"
    forced = os.environ.get("SELFSUP_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    file = file or sys.stderr
    try:
        return "bar" if file.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def say(message: str, file=None) -> None:
    """One line for the user on stderr: bare on a terminal (without breaking a bar), timestamped in a log."""
    how = mode(file)
    if how == "off":
        return
    tqdm.write(message if how == "bar" else f"{stamp()} {message}", file=file or sys.stderr)


def duration(seconds: float) -> str:
    """1h02m, 3m05s or 42s."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """A progress display over `total` steps, described by `desc`.

    Args:
        total: the number of steps (updates) the work takes.
        desc: what is going on, e.g. "epoch 3/10" or "SeLa labelling pass".
        unit: what a rate counts ("img" with per_step=batch size gives images/s).
        per_step: units per step, for the rate (default 1).
        enabled: False shows nothing (e.g. on a process other than rank 0).
        file: where to write (default stderr).
    """

    def __init__(self, total: int, desc: str, unit: str = "it", per_step: float = 1, enabled: bool = True,
                 file=None):
        self.total, self.desc, self.unit, self.per_step = max(0, int(total)), desc, unit, per_step
        self.file = file or sys.stderr
        self.mode = mode(self.file) if enabled else "off"
        self.done, self.fields, self.lines = 0, {}, 0
        self.start = self.last = time.monotonic()
        self.bar = (tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True, file=self.file)
                    if self.mode == "bar" else None)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close(failed=exc[0] is not None)

    def set(self, **fields) -> None:
        """Values shown beside the count (loss=..., lr=...), kept until replaced."""
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.set_postfix({k: _text(v) for k, v in self.fields.items()}, refresh=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines" and self.done < self.total:  # the last step's line is close()'s
            now = time.monotonic()
            if now - self.last >= interval():
                self.last = now
                self._line(now)

    def line(self, now: float | None = None, final: bool = False) -> str:
        """The progress line (without the timestamp)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.start
        parts = [f"{self.desc}: {self.done}/{self.total}" + (f" ({100 * self.done / self.total:.0f}%)"
                                                             if self.total else "")]
        if self.fields:
            parts[0] += " " + " ".join(f"{k}={_text(v)}" for k, v in self.fields.items())
        if elapsed > 0 and self.done:
            parts.append(f"{self.done * self.per_step / elapsed:.1f} {self.unit}/s")
        if final:
            parts.append(f"done in {duration(elapsed)}")
        elif self.done and self.total > self.done:
            parts.append(f"ETA {duration(elapsed / self.done * (self.total - self.done))}")
        return " | ".join(parts)

    def _line(self, now: float, final: bool = False) -> None:
        self.lines += 1
        print(f"{stamp()} {self.line(now, final)}", file=self.file, flush=True)

    def close(self, failed: bool = False) -> None:
        """End the display; in a log, work that printed progress lines or took longer than their interval says
        it ended (unless it failed)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and not failed:
            now = time.monotonic()
            if self.lines or now - self.start >= interval():
                self._line(now, final=True)
        self.mode = "off"


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


__all__ = ["Progress", "say", "interval", "set_interval", "shown", "mode", "duration", "stamp"]

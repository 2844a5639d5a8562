"""Where a run's numbers and pictures go besides metrics.jsonl: TensorBoard and/or Weights & Biases (`logger`).

Both get the same things: the resolved config (TensorBoard as text and hparams, W&B as the run's config), every
logged scalar (train/* per log_every steps, epoch/* per epoch, eval/* from `selfsup eval`), and images (the
method's samples.png, a grid of augmented training views, cluster grids) with the step they belong to.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import numpy as np
import yaml

from selfsup.errors import SelfSupError

LOGGERS = ("tensorboard", "wandb")
WANDB_ID = "wandb-id.txt"  # the W&B run id of a run directory, so --resume continues the same W&B run


def check_loggers(names) -> list[str]:
    """The `logger` list checked: known names, and wandb importable when asked for."""
    names = [names] if isinstance(names, str) else list(names or [])
    for name in names:
        if name not in LOGGERS:
            raise SelfSupError(f"logger {name!r} is not known; use a list of {' and '.join(LOGGERS)} (or [])")
    if "wandb" in names:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise SelfSupError("logger wandb needs the wandb package: pip install 'selfsup[wandb]' (or drop wandb "
                               "from logger)") from None
    return names


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; lists as text (hparams take numbers, strings and bools)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        elif value is None or isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


class TensorBoard:
    """TensorBoard event files in RUN/tb."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def config(self, config: dict, metrics: list[str]) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
        # hparams into this run's own event file (SummaryWriter.add_hparams would open a sub-run per call).
        for summary in hparams(_flat(config), {m: 0.0 for m in metrics}):
            self.writer.file_writer.add_summary(summary)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """A W&B run stored under RUN/wandb; its id is kept in RUN/wandb-id.txt so a resumed run continues it."""

    def __init__(self, out: Path, settings, config: dict, resume: bool):
        import wandb

        id_file, folder = out / WANDB_ID, out / "wandb"
        known = id_file.read_text().strip() if resume and id_file.is_file() else None
        run_id = known or secrets.token_hex(4)  # W&B ids are short [a-z0-9] strings
        made = not folder.exists()
        folder.mkdir(exist_ok=True)
        try:
            self.run = wandb.init(project=settings.project, entity=settings.entity, name=settings.name or out.name,
                                  tags=list(settings.tags) or None, dir=str(out), id=run_id, resume="allow",
                                  config=config)
        except Exception as e:  # noqa: BLE001 - W&B raises its own kinds (no login, no network, bad entity)
            if made:  # nothing of a run that never started stays behind (a retry then starts clean)
                shutil.rmtree(folder, ignore_errors=True)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise SelfSupError(f"W&B could not start a run ({first}); log in with `wandb login`, set "
                               "WANDB_MODE=offline, or drop wandb from logger") from None
        if known is None:
            id_file.write_text(run_id + "\n")
        # W&B's own step must only grow, and train/* (per step) and epoch/* (per epoch) count differently: each
        # family gets its own x-axis.
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("epoch")
        for family in ("epoch/*", "eval*", "samples", "clusters"):
            self.run.define_metric(family, step_metric="epoch")
        self.wandb = wandb

    def config(self, config: dict, metrics: list[str]) -> None:
        pass  # given to wandb.init

    def scalar(self, tag: str, value: float, step: int) -> None:
        axis = "train/step" if tag.startswith("train/") else "epoch"
        self.run.log({tag: value, axis: step})

    def text(self, tag: str, text: str, step: int) -> None:
        self.run.summary[tag] = text

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(image), "train/step" if tag.startswith("train/") else "epoch": step})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """Every logger a run asked for, behind one interface (none when the run writes no directory)."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def config(self, config: dict, metrics: list[str] = ("epoch/loss", "epoch/knn_top1")) -> None:
        for lg in self.loggers:
            lg.config(config, list(metrics))

    def scalar(self, tag: str, value: float, step: int) -> None:
        for lg in self.loggers:
            lg.scalar(tag, float(value), step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.scalar(f"{prefix}/{key}", value, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        for lg in self.loggers:
            lg.text(tag, text, step)

    def image(self, tag: str, image: np.ndarray, step: int = 0) -> None:
        """An (H,W,3) uint8 picture."""
        for lg in self.loggers:
            lg.image(tag, image, step)

    def flush(self) -> None:
        for lg in self.loggers:
            lg.flush()

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
        self.loggers = []


def open_loggers(names, out: Path, config: dict, wandb_settings=None, resume: bool = False) -> Loggers:
    """The loggers of run directory `out`: `names` from tensorboard and wandb."""
    loggers = Loggers([])
    try:
        # W&B first: it is the one that may refuse to start, and then no TensorBoard file is left behind either.
        for name in sorted(check_loggers(names), key=lambda n: n != "wandb"):
            loggers.loggers.append(TensorBoard(out / "tb") if name == "tensorboard"
                                   else Wandb(out, wandb_settings, config, resume))
    except BaseException:
        loggers.close()  # those opened before the one that failed
        raise
    return loggers


def log_eval_result(run: Path, cfg, protocol: str, result: dict, epoch: int, random_init: bool = False) -> None:
    """An evaluation's numbers into run directory `run`'s TensorBoard (eval/<protocol>/... at the epoch of the
    checkpoint measured), and the whole result as text; a logger that fails costs a warning, never the result (the
    caller keeps it elsewhere too). Not into W&B: an evaluation may run beside the training that holds the run's
    W&B run open, and two writers of one W&B run clobber each other."""
    from selfsup.errors import warn

    prefix = f"eval{'_random_init' if random_init else ''}/{protocol}"
    values = {}
    for key, value in result.items():
        if isinstance(value, dict):
            values.update({f"{prefix}/{key}/{k}": v for k, v in value.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[f"{prefix}/{key}"] = value
    try:
        logs = open_loggers([n for n in cfg.logger if n == "tensorboard"], Path(run), {}, cfg.wandb, resume=True)
        try:
            for tag, value in values.items():
                logs.scalar(tag, value, epoch)
            logs.text(prefix, "`" + json.dumps(result) + "`", epoch)
        finally:
            logs.close()
    except Exception as e:  # noqa: BLE001 - logging is a copy of a result kept elsewhere
        first = (str(e).strip().splitlines() or [""])[0][:200]
        warn(f"cannot log the {protocol} result to the loggers of {run} ({type(e).__name__}: {first})")


__all__ = ["log_eval_result", "Loggers", "TensorBoard", "Wandb", "open_loggers", "check_loggers", "LOGGERS", "WANDB_ID"]

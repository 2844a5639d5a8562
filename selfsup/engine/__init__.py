"""The training engine: `fit` (the loop), optimizers and schedules, the run directory and its checkpoints."""

from selfsup.engine.checkpoint import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    load_checkpoint,
    read_metrics,
    save_atomic,
    save_checkpoint,
)
from selfsup.engine.data import as_image_array, run_images, source_images, training_data
from selfsup.engine.lock import RunLock
from selfsup.engine.loop import end_of_epoch, fit, load_run, pretrain, resume_config, train_one_epoch
from selfsup.engine.optim import LARS, Schedule, build_optimizer, lr_at

__all__ = ["fit", "pretrain", "load_run", "train_one_epoch", "end_of_epoch", "LARS", "Schedule", "build_optimizer",
           "lr_at", "CHECKPOINT", "CONFIG", "METRICS", "load_checkpoint", "read_metrics", "save_atomic",
           "save_checkpoint", "resume_config", "RunLock",
           "as_image_array", "source_images", "training_data", "run_images"]

"""Typed run configuration: dataclasses, YAML recipes and `key=value` overrides. Nothing is rescaled silently.

A run's config has the common sections (data, model, augment, optim, eval) and one more: the section of its
method, named after it (`simclr:`, `sela:`, ...) and typed by the dataclass that lives in the method's own
file. `cfg.section()` is the run's own method section; `cfg.sela` reads the `sela` section by name. Sections
of other methods may be given (a recipe switched with `method=...`); they are checked, and only the run's own
is written to its `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from selfsup.augmentation import AugmentConfig, single_image_recipe
from selfsup.errors import SelfSupError, warn

IN_MEMORY = "memory"  # data.source of a run given its images as an array (selfsup.fit)

# Every config dataclass states the allowed values of its numeric keys in a class attribute
#     RANGES: ClassVar[dict[str, str]] = {"lr": "[0, inf)", "dropout": "[0, 1)", "crop_scale": "(0, 1] ordered"}
# an interval, checked on the value (on each element of a tuple or list; None, "not set", is never checked), and
# "ordered" for a (low, high) pair that must have low <= high. check_config enforces them for every section.


@dataclass
class DataConfig:
    """What to train on."""

    RANGES: ClassVar[dict[str, str]] = {"size": "[1, inf)", "samples_per_epoch": "[1, inf)", "num_images": "[1, inf)",
                                        "device_budget_gb": "[0, inf)", "workers": "[1, inf)"}
    ALIASES: ClassVar[dict[str, str]] = {"cache_size": "size"}  # data.cache_size=S is data.size=S

    source: str = "folder:../shared/data/cifar10-jpeg.tar.gz"
    split: str = "train"
    root: str | None = None  # where official datasets live (default: the cache folder)
    # The decoded cache's resolution (also data.cache_size): the shorter side resized to S (bicubic), then the centre
    # S x S kept, so the ends of the longer side are cropped away; None keeps the source size (all images must agree).
    size: int | None = None
    bad_images: str = "error"  # a file that cannot be decoded: error (naming it) | skip (listed beside the cache)
    workers: int | None = None  # processes decoding a source into the cache (None: one per core)
    # Training images are copied to the device when they fit this many GB (None: half of the free device memory, or
    # a quarter of the available RAM on the CPU); larger splits are streamed from the cache in batches. 0: always
    # stream.
    device_budget_gb: float | None = None
    samples_per_epoch: int | None = None  # draw this many indices with replacement per epoch (e.g. one image)
    download: bool = False
    imbalance: str | None = None  # light | heavy: keep 100% of class 0 down to 50% / 10% of the last class
    num_images: int | None = None  # train on a seeded random subset of this many source images (e.g. 1 or 10)
    # Fewer source images than a batch (e.g. one photograph): every batch is made of new images synthesised
    # from them by `single_image` augmentation, and the method draws its own views from those. Methods that keep
    # something per sample (sela, deepcluster, exemplar, ...) get samples_per_epoch images synthesised once instead.
    synthesize: bool | None = None  # None: on when the source holds fewer images than batch_size
    single_image: AugmentConfig = field(default_factory=single_image_recipe)


@dataclass
class ModelConfig:
    """The backbone."""

    RANGES: ClassVar[dict[str, str]] = {"input_size": "[1, inf)", "dropout": "[0, 1)", "width": "(0, inf)",
                                        "patch_size": "[1, inf)"}

    backbone: str = "resnet18"
    cifar_stem: bool = True
    input_size: int = 32
    bn: bool = True
    dropout: float = 0.0  # before the fully connected layers of the Exemplar-CNN nets and alexnet_imagenet
    width: float = 1.0  # channel multiplier of alexnet_small (0.5: a quarter of the compute, for CPU studies)
    patch_size: int | None = None  # Vision Transformers: None is 16 from 128 px up, 8 from 64 px, else 4
    sobel: bool = False  # the AlexNets: grayscale + Sobel derivatives in front of conv1 (DeepCluster's input)
    # alexnet_imagenet: fc6 and fc7 as RotNet's AlexNet (Gidaris et al. 2018): linear without bias + batch norm + ReLU,
    # no dropout (model.dropout must be 0)
    fc_bn: bool = False


@dataclass
class OptimConfig:
    """Optimizer and schedule: linear warm-up, then cosine to min_lr or steps. lr is used as given (never rescaled)."""

    RANGES: ClassVar[dict[str, str]] = {
        "betas": "[0, 1)",
        "lr": "[0, inf)",  # 0 is allowed: a run that moves no weight (throughput, a pipeline check) is a real use
        "step_epochs": "[0, inf)",
        "gamma": "(0, inf)",
        "momentum": "[0, 1)",
        "weight_decay": "[0, inf)",
        "weight_decay_end": "[0, inf)",
        "warmup_epochs": "[0, inf)",
        "min_lr": "[0, inf)",
        "lars_eta": "(0, inf)",
    }

    name: str = "sgd"  # sgd | lars | adam | adamw (adam adds weight decay to the gradient, adamw decouples it)
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    lr: float = 0.06
    schedule: str = "cosine"  # cosine | step (lr times gamma at each of step_epochs)
    step_epochs: list[float] = field(default_factory=list)
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False  # sgd
    weight_decay: float = 5e-4
    weight_decay_end: float | None = None  # cosine from weight_decay to this over the run (DINO: 0.04 -> 0.4)
    warmup_epochs: float = 10.0
    min_lr: float = 0.0
    exclude_bias_norm: bool = True  # no weight decay (nor LARS adaptation) on biases and norm layers
    lars_eta: float = 0.001


@dataclass
class EvalConfig:
    """kNN monitor and probes: a labelled source with train/test splits."""

    RANGES: ClassVar[dict[str, str]] = {
        "size": "[1, inf)",
        "knn_k": "[1, inf)",
        "knn_t": "(0, inf)",
        "knn_every": "[0, inf)",
        "probe_dims": "[1, inf)",
        "probe_epochs": "[1, inf)",
        "probe_lr": "(0, inf)",
        "probe_weight_decay": "[0, inf)",
        "probe_batch_size": "[1, inf)",
        "batch_size": "[1, inf)",
        "few_labels": "[0, inf)",
        "few_label_draws": "[1, inf)",
        "val_fraction": "(0, 1)",
    }

    source: str | None = None  # default: the training source when it has labels
    train_split: str = "train"
    # heldout: a seeded, class-balanced val_fraction of the train split (the rest is the train side), to select
    # settings on without the test split
    test_split: str = "test"
    root: str | None = None
    size: int | None = None  # decode-time resize of the eval source
    knn_k: int = 200
    knn_t: float = 0.1
    knn_every: int = 5  # epochs between kNN monitors (0: only at the end)
    probe_dims: int = 9600  # each tap is average-pooled to about this many dimensions
    probe_epochs: int = 30
    probe_lr: float = 1e-3
    probe_weight_decay: float = 5e-4
    probe_batch_size: int = 256
    batch_size: int = 512  # feature extraction
    few_labels: int = 0  # studies: also probe every layer with this many labels per class (0: not done)
    few_label_draws: int = 5  # ... over this many seeded class-balanced draws (mean and std reported)
    # Share of the labelled train split held out (seeded, class-balanced) where a protocol selects anything (its
    # epoch), and for test_split=heldout; the test split is read once, for the final number.
    val_fraction: float = 0.1


@dataclass
class CheckpointConfig:
    """What a run keeps besides its last two checkpoints."""

    RANGES: ClassVar[dict[str, str]] = {"save_every": "[0, inf)"}

    save_every: int = 0  # also keep checkpoint-epochNNNN.pt every this many epochs (0: only the last two)


@dataclass
class WandbConfig:
    """Weights & Biases, when `logger` lists wandb (pip install 'selfsup[wandb]'); WANDB_MODE=offline works too."""

    project: str = "selfsup"
    entity: str | None = None
    name: str | None = None  # default: the run directory's name
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    """One run: the common sections, and the section of its method (see the module docstring)."""

    RANGES: ClassVar[dict[str, str]] = {
        "epochs": "[1, inf)",
        "batch_size": "[1, inf)",
        "seed": "[0, inf)",  # numpy's generators (data.num_images, data.imbalance) take no negative seed
        "log_every": "[1, inf)",
        "log_seconds": "(0, inf)",
        "max_minutes": "[0, inf)",  # 0: stop after the first epoch (then --resume), a documented use
    }

    method: str = "simclr"
    imports: list[str] = field(default_factory=list)  # modules (or .py files) imported first: your own methods
    epochs: int = 100
    batch_size: int = 512  # global, across all processes
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    channels_last: str = "auto"  # auto (= true: faster on CPU and CUDA alike) | true | false
    compile: bool = False
    sync_bn: bool = False  # under torchrun on CUDA: batch-norm statistics over the global batch (SyncBatchNorm)
    log_every: int = 20  # steps between the loss/lr values logged (and per-step metrics rows)
    log_seconds: float | None = None  # progress lines in a job log every this many s (None: $SELFSUP_LOG_SECONDS or 30)
    log_steps: bool = False  # also write a metrics.jsonl row every log_every steps (rows with "step")
    logger: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard and/or wandb, or []
    max_minutes: float | None = None  # stop cleanly after the epoch that crosses this wall-clock budget
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # Method sections by method name, made on first use; not a key of its own (recipes write `simclr: {...}`).
    method_sections: dict[str, Any] = field(default_factory=dict, repr=False)

    def section(self, name: str | None = None) -> Any:
        """The config section of method `name` (default: this run's method), with its defaults until set."""
        name = name or self.method
        if name not in self.method_sections:
            from selfsup.methods.registry import get_method

            self.method_sections[name] = get_method(name).config_class()
        return self.method_sections[name]

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: `cfg.sela` is the sela section.
        if name.startswith("_") or name == "method_sections":
            raise AttributeError(name)
        from selfsup.methods.registry import find_method

        if find_method(name) is None:
            raise AttributeError(f"'Config' object has no attribute {name!r}")
        return self.section(name)


# A decimal number with an optional exponent. PyYAML follows YAML 1.1, where a float needs a dot and a signed
# exponent, so 1e6, 1e-3 and 1.0e6 arrive as strings; nan, inf and 1_000 are left out on purpose.
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _number(value) -> float | None:
    """value as a float when it is a number or a string written as one (1e6, -2e+5), else None."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            return math.inf
    return None


def _coerce(value, tp, where: str):
    """Check/convert a YAML value to the dataclass field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        kinds = [arg for arg in args if arg is not type(None)]
        if len(kinds) == 1:  # X | None: X's own message says more than the union's
            return _coerce(value, kinds[0], where)
        for arg in kinds:
            try:
                return _coerce(value, arg, where)
            except SelfSupError:
                continue
        raise SelfSupError(f"{where}: {value!r} is not a valid {tp}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise SelfSupError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, typing.get_args(tp)[0], where) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(tp)):
            raise SelfSupError(f"{where}: expected a list of {len(typing.get_args(tp))} numbers, got {value!r}")
        return tuple(_coerce(v, t, where) for v, t in zip(value, typing.get_args(tp)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SelfSupError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        # A count written in scientific notation (data.samples_per_epoch=1e6, which YAML 1.1 leaves a string) is
        # taken when it is a whole number; a float value (2.5, or 50000.0) in a count is refused as a likely slip.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _number(value) if isinstance(value, str) else None
        if number is not None and math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
            return int(number)
        raise SelfSupError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = _number(value)
        if number is None:
            raise SelfSupError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise SelfSupError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float, bool)):
            return str(value).lower() if isinstance(value, bool) else str(value)
        raise SelfSupError(f"{where}: expected a string, got {value!r}")
    return value


def _fields(obj) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(obj) if f.name != "method_sections"]


def _merge_section(obj, updates, path: str):
    if not isinstance(updates, dict):
        first = next(iter(f.name for f in _fields(obj)), "key")
        raise SelfSupError(f"{path} is a section; set its keys, e.g. {path}.{first}=...")
    return _merge(obj, updates, path + ".")


def _merge(obj, updates: dict, where: str = ""):
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in _fields(obj)}
    if isinstance(obj, Config):
        # Imports first (they may register the method), then the method, then everything else.
        updates = dict(updates)
        if "imports" in updates:
            obj.imports = _coerce(updates.pop("imports"), hints["imports"], "imports")
            import_modules(obj.imports)
        if "method" in updates:
            obj.method = _coerce(updates.pop("method"), hints["method"], "method")
    aliases = getattr(type(obj), "ALIASES", {})
    for key, value in updates.items():
        key = aliases.get(key, key)
        path = f"{where}{key}"
        if key not in names:
            if isinstance(obj, Config) and _is_method(key):
                _merge_section(obj.section(key), value, path)
                continue
            valid = sorted(names - {"imports"} if isinstance(obj, Config) else names)
            hint = "; a method's own keys go in its section, e.g. simclr.temperature" if isinstance(obj, Config) else ""
            raise SelfSupError(f"unknown config key {path!r}; valid keys here: {', '.join(valid)}{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge_section(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))
    return obj


def _is_method(name: str) -> bool:
    from selfsup.methods.registry import find_method

    return find_method(name) is not None


def import_modules(names: list[str]) -> None:
    """Import each module (a dotted name, or a path to a .py file): where methods outside selfsup register."""
    for name in names:
        try:
            if name.endswith(".py"):
                path = Path(name).expanduser().resolve()
                if not path.is_file():
                    raise SelfSupError(f"imports: {name} does not exist")
                loaded = sys.modules.get(path.stem)
                if loaded is not None:
                    if Path(getattr(loaded, "__file__", "") or "").resolve() != path:
                        raise SelfSupError(f"imports: {name} would be module {path.stem!r}, which is already "
                                           f"imported from {getattr(loaded, '__file__', 'elsewhere')}; rename the file")
                    continue
                spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except SelfSupError:
            raise
        except Exception as e:  # noqa: BLE001 — whatever the module raised, the user needs one line naming it
            raise SelfSupError(f"imports: cannot import {name!r}: {type(e).__name__}: {e}") from None


def parse_overrides(pairs: list[str]) -> dict:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}; values are parsed as YAML."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SelfSupError(f"override {pair!r} must look like key=value (e.g. epochs=50 or optim.lr=0.3)")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def apply_overrides(cfg: Config, pairs: list[str]) -> Config:
    """Apply `key=value` overrides to an existing config (e.g. one loaded from a run)."""
    _merge(cfg, parse_overrides(pairs))
    check_config(cfg)
    return cfg


def read_yaml(path: str | Path, what: str = "recipe", example: str = "recipes/simclr_cifar10.yaml") -> dict:
    """A YAML file that must hold a mapping; a missing file or bad YAML is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise SelfSupError(f"{what} {path} does not exist; give a YAML file such as {example}")
    try:
        # utf-8-sig: YAML is UTF-8 whatever the locale says, and editors on Windows may start it with a BOM.
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as e:
        raise SelfSupError(f"{what} {path} is not UTF-8 text (byte {e.start} cannot be read); "
                           "save it as UTF-8") from None
    except OSError as e:
        raise SelfSupError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SelfSupError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SelfSupError(f"{what} {path} must be a mapping of keys")
    return data


def update_config(cfg: Config, updates: dict) -> Config:
    """Merge a nested dict of config keys into cfg (checked and coerced like a recipe)."""
    _merge(cfg, updates)
    check_config(cfg)
    return cfg


def load_config(recipe: str | Path | None = None, overrides: list[str] | dict | None = None,
                check: bool = True) -> Config:
    """Defaults, then the recipe YAML, then the overrides; range-checked unless `check` is False."""
    cfg = Config()
    if recipe is not None:
        _merge(cfg, read_yaml(recipe, "recipe", "recipes/simclr_cifar10.yaml"))
    if overrides:
        _merge(cfg, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    # Checked once, after the overrides: a recipe's value may be out of range only until an override fixes it.
    if check:
        check_config(cfg)
    return cfg


_INTERVAL = re.compile(r"([\[(])\s*([-+\w.]+)\s*,\s*([-+\w.]+)\s*([\])])(\s+ordered)?")


def _interval_text(spec: str) -> tuple[str, float, float, bool, bool, bool]:
    """A RANGES spec -> (how to say it, low, high, low included, high included, ordered pair)."""
    m = _INTERVAL.fullmatch(spec.strip())
    if m is None:
        raise ValueError(f"range {spec!r} must look like [0, 1), (0, inf) or (0, 1] ordered")
    lo_text, hi_text = m[2], m[3]
    lo, hi, lo_in, hi_in = float(lo_text), float(hi_text), m[1] == "[", m[4] == "]"
    if math.isinf(hi) and math.isinf(lo):
        text = "a finite number"
    elif math.isinf(hi):
        text = f"at least {lo_text}" if lo_in else ("positive" if lo == 0 else f"greater than {lo_text}")
    else:
        text = f"in {m[1]}{lo_text}, {hi_text}{m[4]}"
    return text, lo, hi, lo_in, hi_in, m[5] is not None


def _shown(value) -> str:
    return f"[{', '.join(_shown(v) for v in value)}]" if isinstance(value, (list, tuple)) else repr(value)


def _check_section(obj, prefix: str) -> None:
    """Every numeric key of a config section finite and inside its RANGES; nested sections too."""
    ranges = getattr(type(obj), "RANGES", {})
    names = {f.name for f in _fields(obj)}
    if set(ranges) - names:  # a typo in a RANGES table would otherwise leave its key unchecked
        raise TypeError(f"{type(obj).__name__}.RANGES names {sorted(set(ranges) - names)}, which are not its fields")
    for f in _fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_section(value, key + ".")
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if isinstance(v, float) and not math.isfinite(v):
                raise SelfSupError(f"{key} must be a finite number, got {_shown(value)}")
        if value is None or f.name not in ranges:
            continue
        text, lo, hi, lo_in, hi_in, ordered = _interval_text(ranges[f.name])
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SelfSupError(f"{key} must be a number ({text}), got {_shown(value)}")
            if not ((lo <= v if lo_in else lo < v) and (v <= hi if hi_in else v < hi)):
                raise SelfSupError(f"{key} must be {text}, got {_shown(value)}")
        if ordered and len(items) == 2 and items[0] > items[1]:
            raise SelfSupError(f"{key} is a range (low, high) and needs low <= high, got {_shown(value)}")


def check_config(cfg: Config) -> None:
    """Check every value of cfg against its section's RANGES (the common sections and each method section held):
    a one-line error naming the key, the value and what is allowed."""
    _check_section(cfg, "")
    if cfg.data.bad_images not in ("error", "skip"):
        raise SelfSupError(f"data.bad_images must be error or skip, got {cfg.data.bad_images!r}")
    for name, section in cfg.method_sections.items():
        _check_section(section, f"{name}.")
    from selfsup.nets import CUSTOM, check_backbone

    if cfg.model.backbone != CUSTOM:  # custom: a run's module given to selfsup.fit, loaded back with the module
        check_backbone(cfg.model.backbone)


def upgrade_saved(saved: dict) -> dict:
    """A run config written by an earlier selfsup (every method's section in it) in today's form: its method's
    upgrade_config hook moves what the method owns now, and keys that moved out of the common sections go."""
    from selfsup.methods.registry import find_method

    import_modules(list(saved.get("imports") or []))
    cls = find_method(saved.get("method", Config.method))
    if cls is not None:
        saved = cls.upgrade_config(dict(saved))
    data = {k: v for k, v in (saved.get("data") or {}).items() if k != "labels_file"}  # now supervised.labels_file
    for key in ("num_images", "size", "samples_per_epoch"):
        if data.get(key) == 0:  # earlier versions took 0 for "not set" (no subset, no resize); it is out of range now
            data[key] = None
    if (saved.get("eval") or {}).get("size") == 0:
        saved = {**saved, "eval": {**saved["eval"], "size": None}}
    return {**saved, "data": data}


def load_run_config(saved: dict | str | Path) -> Config:
    """The config of a run: its config.yaml (a path) or the dict saved in its checkpoint."""
    data = read_yaml(saved, "run config") if isinstance(saved, (str, Path)) else saved
    cfg = load_config(overrides=upgrade_saved(data), check=False)
    try:
        check_config(cfg)
    except SelfSupError as e:
        # A run made by an earlier version, which accepted the value: it stays usable (evaluation, export, resume).
        warn(f"this run's saved config has {e} (accepted when the run was made); it is used as saved")
    return cfg


def _plain(x):
    if dataclasses.is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in _fields(x)}
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def config_to_dict(cfg: Config) -> dict:
    """Plain dict (tuples as lists) for YAML/JSON, with the run's own method section only."""
    out = _plain(cfg)
    section = cfg.method_sections.get(cfg.method)
    if section is None and _is_method(cfg.method):
        section = cfg.section()
    if section is not None:
        out[cfg.method] = _plain(section)
    return out


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _type_name(tp) -> str:
    text = str(tp) if typing.get_origin(tp) else getattr(tp, "__name__", str(tp))
    return text.replace("typing.", "").replace("NoneType", "None")


def section_keys(obj, prefix: str) -> list[tuple[str, str, Any]]:
    """(key, type, default) of every leaf key of a config section, nested sections flattened with dots."""
    hints = typing.get_type_hints(type(obj))
    rows = []
    for f in _fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows += section_keys(value, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", _type_name(hints[f.name]), _plain(value)))
    return rows


def config_keys(method: str | None = None) -> list[tuple[str, str, Any]]:
    """Every config key with its type and default: the common ones, then each method's section (or just `method`'s)."""
    from selfsup.methods.registry import METHODS, get_method

    rows = section_keys(Config(), "")
    for name in [method] if method else list(METHODS):
        rows += section_keys(get_method(name).config_class(), f"{name}.")
    return rows


def keys_table(method: str | None = None) -> str:
    """`selfsup config keys [METHOD]`: one line per key, with its type and default (as JSON)."""
    rows = config_keys(method)
    width, kinds = max(len(k) for k, _, _ in rows), max(len(t) for _, t, _ in rows)
    return "\n".join(f"{key:<{width}}  {kind:<{kinds}}  {json.dumps(default)}" for key, kind, default in rows)


def resolved_yaml(recipe: str | None, overrides: list[str]) -> str:
    """`selfsup config show RECIPE [key=value ...]`: the resolved config as YAML (a recipe may be left out)."""
    if recipe is None:
        raise SelfSupError("give a recipe, e.g. selfsup config show recipes/simclr_cifar10.yaml [key=value ...]")
    if "=" in recipe and not Path(recipe).is_file():  # no recipe: defaults and overrides
        recipe, overrides = None, [recipe, *overrides]
    cfg = load_config(recipe, overrides)
    cfg.section()  # an unknown method is an error here, not a silently missing section
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


__all__ = ["Config", "DataConfig", "ModelConfig", "OptimConfig", "EvalConfig", "CheckpointConfig", "WandbConfig",
           "IN_MEMORY", "load_config",
           "apply_overrides", "update_config", "check_config", "parse_overrides", "read_yaml", "config_to_dict",
           "save_config", "load_run_config", "upgrade_saved", "config_keys", "section_keys", "import_modules",
           "keys_table", "resolved_yaml"]

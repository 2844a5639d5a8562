"""Config values are checked where they are read: numbers in any YAML spelling, every count, size, rate and
probability against its section's RANGES, unreadable files and unknown backbones, each a one-line error."""

import dataclasses
import math
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from selfsup.config import Config, apply_overrides, check_config, load_config, load_run_config, update_config
from selfsup.errors import SelfSupError, SelfSupWarning
from selfsup.methods import METHODS
from selfsup.nets import build_backbone

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def _nested(path: str, value) -> dict:
    """'a.b.c', v -> {'a': {'b': {'c': v}}}"""
    out: dict = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def _error(overrides) -> str:
    with pytest.raises(SelfSupError) as info:
        load_config(overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ numbers in any spelling

def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    cfg = load_config(overrides=["optim.lr=1e6", "optim.weight_decay=1E-3", "optim.min_lr=2e-5", "max_minutes=2e1",
                                 "optim.step_epochs=[1e1, 2.5e+1]", "augment.crop_scale=[5e-2, 1e0]"])
    assert cfg.optim.lr == 1e6 and cfg.optim.weight_decay == 1e-3 and cfg.optim.min_lr == 2e-5
    assert cfg.max_minutes == 20.0 and cfg.optim.step_epochs == [10.0, 25.0] and cfg.augment.crop_scale == (0.05, 1.0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 1e-3\n  gamma: 1.0e-1\n  betas: [5e-1, 0.999]\n")
    cfg = load_config(recipe)
    assert (cfg.optim.lr, cfg.optim.gamma, cfg.optim.betas) == (1e-3, 0.1, (0.5, 0.999))
    assert "expected a number, got 'fast'" in _error(["optim.lr=fast"])
    assert "expected a number, got '1e6x'" in _error(["optim.lr=1e6x"])


def test_counts_take_whole_numbers_in_scientific_notation_only():
    cfg = load_config(overrides=["epochs=5e4", "data.samples_per_epoch=1e6"])
    assert (cfg.epochs, cfg.data.samples_per_epoch) == (50_000, 1_000_000) and isinstance(cfg.epochs, int)
    assert _error(["epochs=2.5e0"]) == "epochs: expected an integer, got '2.5e0'"
    assert _error(["epochs=2.5"]) == "epochs: expected an integer, got 2.5"
    assert _error(["batch_size=1e-3"]) == "batch_size: expected an integer, got '1e-3'"
    assert load_config(overrides=["data.samples_per_epoch=50_000"]).data.samples_per_epoch == 50000


@pytest.mark.parametrize("key, value", [("optim.lr", ".nan"), ("optim.lr", ".inf"), ("max_minutes", "-.inf"),
                                        ("augment.crop_scale", "[0.1, .nan]"), ("optim.lr", "1e400"),
                                        ("sela.lam", ".inf")])
def test_nan_and_inf_are_rejected(key, value):
    assert _error([f"{key}={value}"]).startswith(f"{key}: expected a finite number")


def test_nan_set_in_python_is_rejected():
    cfg = Config()
    cfg.optim.gamma = math.nan
    with pytest.raises(SelfSupError, match=r"^optim.gamma must be a finite number, got nan$"):
        check_config(cfg)


# ------------------------------------------------------------------------------------------------- the audit's cases

@pytest.mark.parametrize("override, message", [
    ("data.num_images=0", "data.num_images must be at least 1, got 0"),
    ("eval.knn_k=0", "eval.knn_k must be at least 1, got 0"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs must be at least 0, got -1.0"),
    ("max_minutes=-1", "max_minutes must be at least 0, got -1.0"),
    ("batch_size=0", "batch_size must be at least 1, got 0"),
    ("batch_size=-32", "batch_size must be at least 1, got -32"),
    ("log_every=0", "log_every must be at least 1, got 0"),
    ("optim.lr=-0.1", "optim.lr must be at least 0, got -0.1"),
    ("data.size=-5", "data.size must be at least 1, got -5"),
    ("model.dropout=1", "model.dropout must be in [0, 1), got 1.0"),
    ("augment.crop_scale=[0.9, 0.2]", "augment.crop_scale is a range (low, high) and needs low <= high, got [0.9, "),
    ("model.backbone=foo", "model.backbone: unknown backbone 'foo'; use one of resnet18,"),
])
def test_audit_cases_are_one_line_errors(override, message):
    assert _error([override]).startswith(message)


def test_edge_values_that_mean_something_are_kept():
    cfg = load_config(overrides=["optim.lr=0", "max_minutes=0", "eval.knn_every=0", "optim.warmup_epochs=0",
                                 "data.num_images=1", "model.backbone=64c5-64c5-128f"])
    assert cfg.optim.lr == 0 and cfg.max_minutes == 0 and cfg.data.num_images == 1


def test_unknown_backbone_names_model_backbone_not_the_width():
    message = _error(["model.backbone=foo", "model.width=0.5"])
    assert message.startswith("model.backbone: unknown backbone 'foo'") and "alexnet_small" in message
    with pytest.raises(SelfSupError, match="^model.backbone: unknown backbone 'foo'; use one of resnet18"):
        build_backbone("foo", width=0.5)
    assert load_run_config({"model": {"backbone": "custom"}}).model.backbone == "custom"  # a run of selfsup.fit


def test_every_entry_point_checks():
    cfg = load_config()
    with pytest.raises(SelfSupError, match="^epochs must be at least 1"):
        apply_overrides(cfg, ["epochs=0"])
    with pytest.raises(SelfSupError, match="^sela.lam must be positive, got -1.0"):
        update_config(Config(), {"sela": {"lam": -1}})
    # A saved run's config is the exception: a value an earlier version accepted is used as saved, with a warning,
    # so the run can still be evaluated, exported and resumed.
    with pytest.warns(SelfSupWarning, match="saved config has eval.knn_t must be positive"):
        assert load_run_config({"eval": {"knn_t": 0}}).eval.knn_t == 0
    by_hand = Config(batch_size=0)
    with pytest.raises(SelfSupError, match="^batch_size must be at least 1, got 0$"):
        check_config(by_hand)
    # A run saved by an earlier selfsup with num_images 0 ("not set" then) still loads.
    old = load_run_config({"data": {"num_images": 0, "size": 0, "samples_per_epoch": 0}, "eval": {"size": 0}})
    assert (old.data.num_images, old.data.size, old.data.samples_per_epoch, old.eval.size) == (None,) * 4


def test_a_ranges_typo_is_caught():
    @dataclasses.dataclass
    class Mine:
        RANGES: typing.ClassVar[dict[str, str]] = {"temprature": "(0, inf)"}
        temperature: float = 0.1

    cfg = Config()
    cfg.method_sections["mine"] = Mine()
    with pytest.raises(TypeError, match="temprature"):
        check_config(cfg)


# --------------------------------------------------------------------------------------------------- files on disk

def test_non_utf8_yaml_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("epochs: 5\ndata:\n  source: folder:caf\xe9\n".encode("latin-1"))
    with pytest.raises(SelfSupError, match=f"^recipe {bad} is not UTF-8 text") as info:
        load_config(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(SelfSupError, match=f"^run config {bad} is not UTF-8 text"):
        load_run_config(bad)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffepochs: 5\n".encode())
    assert load_config(bom).epochs == 5


# ---------------------------------------------------------------------------------------------------- the real CLI

@pytest.mark.parametrize("extra, message", [
    (["batch_size=0"], "batch_size must be at least 1, got 0"),
    (["model.backbone=foo", "model.width=0.5"], "model.backbone: unknown backbone 'foo'"),
])
def test_cli_prints_one_line_and_exits_2(extra, message):
    proc = subprocess.run([sys.executable, "-m", "selfsup.cli", "config", "show", "recipes/simclr_cifar10_fast.yaml",
                           *extra], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"selfsup: error: {message}") and len(proc.stderr.splitlines()) == 1


# ------------------------------------------------------------------------------------ shipped recipes still load

@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_passes_the_checks(recipe):
    data = yaml.safe_load(recipe.read_text())
    if "methods" not in data:
        load_config(recipe)
        return
    from selfsup.study import load_study

    # A study file: every cell, including those of the methods only its overrides name (run with --methods).
    methods = list(dict.fromkeys([*data["methods"], *(m for m in data.get("overrides") or {}
                                                      if m in METHODS and not METHODS[m].needs_targets)]))
    assert load_study(recipe, methods=methods).cells()


# ----------------------------------------------------------------- every RANGES entry is enforced (and declared)

def _sections():
    """(key prefix, dataclass instance) of every config section: the common ones (nested too) and every method's."""
    # selfsup's own methods (other tests register methods of their own, which need not state ranges)
    todo = [("", Config())] + [(f"{name}.", cls.config_class()) for name, cls in METHODS.items()
                               if cls.__module__.startswith("selfsup.")]
    while todo:
        prefix, obj = todo.pop(0)
        yield prefix, obj
        todo += [(f"{prefix}{f.name}.", getattr(obj, f.name)) for f in dataclasses.fields(obj)
                 if dataclasses.is_dataclass(getattr(obj, f.name))]


def _scalar_type(tp):
    """The element type of a field: int or float for numeric keys (through `| None`, tuples and lists)."""
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    return _scalar_type(args[0]) if args else tp


def _ranged_keys():
    for prefix, obj in _sections():
        hints = typing.get_type_hints(type(obj))
        for name, spec in getattr(type(obj), "RANGES", {}).items():
            yield f"{prefix}{name}", spec, hints[name], getattr(obj, name)


def _outside(spec: str, kind: type) -> list:
    """Values just outside each finite bound of a range spec such as "[0, 1)" or "(0, inf) ordered"."""
    interval = spec.removesuffix(" ordered")
    left, right = (float(x) for x in interval.strip("[]()").split(","))
    bad = [] if math.isinf(left) else [left - 1 if interval.startswith("[") else left]
    bad += [] if math.isinf(right) else [right + 1 if interval.endswith("]") else right]
    return [kind(b) for b in bad]


RANGED = list(_ranged_keys())


@pytest.mark.parametrize("key, spec, tp, default", RANGED, ids=[r[0] for r in RANGED])
def test_every_range_is_enforced(key, spec, tp, default):
    for bad in _outside(spec, _scalar_type(tp)):
        value = [bad] * max(1, len(default)) if isinstance(default, (list, tuple)) else bad
        message = _error(_nested(key, value))
        assert message.startswith(f"{key} must be "), message
    if spec.endswith(" ordered"):
        low, high = default
        assert low < high  # the defaults are proper ranges, so reversing them is out of order
        assert _error(_nested(key, [high, low])).startswith(f"{key} is a range (low, high) and needs low <= high")


def test_every_numeric_key_states_its_range():
    ranged = {key for key, *_ in RANGED}
    numeric = {f"{prefix}{f.name}" for prefix, obj in _sections() for f in dataclasses.fields(obj)
               if _scalar_type(typing.get_type_hints(type(obj))[f.name]) in (int, float)}
    assert numeric - ranged == set()
    assert {"augment.crop_scale", "data.single_image.hue", "exemplar.transform.scale", "instance.transform.hue",
            "optim.lr", "epochs"} <= ranged


def test_the_defaults_pass():
    cfg = Config()
    for name in METHODS:
        cfg.section(name)
    check_config(cfg)

from pathlib import Path

import pytest
import torch
import yaml

from selfsup.config import load_config, parse_overrides
from selfsup.engine import lr_at
from selfsup.errors import SelfSupError
from selfsup.methods import METHODS, DataInfo, build_method


def test_recipe_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 7\noptim:\n  lr: 0.5\naugment:\n  crop_scale: [0.2, 1.0]\n")
    cfg = load_config(recipe, ["optim.lr=0.1", "model.backbone=alexnet_small", "data.size=null"])
    assert cfg.epochs == 7 and cfg.optim.lr == 0.1 and cfg.model.backbone == "alexnet_small"
    assert cfg.augment.crop_scale == (0.2, 1.0) and cfg.data.size is None


def test_overrides_parse_yaml_values():
    assert parse_overrides(["a.b=1", "c=x", "d=[1, 2]"]) == {"a": {"b": 1}, "c": "x", "d": [1, 2]}


@pytest.mark.parametrize("overrides,message", [
    (["epochz=3"], "unknown config key 'epochz'"),
    (["optim.lr=fast"], "optim.lr: expected a number"),
    (["epochs=1.5"], "epochs: expected an integer"),
    (["optim=3"], "optim is a section"),
    (["novalue"], "must look like key=value"),
])
def test_bad_config_is_one_clear_line(overrides, message):
    with pytest.raises(SelfSupError, match=message) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_missing_and_invalid_recipe(tmp_path):
    with pytest.raises(SelfSupError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(SelfSupError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_loads_and_builds(recipe):
    if "methods" in yaml.safe_load(recipe.read_text()):  # a study file: every cell's config must build
        from selfsup.study import load_study

        assert load_study(recipe).cells()
        return
    cfg = load_config(recipe)
    # Building runs every check a method makes of its config (sizes, options) against the run's model.
    targets = torch.zeros(1, 20, dtype=torch.long) if METHODS[cfg.method].needs_targets else None
    method = build_method(cfg, DataInfo(num_samples=20, targets=targets))
    assert method.backbone.feature_dim > 0 and method.data.input_size == cfg.model.input_size


def test_list_values_and_step_schedule():
    cfg = load_config(overrides=["optim.schedule=step", "optim.step_epochs=[3, 4.5]"])
    assert cfg.optim.step_epochs == [3.0, 4.5]
    with pytest.raises(SelfSupError, match="expected a list"):
        load_config(overrides=["optim.step_epochs=3"])
    assert lr_at(5, 100, 0, 1.0, milestones=[10, 20]) == 1.0
    assert lr_at(15, 100, 0, 1.0, milestones=[10, 20]) == pytest.approx(0.1)
    assert lr_at(25, 100, 0, 1.0, milestones=[10, 20]) == pytest.approx(0.01)

"""Every shipped recipe builds its method and takes a training step.

Plain recipes (one run) are loaded as `selfsup pretrain` loads them; study files (`methods:` grids) through
selfsup.study.load_study(...).cells(), every cell including the methods the file only configures in `overrides`.
Each method is built at the recipe's own sizes (widths, heads, clusters, seeds, bank) as a run builds it, from a
tiny random uint8 source at the recipe's input size; then one training step, a backward pass and an optimizer step
of the recipe's optimizer must give a finite loss and move the backbone. Nothing is shrunk but the data.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from selfsup.config import config_to_dict, load_config
from selfsup.data import ImageArray
from selfsup.engine import build_optimizer
from selfsup.methods import METHODS, Batch, RunInfo, build_method, get_method
from selfsup.methods.exemplar import Exemplar, sample_seeds
from selfsup.nets import backbone_from
from selfsup.study import load_study

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
STUDY_FILES = [r for r in RECIPES if "methods" in yaml.safe_load(r.read_text())]
PLAIN = [r for r in RECIPES if r not in STUDY_FILES]
N = 8  # training images in the tiny source
BATCH = 2  # the smallest batch batch-norm trains on


# Steps on 2 images are too small to share between threads: on a busy 2-core machine two threads took this file three
# times longer (50 s against 15 s, and 34 s of CPU against 10 s, mostly threads waiting on each other).
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_source(size: int) -> ImageArray:
    images = np.random.default_rng(0).integers(0, 256, (N, size, size, 3), dtype=np.uint8)
    return ImageArray("tiny", images, np.arange(N) % 2, ["a", "b"])


def _one_step(cfg) -> dict:
    """Build cfg's method around a fresh backbone as a run does, and train it one step on a tiny batch."""
    cls = get_method(cfg.method)
    arr = _tiny_source(cfg.model.input_size)
    torch.manual_seed(0)
    method = build_method(cfg, cls.data_info(cfg, arr))
    assert type(method) is METHODS[cfg.method] and method.cfg == cfg.section()
    assert method.data.input_size == cfg.model.input_size
    if isinstance(method, Exemplar):
        # Its training images are seed contexts (2P x 2P) that prepare_data cuts, one per surrogate class. Cutting the
        # recipe's 8,000-16,000 takes seconds; N of them, the same way, give the step its real input.
        e = method.cfg
        images = sample_seeds(arr.images, N, e.patch, e.image_size or max(64, cfg.model.input_size)).context
    else:
        images = method.prepare_data(arr, RunInfo()).images
    images = torch.from_numpy(np.ascontiguousarray(images))
    method.on_train_start(images)
    optimizer = build_optimizer(method, cfg.optim)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    method.train()
    out = method.training_step(Batch(images[:BATCH], torch.arange(BATCH), torch.Generator().manual_seed(1)))
    loss = out["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss), out
    optimizer.zero_grad()
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # the loss reaches the backbone
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, method.backbone.parameters())]
    assert any(moved)
    return out


@pytest.mark.parametrize("recipe", PLAIN, ids=lambda p: p.stem)
def test_plain_recipe_builds_its_method_and_trains_a_step(recipe):
    cfg = load_config(recipe)
    assert cfg.method == yaml.safe_load(recipe.read_text())["method"]
    _one_step(cfg)


def _study_cells(recipe: Path):
    """The file's cells, plus those of the methods it only configures in `overrides` (run with --methods), each
    distinct training config once (cells that differ only in their data train the same method)."""
    data = yaml.safe_load(recipe.read_text())
    methods = list(dict.fromkeys([*data["methods"], *(m for m in data.get("overrides") or {}
                                                      if m in METHODS and not METHODS[m].needs_targets)]))
    seen, cells = set(), []
    for cell in load_study(recipe, methods=methods).cells():
        plain = config_to_dict(cell.config)
        plain.pop("data")
        key = (cell.method, yaml.safe_dump(plain))
        if key not in seen:
            seen.add(key)
            cells.append(cell)
    return cells


@pytest.mark.parametrize("recipe", STUDY_FILES, ids=lambda p: p.stem)
def test_study_cells_build_their_methods_and_train_a_step(recipe):
    cells = _study_cells(recipe)
    data = yaml.safe_load(recipe.read_text())
    assert {c.method for c in cells} >= set(data["methods"]) | set(data.get("baselines") or [])
    for cell in cells:
        cfg = cell.config
        if cell.method == "random":  # the backbone at its initialisation: nothing to train
            net = backbone_from(cfg.model).eval()
            size = cfg.model.input_size
            assert net(torch.rand(2, 3, size, size)).shape == (2, net.feature_dim)
            continue
        assert cfg.method == cell.method
        _one_step(cfg)

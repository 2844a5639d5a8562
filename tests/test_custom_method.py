"""A method defined in this test file only, with no package file touched: registered, trained by `selfsup pretrain`
and by selfsup.fit, resumed exactly, and run in the multi-process equivalence test (test_ddp imports this module)."""

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

import selfsup
from selfsup.cli import main
from selfsup.engine import load_checkpoint


@dataclass
class TwinConfig:
    dim: int = 16
    momentum: float = 0.9


@selfsup.register_method("twin", config=TwinConfig)
class Twin(selfsup.Method):
    """Two views; the projection of one is pulled towards a momentum copy's projection of the other."""

    def __init__(self, backbone, cfg=None, augment=None, data=None):
        super().__init__(backbone, cfg, augment, data)
        self.head = nn.Linear(self.backbone.feature_dim, self.cfg.dim)
        self.register_buffer("target", self.head.weight.detach().clone())
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def training_step(self, batch):
        z1 = F.normalize(self.head(self.backbone(self.view(batch))), dim=1)
        with torch.no_grad():
            z2 = F.normalize(F.linear(self.backbone(self.view(batch)), self.target), dim=1)
        return {"loss": 2 - 2 * (z1 * z2).sum(1).mean()}

    def on_step_end(self, step, total_steps):
        self.target.lerp_(self.head.weight.detach(), 1 - self.cfg.momentum)
        self.steps += 1


RECIPE = """
method: twin
twin: {dim: 8}
epochs: 2
batch_size: 32
seed: 5
log_every: 2
data: {source: digits, size: 16, samples_per_epoch: 128}
model: {backbone: exemplar_small, input_size: 16}
augment: {size: 16}
optim: {warmup_epochs: 0}
eval: {size: 16, knn_every: 0, knn_k: 20}
"""


def _state(run: Path) -> dict:
    return load_checkpoint(run)["method"]


def test_pretrain_on_the_command_line_resumes_exactly(tmp_path, capsys):
    recipe = tmp_path / "twin.yaml"
    recipe.write_text(RECIPE)
    assert main(["pretrain", str(recipe), "--out", str(tmp_path / "straight")]) == 0
    saved = yaml.safe_load((tmp_path / "straight" / "config.yaml").read_text())
    assert saved["method"] == "twin" and saved["twin"] == {"dim": 8, "momentum": 0.9}
    assert not {"simclr", "sela", "exemplar"} & set(saved)  # only the run's own method section
    straight = _state(tmp_path / "straight")
    assert int(straight["steps"]) == 2 * 128 // 32  # on_step_end ran after every optimizer step
    assert not torch.equal(straight["target"], straight["head.weight"])  # a momentum copy, lagging the head

    # max_minutes=0 stops the run after its first epoch; --resume then continues it to the end.
    assert main(["pretrain", str(recipe), "max_minutes=0", "--out", str(tmp_path / "split")]) == 0
    assert load_checkpoint(tmp_path / "split")["epoch"] == 1
    assert main(["pretrain", "--resume", "--out", str(tmp_path / "split")]) == 0
    resumed = _state(tmp_path / "split")
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    capsys.readouterr()
    assert main(["config", "keys", "twin"]) == 0
    keys = capsys.readouterr().out
    assert "twin.momentum" in keys and "float" in keys and "simclr.temperature" not in keys

    # The run names the module the method lives in, so a fresh process (the command line, torchrun) rebuilds it.
    assert saved["imports"] == ["test_custom_method"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, "-m", "selfsup", "eval", "knn", str(tmp_path / "straight"), "eval.knn_k=20"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0 <= json.loads(proc.stdout.strip().splitlines()[-1])["knn_top1"] <= 100


def test_fit_trains_it_from_python(tmp_path):
    cfg = selfsup.load_config(overrides=yaml.safe_load(RECIPE))
    torch.manual_seed(0)
    method = Twin(selfsup.build_backbone("exemplar_small", input_size=16), TwinConfig(dim=8),
                  selfsup.AugmentConfig(size=16), selfsup.DataInfo(input_size=16))
    before = method.head.weight.detach().clone()
    trained = selfsup.fit(method, "digits", cfg, out=tmp_path / "run", progress=False)
    assert trained is method and int(method.steps) == 8 and not torch.equal(method.head.weight, before)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and all(math.isfinite(m["loss"]) for m in lines)
    again = selfsup.load_run(tmp_path / "run")  # rebuilt from its config: registered name, section, backbone
    assert isinstance(again, Twin) and again.cfg == TwinConfig(dim=8)
    assert torch.equal(again.head.weight, method.head.weight.cpu())

"""Several gloo processes must train exactly as one process on the joined batch, for every method.

Each method takes one training step on a joint batch in one process, with a Tape recording every random tensor it
draws (views, masks, latents, negatives). Then WORLD processes take the same step under DDP, each replaying its
rows of those draws, and must end with the same gradients (and the same memory bank); labelling methods must also
compute the same labels over the dataset (sharded passes, gathered features, Sinkhorn with all-reduced marginals).
Batch-norm statistics are per process by design (SyncBatchNorm, CUDA only, is the opt-in that shares them), and
dropout masks come from each process's own generator, so the models here have neither: what is tested is everything
else that crosses ranks.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_custom_method  # noqa: F401 — registers "twin", a method defined in a test file only, so it runs here too
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from selfsup.config import load_config
from selfsup.methods import METHODS, Batch, DataInfo, EpochContext, build_method
from selfsup.methods.base import Tape

WORLD, BATCH, N_DATA, SIZE = 3, 12, 30, 16
NAMES = list(METHODS)  # every method registered on import (the built-ins and test_custom_method's), in every process
LABELLERS = ("sela", "deepcluster")

OVERRIDES = {
    "simclr": {"simclr": {"proj_hidden": 32, "proj_dim": 8}},
    "sela": {"sela": {"num_clusters": 3, "num_heads": 2}},
    "deepcluster": {"deepcluster": {"num_clusters": 3, "pca_dim": 8, "backend": "torch"}},
    "exemplar": {"exemplar": {"patch": SIZE}},
    "instance": {"instance": {"dim": 8, "negatives": 7}},
    "colorization": {"colorization": {"loss": "classification"}},
    "inpainting": {"inpainting": {"decoder_width": 16, "adversarial": 0.001}},
    "bigan": {"bigan": {"z_dim": 8, "generator_width": 32, "discriminator_width": 16}},
}


def _images() -> torch.Tensor:
    return torch.randint(0, 256, (N_DATA, SIZE, SIZE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def _build(name: str) -> nn.Module:
    cfg = load_config(overrides={"method": name, "model": {"backbone": "alexnet_small", "bn": False, "width": 0.25,
                                                              "input_size": SIZE},
                                 "augment": {"size": SIZE}, **OVERRIDES.get(name, {})})
    targets = torch.arange(N_DATA)[None] % 10
    torch.manual_seed(0)
    method = build_method(cfg, DataInfo(N_DATA, SIZE, targets))
    for parent in list(method.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                setattr(parent, child_name, nn.Identity())
    method.on_train_start(_images())
    return method


def _index() -> torch.Tensor:
    return torch.randperm(N_DATA, generator=torch.Generator().manual_seed(1))[:BATCH]


def _step(method: nn.Module, index: torch.Tensor) -> None:
    model = method.module if isinstance(method, nn.parallel.DistributedDataParallel) else method
    model.train()
    batch = Batch(_images()[index], index, torch.Generator().manual_seed(2))
    method(batch)["loss"].backward()


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _rows(draw, rank: int):
    """This rank's rows of a recorded draw: per-sample tensors are split, shared ones (e.g. negatives) kept whole."""
    if isinstance(draw, tuple):
        return tuple(_rows(d, rank) for d in draw)
    per = BATCH // WORLD
    return draw[rank * per:(rank + 1) * per] if draw.shape[0] == BATCH else draw


def _relabelled(method: nn.Module) -> dict:
    """The method's state after its epoch-start labelling pass (labels, and DeepCluster's re-initialised classifier)."""
    method.on_epoch_start(EpochContext(0, 1, _images(), torch.device("cpu"), None, seed=4))
    return method.state_dict()


def _reference(name: str) -> dict:
    method = _build(name)
    method.tape = Tape()
    _step(method, _index())
    out = {"draws": method.tape.draws, "grads": _grads(method), "state": method.state_dict()}
    if name in LABELLERS:
        out["relabelled"] = _relabelled(_build(name))
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        for name in NAMES:
            ref = torch.load(Path(out_dir) / f"{name}.pt", weights_only=False)
            method = _build(name)
            method.tape = Tape([_rows(d, rank) for d in ref["draws"]])
            model = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
            _step(model, _index()[rank * (BATCH // WORLD):(rank + 1) * (BATCH // WORLD)])
            out = {"grads": _grads(method), "state": method.state_dict()}
            if name in LABELLERS:
                out["relabelled"] = _relabelled(_build(name))
            torch.save(out, Path(out_dir) / f"{name}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks_and_reference(tmp_path_factory):
    """Every method's single-process reference and each rank's result, from one spawn of WORLD processes."""
    out = tmp_path_factory.mktemp("ddp")
    refs = {}
    for name in NAMES:
        refs[name] = _reference(name)
        torch.save(refs[name], out / f"{name}.pt")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    ranks = {name: [torch.load(out / f"{name}.rank{r}.pt", weights_only=False) for r in range(WORLD)]
             for name in NAMES}
    return refs, ranks


@pytest.mark.parametrize("name", NAMES)
def test_processes_match_one_process(ranks_and_reference, name):
    refs, ranks = ranks_and_reference
    ref = refs[name]
    assert ref["grads"].abs().sum() > 0
    for got in ranks[name]:
        torch.testing.assert_close(got["grads"], ref["grads"], atol=2e-5, rtol=1e-4)
        # Buffers updated in the step (the instance bank) must come out the same on every rank as in one process.
        for key, value in ref["state"].items():
            if not key.endswith("weight") and not key.endswith("bias"):
                torch.testing.assert_close(got["state"][key], value, msg=f"{name}: buffer {key}")
        if name in LABELLERS:
            for key, value in ref["relabelled"].items():
                torch.testing.assert_close(got["relabelled"][key], value, msg=f"{name}: {key} after relabelling")
            assert len(torch.unique(ref["relabelled"]["labels"])) > 1


def test_torchrun_pretrain_two_processes_on_cpu(tmp_path):
    env = {**os.environ, "SELFSUP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "selfsup",
           "pretrain", str(Path(__file__).parents[1] / "recipes" / "simclr_cifar10.yaml"), "data.source=digits",
           "model.backbone=exemplar_small", "epochs=2", "batch_size=64", "data.size=16", "model.input_size=16",
           "augment.size=16", "eval.size=16", "eval.knn_every=1", "log_every=1", "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"knn_top1"' in lines[-1]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_sync_bn_on_cpu_is_a_one_line_error(tmp_path):
    from selfsup.engine import pretrain
    from selfsup.errors import SelfSupError

    cfg = load_config(overrides={"sync_bn": True, "device": "cpu", "data": {"source": "digits"}})
    with pytest.raises(SelfSupError, match="sync_bn needs CUDA"):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()

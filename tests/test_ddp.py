"""Several gloo processes must train exactly as one process on the joined batch, for every method; and the real loop
under torchrun's environment must shard every batch over the processes and resume exactly.

Each method takes one training step on a joint batch in one process, with a Tape recording every random tensor it
draws (views, masks, latents, negatives). Then WORLD processes take the same step under DDP, each replaying its
rows of those draws, and must end with the same gradients (and the same memory bank); labelling methods must also
compute the same labels over the dataset (sharded passes, gathered features, Sinkhorn with all-reduced marginals).
Batch-norm statistics are per process by design (SyncBatchNorm, CUDA only, is the opt-in that shares them), and
dropout masks come from each process's own generator, so the models here have neither: what is tested is everything
else that crosses ranks.

The same processes then run `selfsup.fit` as torchrun starts it (RANK, LOCAL_RANK and WORLD_SIZE set; the loop joins
the processes itself): SeLa on 20 images, which divide neither over the 3 processes nor into batches of 6. Each
process records the dataset indices of every batch it trains on; together they must be exactly one process's
batches, split without overlap. A run stopped after its first epoch and resumed must end where the uninterrupted run
ends: the same labels and metrics, weights equal to the last bits (bit for bit is an xfail: DDP rebuilds its gradient
buckets after a process's first step, so the resumed process's first all-reduce sums in another order). The net has
no batch norm there: with it, each process keeps its own running statistics, a checkpoint holds rank 0's, and after
a resume ranks 1.. label their shards with rank 0's statistics instead of their own, so SeLa's labels (and
DeepCluster's features) differ from the uninterrupted run's (a known gap, reported).
"""

import os
from pathlib import Path

import pytest
import test_custom_method  # noqa: F401 — registers "twin", a method defined in a test file only, so it runs here too
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from selfsup.config import load_config
from selfsup.data import ImageArray
from selfsup.engine import fit, load_checkpoint, read_metrics
from selfsup.methods import METHODS, Batch, DataInfo, EpochContext, SeLa, build_method
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
    # Codes over the global batch (Sinkhorn with all-reduced marginals) and every process's embeddings queued in the
    # joined batch's order: the queue after the step is compared with one process's.
    "swav": {"swav": {"prototypes": 5, "proj_hidden": 16, "proj_dim": 8, "queue_length": 24, "queue_start_epoch": 0,
                      "crops": {"local_crops": 2}}},
    # The centre is updated from the teacher's outputs over the global batch (an all-reduce).
    "dino": {"dino": {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "crops": {"local_crops": 2}}},
    # Every process's keys queued in the joined batch's order (the queue is compared); the keys' shuffle is a draw per
    # sample, so each process shuffles its own rows (batch-norm groups are per process by design).
    "moco": {"moco": {"proj_hidden": 16, "proj_dim": 8, "queue_length": 24, "bn_group": 2, "symmetric": True}},
    # Keys gathered from every process.
    "mocov3": {"mocov3": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}},
    "byol": {"byol": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}},
    "simsiam": {"simsiam": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 4}},
    # Standardisation and cross-correlation (Barlow Twins), variance and covariance (VICReg) over the global batch.
    "barlow_twins": {"barlow_twins": {"proj_hidden": 16, "proj_dim": 8}},
    "vicreg": {"vicreg": {"proj_hidden": 16, "proj_dim": 8}},
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


def _equivalence(rank: int, out_dir: str) -> None:
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


FIT_N, FIT_BATCH = 20, 6  # 20 % 3 != 0 and 20 % 6 != 0: 3 steps of 6 (2 per process), 2 images left out per epoch


def _fit_images() -> ImageArray:
    gen = torch.Generator().manual_seed(5)
    return ImageArray("random", torch.randint(0, 256, (FIT_N, SIZE, SIZE, 3), dtype=torch.uint8, generator=gen).numpy())


def _fit_config(**extra):
    return load_config(overrides={
        "method": "sela", "device": "cpu", "epochs": 2, "batch_size": FIT_BATCH, "seed": 7, "log_every": 1,
        # No batch norm: its statistics are per process, and rank 0's alone are saved (see the note in the docstring).
        "model": {"backbone": "alexnet_small", "width": 0.25, "input_size": SIZE, "bn": False},
        "augment": {"size": SIZE}, "optim": {"lr": 0.05, "warmup_epochs": 0.5},
        "sela": {"num_clusters": 3, "num_heads": 2, "label_steps": 2},  # a sharded labelling pass at both epochs
        **extra})


def _fit_recording_batches(out: Path, **extra) -> tuple[nn.Module, list[list[int]]]:
    """selfsup.fit of _fit_config(**extra) into `out`, and the dataset indices of every batch this process trained
    on."""
    seen: list[list[int]] = []
    real = SeLa.training_step

    def recording(self, batch):
        seen.append(batch.index.tolist())
        return real(self, batch)

    SeLa.training_step = recording
    try:
        method = fit(None, _fit_images(), _fit_config(**extra), out, progress=False)
    finally:
        SeLa.training_step = real
    return method, seen


def _fits(rank: int, out_dir: str) -> None:
    out = Path(out_dir)
    method, seen = _fit_recording_batches(out / "straight")
    torch.save({"batches": seen, "state": method.state_dict()}, out / f"fit.rank{rank}.pt")
    # The same run with its images streamed (data.device_budget_gb=0): each process reads only its own rows.
    _, seen = _fit_recording_batches(out / "streamed", data={"device_budget_gb": 0})
    torch.save({"batches": seen}, out / f"streamed.rank{rank}.pt")
    fit(None, _fit_images(), _fit_config(max_minutes=0.0), out / "split", progress=False)  # stops after epoch 1
    fit(None, _fit_images(), _fit_config(), out / "split", resume=True, progress=False)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    # What torchrun sets: selfsup.fit reads it and finds the process group already joined (over a file, not a port,
    # so that nothing else on the machine can collide with it).
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        _equivalence(rank, out_dir)
        _fits(rank, out_dir)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Every method's single-process reference and each rank's result, and the multi-process fits, from one spawn of
    WORLD processes; plus the single-process fit's batches."""
    out = tmp_path_factory.mktemp("ddp")
    refs = {}
    for name in NAMES:
        refs[name] = _reference(name)
        torch.save(refs[name], out / f"{name}.pt")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    ranks = {name: [torch.load(out / f"{name}.rank{r}.pt", weights_only=False) for r in range(WORLD)]
             for name in NAMES}
    fits = [torch.load(out / f"fit.rank{r}.pt", weights_only=False) for r in range(WORLD)]
    streamed = [torch.load(out / f"streamed.rank{r}.pt", weights_only=False) for r in range(WORLD)]
    _, one_process = _fit_recording_batches(out / "one")
    return {"refs": refs, "ranks": ranks, "fits": fits, "streamed": streamed, "one_process": one_process, "out": out}


@pytest.fixture(scope="module")
def ranks_and_reference(processes):
    return processes["refs"], processes["ranks"]


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


def test_the_loop_gives_each_process_its_own_slice_of_every_batch(processes):
    one, per_rank = processes["one_process"], [f["batches"] for f in processes["fits"]]
    steps = 2 * (FIT_N // FIT_BATCH)
    assert len(one) == steps and all(len(b) == FIT_BATCH for b in one)
    assert all(len(batches) == steps for batches in per_rank)
    for step in range(steps):
        slices = [set(batches[step]) for batches in per_rank]
        assert all(len(s) == FIT_BATCH // WORLD for s in slices), (step, slices)
        assert sum(len(s) for s in slices) == len(set().union(*slices)), f"step {step}: processes overlap {slices}"
        assert set().union(*slices) == set(one[step]), f"step {step}: not one process's batch"
    for epoch in range(2):  # within an epoch no image is seen twice: 18 of the 20, each once
        seen = [i for batches in per_rank for b in batches[epoch * 3:(epoch + 1) * 3] for i in b]
        assert len(seen) == len(set(seen)) == FIT_N // FIT_BATCH * FIT_BATCH


def test_a_streamed_multi_process_run_is_bit_identical_to_the_resident_one(processes):
    out = processes["out"]
    resident, streamed = load_checkpoint(out / "straight"), load_checkpoint(out / "streamed")
    for key, value in resident["method"].items():
        assert torch.equal(streamed["method"][key], value), key
    assert _without_timing(read_metrics(out / "streamed")) == _without_timing(read_metrics(out / "straight"))
    for rank in range(WORLD):  # each process trained on the same rows of every batch in both modes
        assert processes["streamed"][rank]["batches"] == processes["fits"][rank]["batches"]


def _without_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("epoch_seconds", "images_per_second", "wall_time")} for m in lines]


def test_a_resumed_multi_process_run_ends_as_the_uninterrupted_one(processes):
    out = processes["out"]
    straight, split = load_checkpoint(out / "straight"), load_checkpoint(out / "split")
    assert straight["epoch"] == split["epoch"] == 2
    assert straight["method"].keys() == split["method"].keys()
    assert torch.equal(split["method"]["labels"], straight["method"]["labels"])  # relabelled in the resumed process
    assert len(torch.unique(straight["method"]["labels"])) > 1
    # Equal to the last bits but for the order of one sum (see the xfail below); a lost momentum, a wrong learning
    # rate or a repeated epoch would move the weights by ~lr x gradient, orders of magnitude more.
    torch.testing.assert_close(split["method"], straight["method"], rtol=0, atol=1e-6)
    torch.testing.assert_close(split["optimizer"]["state"], straight["optimizer"]["state"], rtol=0, atol=1e-6)
    resumed = _without_timing(read_metrics(out / "split"))
    uninterrupted = _without_timing(read_metrics(out / "straight"))
    assert [m["epoch"] for m in resumed] == [m["epoch"] for m in uninterrupted] == [1, 2]
    assert resumed[0] == uninterrupted[0]  # the first epoch is the same computation in both runs
    assert resumed[1]["lr"] == uninterrupted[1]["lr"]
    assert resumed[1]["loss"] == pytest.approx(uninterrupted[1]["loss"], rel=1e-6)
    # Every process ended with the weights and labels rank 0 saved (labels are gathered, not broadcast).
    for rank, result in enumerate(processes["fits"]):
        for key, value in straight["method"].items():
            assert torch.equal(result["state"][key], value), (rank, key)


@pytest.mark.xfail(strict=True, reason="DDP rebuilds its gradient buckets after a process's first step, so a resumed "
                   "process's first all-reduce sums in another layout than the uninterrupted run's (last-bit "
                   "differences; bit-exact with the rebuild disabled)")
def test_a_resumed_multi_process_run_is_bit_exact(processes):
    straight, split = (load_checkpoint(processes["out"] / run)["method"] for run in ("straight", "split"))
    assert all(torch.equal(split[key], value) for key, value in straight.items())


def test_sync_bn_on_cpu_is_a_one_line_error(tmp_path):
    from selfsup.engine import pretrain
    from selfsup.errors import SelfSupError

    cfg = load_config(overrides={"sync_bn": True, "device": "cpu", "data": {"source": "digits"}})
    with pytest.raises(SelfSupError, match="sync_bn needs CUDA"):
        pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()

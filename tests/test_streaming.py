"""Streamed training: a split larger than data.device_budget_gb is read from the cache batch by batch, and gives
the same run as the split held on the device.

Every built-in method trains 2 epochs (the settings of test_resume) on a fabricated 20-class ImageNet folder
(mixed sizes and formats) decoded into the cache, once with the default budget (resident) and once with
data.device_budget_gb=0 (streamed): the checkpoints must hold the same tensors bit for bit, and the labelling passes
and hooks (SeLa, DeepCluster, colorization's prior, Exemplar's seeds) must have read through the stream.
"""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_resume import BUILT_IN, _config, _same, _without_timing

from selfsup.data.stream import Images, Prefetcher, chunks, device_budget
from selfsup.engine import fit, load_checkpoint, read_metrics


def test_rows_come_back_in_the_asked_order_from_the_file_and_from_memory(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (50, 5, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", data)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    index = torch.tensor([7, 3, 3, 44, 0, 8, 9, 10, 11, 2])  # unsorted, repeated, with a run of consecutive rows
    for host in (mapped, data, mapped[5:]):  # pread from the file; numpy; a slice of a map (numpy, not pread)
        images = Images(host, "cpu", resident=False)
        assert (images._map is not None) == isinstance(host, np.memmap)
        want = torch.from_numpy(np.array(host)[index.numpy()])
        assert torch.equal(images.gather(index), want)
        assert torch.equal(images[index], want)
        repeats = torch.tensor([5, 4, 4, 7])  # sorted, 4 4 5 7 spans 4 rows but is not a run of 4 rows
        assert torch.equal(images.gather(repeats), torch.from_numpy(np.array(host)[repeats.numpy()]))
        assert torch.equal(images[-1], torch.from_numpy(np.array(host[-1])))
        assert torch.equal(images[4:9], torch.from_numpy(np.array(host[4:9])))
        assert torch.equal(images[3], torch.from_numpy(np.array(host[3])))
        assert torch.equal(torch.cat(list(chunks(images, 2, 43, 8))), torch.from_numpy(np.array(host[2:43])))
        assert len(images) == len(host) and images.shape == host.shape
        images.close()


def _mapped_kb() -> int:
    """Kilobytes of file pages mapped into this process (RssFile), where /proc has it."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_streaming_releases_the_pages_it_read_so_memory_stays_flat(tmp_path, monkeypatch):
    import selfsup.data.stream as stream

    np.save(tmp_path / "a.npy", np.random.default_rng(0).integers(0, 256, (2000, 64, 64, 3), dtype=np.uint8))
    grew = {}
    for release in (2**40, 2**20):  # never, and after every MB read
        monkeypatch.setattr(stream, "RELEASE_BYTES", release)
        images = Images(np.load(tmp_path / "a.npy", mmap_mode="r"), "cpu", resident=False)  # 24 MB of rows
        before = _mapped_kb()
        for batch in Prefetcher(images, [torch.randperm(2000)[:256] for _ in range(40)]):
            assert batch.shape == (256, 64, 64, 3)
        grew[release] = _mapped_kb() - before
        images.close()
    assert grew[2**40] > 10_000, grew  # without releasing, most of the 24 MB stays mapped
    assert grew[2**20] < 3_000, grew  # released: about what one MB of reads leaves


def test_the_prefetcher_raises_a_read_error_at_its_batch_and_stops_its_thread_when_left_early():
    data = np.arange(40 * 12, dtype=np.uint8).reshape(40, 2, 2, 3)
    images = Images(data, "cpu", resident=False)
    batches = [torch.arange(i, i + 4) for i in range(0, 40, 4)]
    got = list(Prefetcher(images, batches))
    assert all(torch.equal(g, torch.from_numpy(data[b.numpy()])) for g, b in zip(got, batches))

    bad = Prefetcher(images, [torch.arange(4), torch.tensor([99])])  # row 99 does not exist
    it = iter(bad)
    assert torch.equal(next(it), torch.from_numpy(data[:4]))
    with pytest.raises(IndexError):
        next(it)

    early = Prefetcher(images, batches, depth=1)
    next(iter(early))
    early.close()
    assert not early.thread.is_alive()
    assert not any(t.name == "selfsup-prefetch" and t.is_alive() for t in threading.enumerate())


def test_the_budget_is_the_setting_or_a_share_of_free_memory():
    assert device_budget(0, torch.device("cpu")) == 0
    assert device_budget(1.5, torch.device("cpu")) == int(1.5 * 2**30)
    assert 0 < device_budget(None, torch.device("cpu"))


def test_synthesised_images_larger_than_memory_go_to_a_file_of_the_cache_with_the_same_pixels(monkeypatch):
    from test_train import tiny_config

    import selfsup.engine.data as engine_data
    from selfsup.engine import source_images, training_data

    cfg = tiny_config(data={"source": "image:skimage/astronaut", "size": 32, "samples_per_epoch": 5000})
    arr = source_images(cfg)
    in_memory, _ = training_data(cfg, arr, per_sample_state=True)
    assert not isinstance(in_memory.images, np.memmap)
    monkeypatch.setattr(engine_data, "available_ram", lambda: 1000)  # nothing fits: made into the cache
    on_disk, _ = training_data(cfg, arr, per_sample_state=True)
    assert isinstance(on_disk.images, np.memmap)
    assert np.array_equal(np.asarray(on_disk.images), in_memory.images)
    again, _ = training_data(cfg, arr, per_sample_state=True)  # made once: the second run reads the same file
    assert again.images.filename == on_disk.images.filename


def test_features_larger_than_memory_go_to_a_file_and_knn_and_probe_statistics_stream_through_them(monkeypatch):
    import selfsup.eval.features as features
    import selfsup.eval.linear as linear
    from selfsup.eval.knn import knn_predict
    from selfsup.nets import build_backbone

    torch.manual_seed(0)
    net = build_backbone("exemplar_small", input_size=16).eval()
    images = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    in_ram = features.extract_taps(net, images, 16, torch.device("cpu"), list(net.taps), 64, batch_size=16)
    import selfsup.data.stream as stream

    mapped = []
    real_open = np.lib.format.open_memmap
    monkeypatch.setattr(np.lib.format, "open_memmap", lambda path, **kw: mapped.append(path) or real_open(path, **kw))
    monkeypatch.setattr(stream, "available_ram", lambda: 1000)  # nothing fits: every tap goes to a file
    spilled = features.extract_taps(net, images, 16, torch.device("cpu"), list(net.taps), 64, batch_size=16)
    assert len(mapped) == len(in_ram)
    for name in in_ram:
        assert torch.equal(in_ram[name], spilled[name])
    assert not any(p.exists() for p in mapped)  # removed at once: nothing is left behind, the mappings hold the data

    x = spilled[list(spilled)[-1]]
    exact = linear._standardise(x, torch.device("cpu"))
    monkeypatch.setattr(linear, "STATS_AT_ONCE", 0)
    monkeypatch.setattr(linear, "STATS_CHUNK", 7)  # several chunks, the last one short
    chunked = linear._standardise(x, torch.device("cpu"))
    assert torch.allclose(exact[0], chunked[0], atol=1e-5) and torch.allclose(exact[1], chunked[1], rtol=1e-4)

    import selfsup.eval.knn as knn

    labels = torch.arange(40) % 4
    queries = torch.randn(9, x.shape[1])
    whole = knn_predict(x[:30].float(), labels[:30], queries, 4, k=5)
    monkeypatch.setattr(knn, "BANK_CHUNK", 8)  # the bank in 4 chunks, the running 5 best merged across them
    chunked_bank = knn._knn_streamed(x[:30].float(), labels[:30], queries, 4, 5, 0.1, 4, torch.device("cpu"))
    assert torch.allclose(whole, chunked_bank, rtol=1e-5)


@pytest.fixture(scope="module")
def imagenet_and_shards(tmp_path_factory):
    """A fabricated 20-class ImageNet layout (mixed sizes; a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG and a
    WebP among the training images; a flat val labelled by LOC_val_solution.csv) and two WebDataset-style shards."""
    from test_data_scale import _imagenet, _shard

    root = tmp_path_factory.mktemp("imagenet")
    val = _imagenet(root)
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i:08d},{w} 1 2 3 4\n" for i, w in enumerate(val, start=1)))
    shards = tmp_path_factory.mktemp("shards")
    for s in range(2):
        _shard(shards / f"train-{s:04d}.tar", [(f"s{s}_{i}{'p' if i == 1 else ''}", i % 5, "cls") for i in range(20)])
    return root, shards


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_streamed_from_an_imagenet_folder_is_bit_identical_to_resident(tmp_path, monkeypatch,
                                                                                    imagenet_and_shards, name):
    import selfsup.engine.loop as loop

    root, _ = imagenet_and_shards
    reads = []  # rows the training loop's streaming thread read (the end-of-run kNN streams its splits either way)

    class Counting(Prefetcher):
        def __init__(self, images, batches, *args):
            batches = list(batches)
            reads.append(sum(len(b) for b in batches))
            super().__init__(images, batches, *args)

    monkeypatch.setattr(loop, "Prefetcher", Counting)
    runs = {}
    for mode, budget in (("resident", None), ("streamed", 0.0)):
        cfg = _config(name)
        cfg.data.source, cfg.data.size, cfg.data.device_budget_gb = f"imagenet:{root}", 16, budget
        cfg.eval.knn_every = 0
        fit(None, None, cfg, tmp_path / mode, progress=False)
        runs[mode] = load_checkpoint(tmp_path / mode)
        assert runs[mode]["epoch"] == cfg.epochs
        if mode == "resident":
            assert reads == [], "the resident run read batches from the host"
    assert sum(reads) >= 4 * 16, "the streamed run did not read its batches from the cache"
    _same(runs["resident"]["method"], runs["streamed"]["method"], "method")
    _same(runs["resident"]["optimizer"], runs["streamed"]["optimizer"], "optimizer")
    assert _without_timing(read_metrics(tmp_path / "resident")) == _without_timing(read_metrics(tmp_path / "streamed"))


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_pretrains_streamed_from_tar_shards(tmp_path, imagenet_and_shards, name):
    _, shards = imagenet_and_shards
    cfg = _config(name)
    cfg.data.source, cfg.data.size, cfg.data.device_budget_gb = f"shards:{shards}/train-{{0000..0001}}.tar", 16, 0.0
    cfg.eval.knn_every = 0
    method = fit(None, None, cfg, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run")["epoch"] == cfg.epochs
    assert all(torch.isfinite(p).all() for p in method.parameters())


def test_pretrain_from_the_command_line_on_imagenet_and_shards_streams_and_matches_resident(tmp_path,
                                                                                           imagenet_and_shards,
                                                                                           capsys):
    from selfsup.cli import main

    root, shards = imagenet_and_shards
    common = ["epochs=1", "batch_size=16", "data.size=16", "model.backbone=exemplar_small", "model.input_size=16",
              "augment.size=16", "optim.warmup_epochs=0", "eval.knn_every=1", "eval.knn_k=5", "eval.size=16",
              "sela.num_clusters=4", "sela.num_heads=2", "simclr.proj_hidden=32", "simclr.proj_dim=16"]
    for method, source in (("simclr", f"imagenet:{root}"), ("sela", f"shards:{shards}/train-{{0000..0001}}.tar")):
        eval_source = [] if method == "simclr" else ["eval.source=digits"]  # shards have no val split here
        for mode, budget in (("resident", []), ("streamed", ["data.device_budget_gb=0"])):
            assert main(["pretrain", "--out", str(tmp_path / f"{method}-{mode}"), f"method={method}",
                         f"data.source={source}", *common, *eval_source, *budget]) == 0
        assert ", streamed)" in capsys.readouterr().err
        resident, streamed = (load_checkpoint(tmp_path / f"{method}-{m}") for m in ("resident", "streamed"))
        _same(resident["method"], streamed["method"], "method")
        assert _without_timing(read_metrics(tmp_path / f"{method}-resident")) == \
            _without_timing(read_metrics(tmp_path / f"{method}-streamed"))


def test_the_streaming_benchmark_rehearses_on_digits(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "streaming.py"
    subprocess.run([sys.executable, str(script), "--tiny", "--repeats", "1", "--r50-sizes", "", "--sizes", "2000",
                    "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")], check=True, capture_output=True)
    (result,) = (tmp_path / "out").glob("streaming-cpu-*.json")
    data = json.loads(result.read_text())
    assert set(data["epoch"]) == {"simclr", "sela"}
    for rows in data["epoch"].values():
        assert all(len(r["epoch_seconds"]) == 1 and r["wall_seconds"] > 0 for m in rows.values() for r in m)
    assert set(data["memory"]) == {"2000"}
    assert all(m["peak_rss_mb"] > 0 for modes in data["memory"].values() for m in modes.values())
    text = result.with_suffix(".md").read_text()
    assert "| simclr |" in text and "| 2,000 |" in text


def test_sela_labels_from_log_probabilities_kept_on_the_host_agree_with_the_device(monkeypatch):
    import selfsup.methods.sela as sela
    from selfsup.config import load_config
    from selfsup.data import load_source
    from selfsup.methods import build_method, get_method

    cfg = load_config(overrides={"method": "sela", "model": {"backbone": "exemplar_small", "input_size": 16},
                                 "augment": {"size": 16}, "sela": {"num_clusters": 10, "num_heads": 2}})
    arr = load_source("digits", "train", size=16)
    torch.manual_seed(0)
    method = build_method(cfg, get_method("sela").data_info(cfg, arr))
    images = Images(arr.images, "cpu", resident=False)
    initial = method.labels.clone()
    method.relabel(images)
    on_device = method.labels.clone()
    assert (on_device != initial).float().mean() > 0.5  # relabelling moved most labels off the random start
    kept = []
    real_pass = type(method).dataset_pass

    def recording_pass(self, fn, images, what="pass", on_host=False):
        out = real_pass(self, fn, images, what, on_host)
        kept.append((on_host, out.dtype))
        return out

    monkeypatch.setattr(type(method), "dataset_pass", recording_pass)
    monkeypatch.setattr(sela, "device_budget", lambda *a: 0)  # the (N, heads, K) log-probabilities go to the host
    method.labels.copy_(initial)
    method.relabel(images)
    assert kept == [(True, torch.float16)]
    assert (method.labels == on_device).float().mean() > 0.97  # fp16 storage moves only near-ties


def test_a_subset_or_imbalance_larger_than_memory_is_copied_once_into_the_cache(monkeypatch):
    import selfsup.data.stream as stream
    from selfsup.data import imbalanced, load_source, subset

    arr = load_source("digits", "train", size=16)
    in_memory = imbalanced(arr, "light", seed=3), subset(arr, 500, seed=3)
    assert not any(isinstance(a.images, np.memmap) for a in in_memory)
    monkeypatch.setattr(stream, "available_ram", lambda: 1000)  # nothing fits: the kept rows go to a cache file
    on_disk = imbalanced(arr, "light", seed=3), subset(arr, 500, seed=3)
    for mem, disk in zip(in_memory, on_disk):
        assert isinstance(disk.images, np.memmap)
        assert np.array_equal(np.asarray(disk.images), mem.images) and np.array_equal(disk.labels, mem.labels)
    assert subset(arr, 500, seed=3).images.filename == on_disk[1].images.filename  # made once, then reused
    assert subset(arr, 500, seed=4).images.filename != on_disk[1].images.filename  # other rows, another file

"""SeLa and DeepCluster: label schedules, equal partitions, k-means, uniform cluster sampling, label export."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import tiny_config

from selfsup.cli import main
from selfsup.engine import load_checkpoint, pretrain
from selfsup.eval.cluster import cluster_metrics, hungarian_accuracy
from selfsup.methods.deepcluster import kmeans, kmeans_torch, pca_whiten
from selfsup.methods.sela import label_schedule
from selfsup.ot import self_label, sinkhorn


def _blobs(n_per=50, k=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 5
    x = torch.cat([centres[c] + torch.randn(n_per, d, generator=g) * 0.3 for c in range(k)])
    return x, torch.arange(k).repeat_interleave(n_per), centres


def test_metrics_on_permuted_and_random_labels():
    truth = np.repeat(np.arange(5), 20)
    perm = np.array([3, 0, 4, 1, 2])[truth]
    assert hungarian_accuracy(perm, truth) == 100.0
    m = cluster_metrics(perm, truth)
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)
    noise = np.random.default_rng(0).integers(0, 5, 100)
    assert cluster_metrics(noise, truth)["nmi"] < 0.2 and hungarian_accuracy(noise, truth) < 45
    # Splitting every class into two clusters: one-to-one matching finds half, majority mapping all.
    split = truth * 2 + np.arange(100) % 2
    assert hungarian_accuracy(split, truth) == 50.0 and cluster_metrics(split, truth)["purity"] == 100.0


def test_label_schedule_spacing():
    assert label_schedule(100, 5) == [0, 20, 40, 60, 80]
    quad = label_schedule(100, 5, "quadratic")
    assert quad == [0, 4, 16, 36, 64] and len(label_schedule(3, 10)) == 3
    # One label step per epoch means every epoch: computed in floats, 29 / 400 * 400 fell to 28 and six epochs of
    # sela_cifar10.yaml's 400 lost their step.
    assert label_schedule(400, 400) == list(range(400))
    quad = label_schedule(400, 100, "quadratic")  # sela_imagenet.yaml: steps 0-4 all fall in epoch 0
    assert len(quad) == 93 and quad[:5] == [0, 1, 2, 3, 4] and quad[-1] == 392  # floor(99^2 / 100^2 * 400)


def test_sinkhorn_labels_recover_separable_clusters_and_never_collapse():
    x, truth, centres = _blobs()
    log_p = F.log_softmax(x @ centres.T / 10, dim=1)
    labels = self_label(log_p, lam=10.0, tol=1e-3)
    assert cluster_metrics(labels.numpy(), truth.numpy())["nmi"] > 0.99
    # A model that puts every sample in cluster 0: its own argmax collapses, the transport plan cannot.
    g = torch.Generator().manual_seed(0)
    collapsed = torch.log_softmax(torch.tensor([[5.0, 0, 0, 0]]) + torch.randn(200, 4, generator=g), dim=1)
    assert torch.bincount(collapsed.argmax(1), minlength=4).tolist() == [200, 0, 0, 0]
    q = sinkhorn(collapsed, lam=10.0)
    torch.testing.assert_close(q.sum(0), torch.full((4,), 0.25), atol=1e-5, rtol=0)
    counts = torch.bincount(q.argmax(1), minlength=4)
    assert counts.min() >= 35 and counts.max() <= 65, counts


def test_kmeans_recovers_blobs_and_handles_empty_clusters():
    x, truth, _ = _blobs(seed=1)
    assign, centroids = kmeans_torch(x, 4, iters=30, seed=0)
    assert cluster_metrics(assign.numpy(), truth.numpy())["nmi"] > 0.95
    # Many identical points: some initial centroids coincide and their clusters empty out; every label stays valid.
    dup = torch.cat([torch.zeros(60, 3), torch.ones(60, 3), torch.randn(4, 3) * 10])
    assign, centroids = kmeans_torch(dup, 6, iters=10, seed=0)
    assert assign.min() >= 0 and assign.max() < 6 and torch.isfinite(centroids).all()
    assert len(torch.unique(assign)) >= 3
    torch.testing.assert_close(kmeans(x, 4, 30, 0, backend="torch"), kmeans_torch(x, 4, 30, 0)[0])


def test_kmeans_splits_the_largest_cluster_to_refill_an_empty_one():
    # A: 150 distinct points in the unit square; B: 100 copies of one far point. Three initial centroids drawn from the
    # points land two in B with chance 0.35 per seed; the copies all go to the first of them, leaving the other empty.
    g = torch.Generator().manual_seed(0)
    a = torch.rand(150, 2, generator=g, dtype=torch.float64)
    x = torch.cat([a, torch.full((100, 2), 50.0, dtype=torch.float64)])
    split_seen = 0
    for seed in range(10):
        assign, _ = kmeans_torch(x, 3, iters=20, seed=seed)
        # Whatever the start: B is one cluster and A, the largest, is cut in two halves; no cluster stays empty.
        assert len(torch.unique(assign[150:])) == 1, seed
        parts = torch.bincount(assign[:150], minlength=3)
        assert parts[assign[150]] == 0 and sorted(parts.tolist())[1:] >= [60, 60], (seed, parts)
        # After one iteration an emptied cluster sits (up to 1e-4 noise) on the centroid of the largest cluster (A).
        _, centroids = kmeans_torch(x, 3, iters=1, seed=seed)
        split_seen += int(((centroids - a.mean(0)).norm(dim=1) < 1e-3).sum() == 2)
    assert split_seen >= 1


def test_faiss_kmeans_agrees_with_the_torch_kmeans():
    pytest.importorskip("faiss")
    # Two blobs, so that no initialisation can trap Lloyd's iterations in a local minimum for either backend.
    x, truth, _ = _blobs(k=2, seed=2)
    for seed in range(3):
        by_faiss = kmeans(x, 2, 30, seed, backend="faiss")
        assert by_faiss.dtype == torch.long and by_faiss.shape == (len(x),)
        assert cluster_metrics(by_faiss.numpy(), truth.numpy())["nmi"] == pytest.approx(1.0)
        assert (cluster_metrics(by_faiss.numpy(), kmeans(x, 2, 30, seed, backend="torch").numpy())["nmi"]
                == pytest.approx(1.0))
        assert torch.equal(kmeans(x, 2, 30, seed, backend="auto"), by_faiss)  # auto prefers faiss when installed
    dup = torch.cat([torch.zeros(60, 3), torch.ones(60, 3), torch.randn(4, 3) * 10])
    assign = kmeans(dup, 6, 10, 0, backend="faiss")
    assert assign.min() >= 0 and assign.max() < 6


def test_pca_whitening_gives_unit_norm_decorrelated_features():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 20, generator=g) @ torch.randn(20, 20, generator=g) + 3.0  # correlated, off-centre
    w = pca_whiten(x, 8)
    assert w.shape == (500, 8) and w.dtype == torch.float32
    torch.testing.assert_close(w.norm(dim=1), torch.ones(500), atol=1e-5, rtol=0)
    # Before the L2 normalisation: scikit-learn's whitened PCA (top 8 components, unit variance over N - 1), whose
    # components carry an arbitrary sign each. After it, the rows of both must agree up to those signs.
    ref = torch.from_numpy(PCA(n_components=8, whiten=True, svd_solver="full").fit_transform(x.double().numpy()))
    torch.testing.assert_close(ref.T @ ref / 499, torch.eye(8, dtype=torch.float64), atol=1e-8, rtol=0)
    sign = torch.sign((w.double() * ref).sum(0))
    torch.testing.assert_close(w.double() * sign, F.normalize(ref, dim=1), atol=1e-5, rtol=0)
    # Decorrelated and of equal variance: whitened Gaussian data normalised to the sphere has covariance I / 8.
    cov = torch.cov(w.double().T)
    assert (cov - torch.eye(8, dtype=torch.float64) / 8).abs().max() < 0.02, cov


@pytest.mark.parametrize("method,extra", [
    ("sela", {"sela": {"num_clusters": 10, "num_heads": 2, "label_steps": 2}}),
    ("deepcluster", {"deepcluster": {"num_clusters": 10, "pca_dim": 32, "backend": "torch"}}),
])
def test_labelling_methods_train_resume_and_export(method, extra, tmp_path):
    quiet = {"knn_every": 0}  # no kNN monitor: this test looks at the labels
    cfg = tiny_config(method=method, data={"samples_per_epoch": None}, epochs=2, eval=quiet, **extra)
    pretrain(tiny_config(method=method, data={"samples_per_epoch": None}, epochs=2, max_minutes=0.0, eval=quiet,
                         **extra), tmp_path / "run", progress=False)
    labels_after_1 = load_checkpoint(tmp_path / "run")["method"]["labels"]
    last = pretrain(cfg, tmp_path / "run", resume=True, progress=False)
    assert last["epoch"] == 2 and np.isfinite(last["loss"])
    labels = load_checkpoint(tmp_path / "run")["method"]["labels"]
    assert labels.shape == labels_after_1.shape
    if method == "sela":
        # Labels from the equal-partition plan: no head collapses, every cluster is in use.
        counts = torch.stack([torch.bincount(h, minlength=10) for h in labels])
        assert counts.min() > 0 and counts.max() < 3 * labels.shape[-1] / 10, counts
    out = tmp_path / "labels.csv"
    assert main(["labels", str(tmp_path / "run"), "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == labels.shape[-1]
    assert [int(r["label_0"]) for r in rows] == labels.view(-1, labels.shape[-1])[0].tolist()
    assert all(0 <= float(r["confidence_0"]) <= 1 for r in rows)


def _tiny_method(method, **section):
    from selfsup.config import load_config
    from selfsup.methods import DataInfo, build_method

    cfg = load_config(overrides={"method": method, "model": {"backbone": "exemplar_small", "input_size": 16},
                                 "augment": {"size": 16}, method: section})
    torch.manual_seed(0)
    return build_method(cfg, DataInfo(num_samples=40, input_size=16))


def _tiny_images(n=40):
    return torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_deepcluster_restarts_its_classifier_and_its_momentum_after_each_clustering():
    from selfsup.methods.base import Batch, EpochContext

    method = _tiny_method("deepcluster", num_clusters=4, pca_dim=8, backend="torch")
    images = _tiny_images()
    opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    method(Batch(images[:8], torch.arange(8), torch.Generator().manual_seed(2)))["loss"].backward()
    opt.step()  # every parameter now has a momentum buffer
    heads, backbone = list(method.heads.parameters()), list(method.backbone.parameters())
    assert all(p in opt.state for p in heads + backbone)
    with torch.no_grad():
        method.heads.weight.fill_(0.5)  # what the classifier learnt about the previous clustering's ids
        method.heads.bias.fill_(0.5)
    weights_before = [p.detach().clone() for p in backbone]

    def restart(epoch):
        method.on_epoch_start(EpochContext(epoch, 3, images, torch.device("cpu"), opt, seed=3))
        return method.heads.weight.detach().clone()

    new = restart(1)
    # The authors' restart (deepcluster main.py: weight normal_(0, 0.01), bias zero_()), nothing of the 0.5 left.
    assert abs(new.std().item() - 0.01) < 0.002 and abs(new.mean().item()) < 0.002
    assert torch.equal(method.heads.bias, torch.zeros_like(method.heads.bias))
    # The classifier's momentum is dropped; the backbone keeps its own and its weights.
    assert not any(p in opt.state for p in heads)
    assert all(p in opt.state and "momentum_buffer" in opt.state[p] for p in backbone)
    assert all(torch.equal(p, q) for p, q in zip(backbone, weights_before))
    # The draw is seeded by the epoch (every process draws the same); the next clustering draws anew.
    assert torch.equal(restart(1), new) and not torch.equal(restart(2), new)


@pytest.mark.parametrize("spacing,epochs", [("linear", [0, 5, 10, 15]), ("quadratic", [0, 1, 5, 11])])
def test_sela_relabels_only_at_the_scheduled_epochs(spacing, epochs):
    from selfsup.methods.base import EpochContext

    # 4 label steps over 20 epochs: linear at 20 * i / 4, quadratic at 20 * (i / 4)^2 (0, 1.25, 5, 11.25), floored.
    method = _tiny_method("sela", num_clusters=4, num_heads=2, label_steps=4, spacing=spacing)
    images, called, relabel = _tiny_images(), [], method.relabel
    method.relabel = lambda imgs: (called.append(epoch), relabel(imgs))
    initial = method.labels.clone()
    for epoch in range(20):
        method.on_epoch_start(EpochContext(epoch, 20, images, torch.device("cpu"), None, seed=0))
    assert called == epochs
    assert not torch.equal(method.labels, initial)  # the label steps did relabel


def test_deepcluster_samples_uniformly_over_clusters():
    from selfsup.config import load_config
    from selfsup.methods import DataInfo, build_method

    cfg = load_config(overrides={"method": "deepcluster", "model": {"backbone": "exemplar_small"},
                                 "deepcluster": {"num_clusters": 4}})
    method = build_method(cfg, DataInfo(num_samples=1000))
    method.labels[0] = torch.tensor([0] * 700 + [1] * 200 + [2] * 100 + [3] * 0)  # cluster 3 is empty
    order = method.epoch_order(20000, torch.Generator().manual_seed(0))
    freq = torch.bincount(method.labels[0, order], minlength=4).float() / 20000
    assert freq[3] == 0 and (freq[:3] - 1 / 3).abs().max() < 0.02


def test_labelling_methods_refuse_resampled_real_images(tmp_path):
    from selfsup.errors import SelfSupError

    with pytest.raises(SelfSupError, match="cannot resample real images"):
        pretrain(tiny_config(method="sela"), tmp_path / "run", progress=False)


def test_labelling_methods_train_on_images_synthesised_once(tmp_path):
    from selfsup.engine import run_images

    # Ten digits: fewer than a batch, so 128 images are synthesised from them once, the same every time.
    cfg = tiny_config(method="sela", data={"num_images": 10}, eval={"knn_every": 0},
                      sela={"num_clusters": 4, "num_heads": 2, "label_steps": 2})
    data, again = run_images(cfg), run_images(cfg)
    size = cfg.data.single_image.size
    assert data.images.shape == (128, size, size, 3) and np.array_equal(data.images, again.images)
    pretrain(cfg, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run")["method"]["labels"].shape == (2, 128)


def test_imbalance_keeps_the_documented_fraction_per_class():
    from selfsup.data import imbalanced, load_source

    full = load_source("digits", "train")
    counts = np.bincount(full.labels)
    for level, f_min in (("light", 0.5), ("heavy", 0.1)):
        sub = imbalanced(full, level)
        kept = np.bincount(sub.labels, minlength=10)
        expect = np.round(counts * (1 - (1 - f_min) * np.arange(10) / 9)).astype(int)
        assert kept.tolist() == expect.tolist()
        assert len(sub.images) == kept.sum()


def test_labels_export_transfer_round_trip_and_cluster_grid(tmp_path):
    extra = {"sela": {"num_clusters": 10, "num_heads": 2, "label_steps": 1}}
    pretrain(tiny_config(method="sela", data={"samples_per_epoch": None}, epochs=1, eval={"knn_every": 0}, **extra),
             tmp_path / "sela", progress=False)
    csv_path = tmp_path / "labels.csv"
    assert main(["labels", str(tmp_path / "sela"), "-o", str(csv_path)]) == 0
    assert (tmp_path / "labels_clusters.png").stat().st_size > 500
    # A different architecture trained from the exported labels alone keeps exactly those labels as its targets.
    assert main(["transfer", str(csv_path), "--arch", "alexnet_small", "--from", str(tmp_path / "sela"),
                 "--out", str(tmp_path / "moved"), "epochs=1", "model.width=0.25"]) == 0
    moved = load_checkpoint(tmp_path / "moved")
    assert moved["config"]["model"]["backbone"] == "alexnet_small" and moved["config"]["method"] == "supervised"
    exported = torch.tensor([[int(r[f"label_{t}"]) for r in csv.DictReader(csv_path.open())] for t in range(2)])
    assert torch.equal(moved["method"]["labels"], exported)
    assert torch.equal(exported, load_checkpoint(tmp_path / "sela")["method"]["labels"])


def test_bad_labels_file_is_one_line(tmp_path):
    from selfsup.errors import SelfSupError
    from selfsup.methods.supervised import read_labels_csv

    with pytest.raises(SelfSupError, match="does not exist"):
        read_labels_csv(tmp_path / "none.csv", 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("index,label_0\n0,1\n1,2\n")
    with pytest.raises(SelfSupError, match="labels 2 samples but the training data has 3"):
        read_labels_csv(bad, 3)


def test_supervised_baseline_on_true_labels(tmp_path):
    from selfsup.augmentation import to_input
    from selfsup.data import load_source
    from selfsup.engine import load_run

    cfg = tiny_config(method="supervised", data={"samples_per_epoch": None}, epochs=2, eval={"knn_every": 0})
    assert np.isfinite(pretrain(cfg, tmp_path / "sup", progress=False)["loss"])
    # Its classifier names the held-out digits; the same run at its initialisation is at chance (10%). (The backbone's
    # kNN accuracy would not tell: random features of digits already score far above chance there.)
    test = load_source("digits", "test", size=16)

    def accuracy(method):
        with torch.no_grad():
            logits = method.logits(to_input(torch.from_numpy(np.array(test.images)), 16, method.input_transform))
        return 100 * (logits[:, 0].argmax(1).numpy() == test.labels).mean()

    trained, untrained = accuracy(load_run(tmp_path / "sup")), accuracy(load_run(tmp_path / "sup", random_init=True))
    assert trained > untrained + 40, (trained, untrained)  # 87% vs 10% when written

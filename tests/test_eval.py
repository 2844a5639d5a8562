import pytest
import torch

from selfsup.eval import knn_accuracy, knn_predict, probe_pool, train_linear_probes

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n_per=60, d=16, classes=4, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 3
    x = torch.cat([centres[c] + spread * torch.randn(n_per, d, generator=g) for c in range(classes)])
    y = torch.arange(classes).repeat_interleave(n_per)
    return x, y


def test_knn_on_separable_blobs():
    xtr, ytr = _blobs(seed=0)
    xte, yte = _blobs(n_per=20, seed=0)
    assert knn_accuracy(xtr, ytr, xte + 0.01, yte, 4, k=10, temperature=0.1) == 100.0


def _naive_votes(bank, labels, queries, classes, k, t):
    """Weighted kNN written out: the k most cosine-similar bank entries vote exp(similarity / t) for their class."""
    bn = bank / bank.norm(dim=1, keepdim=True)
    out = torch.zeros(len(queries), classes)
    for i, q in enumerate(queries):
        sims = bn @ (q / q.norm())
        for j in sims.argsort(descending=True)[:k]:
            out[i, labels[j]] += torch.exp(sims[j] / t)
    return out


def test_knn_matches_a_naive_weighted_vote():
    g = torch.Generator().manual_seed(3)
    bank, labels = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    queries = torch.randn(7, 6, generator=g)
    scores = knn_predict(bank, labels, queries, 3, k=5, temperature=0.2, chunk=3)
    torch.testing.assert_close(scores, _naive_votes(bank, labels, queries, 3, 5, 0.2), rtol=1e-4, atol=1e-5)


def test_knn_accuracy_is_the_naive_votes_accuracy():
    """On data where kNN is neither always right nor always wrong, the accuracy is that of the naive vote."""
    g = torch.Generator().manual_seed(5)
    bank, labels = torch.randn(80, 5, generator=g), torch.randint(0, 4, (80,), generator=g)
    queries, truth = torch.randn(40, 5, generator=g), torch.randint(0, 4, (40,), generator=g)
    expected = 100.0 * (_naive_votes(bank, labels, queries, 4, 7, 0.1).argmax(1) == truth).float().mean().item()
    assert 0 < expected < 100
    assert knn_accuracy(bank, labels, queries, truth, 4, k=7, temperature=0.1) == pytest.approx(expected)
    # Separable blobs with shuffled training labels fall to about chance (25%).
    xtr, ytr = _blobs(seed=0)
    xte, yte = _blobs(n_per=20, seed=2)
    shuffled = ytr[torch.randperm(len(ytr), generator=g)]
    assert knn_accuracy(xtr, shuffled, xte, yte, 4, k=10, temperature=0.1) < 60


def test_probe_pool_sizes():
    x = torch.randn(2, 64, 36, 36, generator=torch.Generator().manual_seed(0))
    pooled = probe_pool(x)
    assert pooled.shape == (2, 64 * 12 * 12)  # 9216 ~ 9600
    # Each output is the mean of its own 3x3 block of its own channel.
    torch.testing.assert_close(pooled, x.view(2, 64, 12, 3, 12, 3).mean((3, 5)).flatten(1))
    assert probe_pool(torch.zeros(2, 64, 32, 32)).shape == (2, 64 * 12 * 12)
    assert probe_pool(torch.zeros(2, 256, 4, 4)).shape == (2, 256 * 4 * 4)  # never upsampled
    flat = torch.randn(2, 128)
    assert probe_pool(flat) is flat


def test_linear_probes_learn_separable_and_fail_on_noise():
    xtr, ytr = _blobs(seed=1)
    xte, yte = _blobs(n_per=25, seed=1)
    g = torch.Generator().manual_seed(7)
    noise_tr = torch.randn(xtr.shape, generator=g)
    noise_te = torch.randn(xte.shape, generator=g)
    accs = train_linear_probes({"good": xtr, "noise": noise_tr}, ytr, {"good": xte, "noise": noise_te}, yte, 4,
                               epochs=20, batch_size=32)
    assert accs["good"] > 95, accs
    assert accs["noise"] < 50  # chance is 25%


def test_few_label_probes_draw_balanced_subsets_and_measure_on_the_whole_test_split():
    from selfsup.config import load_config
    from selfsup.eval import TapFeatures, few_label_probes, few_label_subsets

    labels = torch.arange(4).repeat_interleave(25)  # 4 classes of 25
    subsets = few_label_subsets(labels, per_class=5, draws=3, seed=0)
    assert [torch.bincount(labels[s], minlength=4).tolist() for s in subsets] == [[5, 5, 5, 5]] * 3
    assert not torch.equal(subsets[0], subsets[1])  # seeded draws differ from each other ...
    assert all(torch.equal(a, b) for a, b in zip(subsets, few_label_subsets(labels, 5, 3, seed=0)))  # ... and repeat
    gen = torch.Generator().manual_seed(0)
    signal = torch.nn.functional.one_hot(labels, 4).float() * 3 + torch.randn(100, 4, generator=gen)
    noise = torch.randn(100, 4, generator=gen)
    test_labels = torch.arange(4).repeat_interleave(50)
    test = {"good": torch.nn.functional.one_hot(test_labels, 4).float() * 3 + torch.randn(200, 4, generator=gen),
            "noise": torch.randn(200, 4, generator=gen)}
    feats = TapFeatures({"good": signal, "noise": noise}, test, labels, test_labels, 4)
    cfg = load_config(overrides={"eval": {"probe_lr": 0.05}})
    result = few_label_probes(feats, cfg, torch.device("cpu"), per_class=5, draws=3)
    assert result["good"][0] > 85 and result["noise"][0] < 45  # chance is 25%
    assert result["good"][1] >= 0 and result["noise"][1] > 0  # a spread over the draws

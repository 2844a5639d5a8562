import torch

from selfsup.eval import knn_accuracy, knn_predict, probe_pool, train_linear_probes


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


def test_knn_matches_a_naive_weighted_vote():
    g = torch.Generator().manual_seed(3)
    bank, labels = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    queries = torch.randn(7, 6, generator=g)
    scores = knn_predict(bank, labels, queries, 3, k=5, temperature=0.2, chunk=3)
    bn = bank / bank.norm(dim=1, keepdim=True)
    for i, q in enumerate(queries):
        sims = bn @ (q / q.norm())
        top = sims.argsort(descending=True)[:5]
        expect = torch.zeros(3)
        for j in top:
            expect[labels[j]] += torch.exp(sims[j] / 0.2)
        torch.testing.assert_close(scores[i], expect, rtol=1e-4, atol=1e-5)


def test_probe_pool_sizes():
    assert probe_pool(torch.zeros(2, 64, 32, 32)).shape == (2, 64 * 12 * 12)  # 9216 ~ 9600
    assert probe_pool(torch.zeros(2, 256, 4, 4)).shape == (2, 256 * 4 * 4)  # never upsampled
    assert probe_pool(torch.zeros(2, 128)).shape == (2, 128)


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

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import nt_xent


def naive_nt_xent(z1, z2, t):
    """SimCLR's loss written out: for every view k, -log(exp(sim(k, pos)/t) / sum_{j != k} exp(sim(k, j)/t))."""
    z = torch.cat([F.normalize(z1, dim=1), F.normalize(z2, dim=1)]).double()
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for k in range(n2):
        pos = (k + n) % n2
        num = math.exp(float(z[k] @ z[pos]) / t)
        den = sum(math.exp(float(z[k] @ z[j]) / t) for j in range(n2) if j != k)
        total += -math.log(num / den)
    return total / n2


def test_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    for n, d, t in ((4, 3, 0.5), (7, 16, 0.1), (1, 5, 1.0)):
        z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        assert abs(nt_xent(z1, z2, t).item() - naive_nt_xent(z1, z2, t)) < 1e-4


def test_perfect_pairs_give_low_loss_and_gradients_flow():
    z = torch.eye(8)
    low = nt_xent(z, z.clone(), 0.1).item()
    z1 = torch.randn(8, 8, requires_grad=True)
    high = nt_xent(z1, torch.randn(8, 8), 0.1)
    high.backward()
    assert low < 0.01 < high.item()
    assert z1.grad.abs().sum() > 0


def test_gradients_match_the_naive_reference():
    """Gradients through nt_xent equal autograd through a loop-by-loop float64 reference (positive of view k is k +- n;
    candidates are all other 2N-1 views)."""
    g = torch.Generator().manual_seed(1)
    n, d, t = 5, 7, 0.3
    z1, z2 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    nt_xent(a1.float(), a2.float(), t).backward()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    views = [v / v.norm() for v in [*b1, *b2]]
    terms = []
    for k in range(2 * n):
        sims = torch.stack([views[k] @ views[j] / t for j in range(2 * n) if j != k])
        pos = views[k] @ views[(k + n) % (2 * n)] / t
        terms.append(torch.logsumexp(sims, 0) - pos)
    torch.stack(terms).mean().backward()
    torch.testing.assert_close(a1.grad, b1.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a2.grad, b2.grad, atol=1e-5, rtol=1e-4)
    assert b1.grad.abs().max() > 1e-3


def test_temperature_and_scale():
    """Only directions count (embeddings are normalised), and the temperature divides every similarity."""
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    torch.testing.assert_close(nt_xent(3 * z1, 0.5 * z2, 0.2), nt_xent(z1, z2, 0.2))
    for t in (0.05, 0.5, 2.0):
        assert abs(nt_xent(z1, z2, t).item() - naive_nt_xent(z1, z2, t)) < 1e-4
    assert nt_xent(z1, z2, 0.05).item() != pytest.approx(nt_xent(z1, z2, 0.5).item())

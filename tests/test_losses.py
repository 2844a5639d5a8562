import math

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

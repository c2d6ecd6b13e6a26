"""Sparse dropout against the reference ``F.dropout``: same values, same mask distribution, exact gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alseg.model.dropout import MCDropout, dropped_positions, sparse_dropout


def test_positions_are_sorted_unique_and_in_range():
    torch.manual_seed(0)
    pos = dropped_positions(100_000, 0.01)
    assert pos.dtype == torch.long
    assert bool((pos[1:] > pos[:-1]).all()) and int(pos[0]) >= 0 and int(pos[-1]) < 100_000


@pytest.mark.parametrize("p", [0.01, 0.1])
def test_drop_rate_matches_binomial(p):
    """The number of dropped elements over many draws stays within 4 sigma of n·p."""
    torch.manual_seed(1)
    n, draws = 50_000, 40
    counts = torch.tensor([float(dropped_positions(n, p).numel()) for _ in range(draws)])
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(counts.mean().item() - n * p) < 4 * sigma / math.sqrt(draws)
    assert abs(counts.std().item() - sigma) < 0.35 * sigma  # the spread of a binomial, not a fixed count


def test_every_position_equally_likely_and_independent():
    """A Bernoulli process: each position's frequency ≈ p (chi-square over blocks) and the
    gap after a drop is Geometric(p), i.e. neighbours are not correlated."""
    torch.manual_seed(2)
    n, p, draws = 2_000, 0.05, 2_000
    hits = torch.zeros(n)
    adjacent = 0
    total = 0
    for _ in range(draws):
        pos = dropped_positions(n, p)
        hits[pos] += 1
        adjacent += int(((pos[1:] - pos[:-1]) == 1).sum())
        total += pos.numel()
    block = hits.view(20, 100).sum(1)  # 20 blocks, expected draws·100·p each
    expected = draws * 100 * p
    chi2 = float(((block - expected) ** 2 / expected).sum())
    assert chi2 < 45.3  # chi-square, 19 degrees of freedom, p = 0.001
    assert hits[0] > 0 and hits[-1] > 0  # both ends reachable (no truncated tail)
    assert abs(adjacent / total - p) < 0.01  # P(next position dropped | this one) = p


def test_values_and_gradient_match_the_reference_mask():
    torch.manual_seed(3)
    x = torch.randn(4, 8, 16, 12, requires_grad=True)
    y = sparse_dropout(x, 0.1)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.9)
    assert 0.05 < 1 - kept.float().mean().item() < 0.15
    w = torch.randn_like(y)
    (y * w).sum().backward()
    # d/dx of sum(w · mask · x / (1-p)) = w · mask / (1-p): what F.dropout's backward gives for the same mask
    assert torch.allclose(x.grad, w * kept / 0.9)


def test_gradcheck_in_double():
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    gen_state = torch.get_rng_state()

    def f(t):
        torch.set_rng_state(gen_state)  # the same mask at every evaluation
        return sparse_dropout(t, 0.2)

    assert torch.autograd.gradcheck(f, (x,))


def test_seeded_and_matches_f_dropout_statistics():
    torch.manual_seed(4)
    a = sparse_dropout(torch.ones(10_000), 0.01)
    torch.manual_seed(4)
    b = sparse_dropout(torch.ones(10_000), 0.01)
    assert torch.equal(a, b)
    x = torch.ones(200_000)
    ref = F.dropout(x, 0.01, True)
    ours = sparse_dropout(x, 0.01)
    assert ours.sum().item() == pytest.approx(ref.sum().item(), rel=0.005)  # both unbiased: E = n


def test_module_uses_sparse_on_cpu_and_reference_otherwise():
    drop = MCDropout(0.01)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    assert drop(x).grad_fn.name().endswith("_SparseDropoutBackward")
    assert MCDropout(0.01, sparse=False)(x).grad_fn.name() != drop(x).grad_fn.name()
    assert MCDropout(0.5)(x).grad_fn.name() != drop(x).grad_fn.name()  # high rate: dense mask
    drop.eval()
    assert drop(x) is x
    assert MCDropout(0.0)(x) is x


def test_vmap_falls_back_to_reference():
    drop = MCDropout(0.1)
    torch.manual_seed(5)
    out = torch.func.vmap(lambda t: drop(t), randomness="different")(torch.ones(4, 100))
    assert out.shape == (4, 100)
    assert torch.isclose(out, torch.tensor(0.0)).logical_or(torch.isclose(out, torch.tensor(1 / 0.9))).all()
    assert not torch.equal(out[0], out[1])  # each sample its own mask

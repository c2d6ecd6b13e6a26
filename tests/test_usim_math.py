"""Known answers for the pure pieces of USIM (paper §3.3, Appendix A)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alseg.strategies.usim_math import (
    class_weights,
    cosine_similarity,
    draw_query_set,
    elbow_index,
    fisher_diagonal,
    fisher_similarity,
    query_set_size,
    sample_fisher_parameters,
    weighted_uncertainty,
)


def test_class_weights_are_inverse_counts() -> None:
    torch.testing.assert_close(class_weights([100, 50, 400]), torch.tensor([0.01, 0.02, 0.0025], dtype=torch.float64))


def test_unseen_class_gets_the_rarest_seen_weight() -> None:
    w = class_weights(np.array([100, 0, 25]))
    torch.testing.assert_close(w, torch.tensor([0.01, 0.04, 0.04], dtype=torch.float64))
    assert torch.isfinite(w).all()
    torch.testing.assert_close(class_weights([0, 0]), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-negative"):
        class_weights([3, -1])


def test_weighted_uncertainty() -> None:
    std = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    torch.testing.assert_close(
        weighted_uncertainty(std, torch.tensor([0.5, 0.25])), torch.tensor([1.0, 1.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="foreground"):
        weighted_uncertainty(std, torch.ones(3))


def _corner_curve(knee: int, n: int) -> np.ndarray:
    """Steep line down to a sharp corner at ``knee``, then a nearly flat line."""
    x = np.arange(n, dtype=np.float64)
    return np.where(x <= knee, 100.0 - 9.0 * x, 100.0 - 9.0 * knee - 0.01 * (x - knee))


@pytest.mark.parametrize(("knee", "n"), [(10, 200), (37, 1000), (942, 7662)])
def test_elbow_finds_a_sharp_corner(knee: int, n: int) -> None:
    y = _corner_curve(knee, n)
    assert elbow_index(y) == knee
    assert elbow_index(1e-4 * y + 3.0) == knee  # invariant to scaling and shifting the values


def test_elbow_equals_the_maximum_of_kneeds_difference_curve() -> None:
    # kneed (convex, decreasing) normalises x and y to [0, 1] and maximises 1 - x_n - y_n.
    y = np.exp(-np.linspace(0.0, 8.0, 500)) + 0.05 * np.exp(-np.linspace(0.0, 1.0, 500))
    x_n = np.linspace(0.0, 1.0, y.size)
    y_n = (y - y.min()) / (y.max() - y.min())
    assert elbow_index(torch.from_numpy(y)) == int(np.argmax(1.0 - x_n - y_n))


def test_elbow_rejects_unsorted_and_handles_tiny_inputs() -> None:
    with pytest.raises(ValueError, match="descending"):
        elbow_index([1.0, 3.0, 2.0])
    assert elbow_index([2.0, 1.0]) == 0


def test_query_set_size_rules() -> None:
    rng = np.random.default_rng(0)
    u = rng.permutation(_corner_curve(942, 7662))  # order of the pool does not matter
    assert query_set_size(u, budget=100) == 942
    assert query_set_size(u, budget=500) == 2500  # at least 5 B
    assert query_set_size(u[:2000], budget=500) == 2000  # at most |U|
    assert query_set_size(u, budget=100, fixed=20_000) == 20_000  # with replacement, Q may exceed |U|


def test_query_set_is_drawn_with_replacement_proportional_to_u() -> None:
    u = torch.tensor([0.0, 1.0, 3.0, 0.0, 6.0])
    draws, columns = draw_query_set(u, 20_000, np.random.default_rng(0))
    assert draws.shape == (20_000,)
    assert set(columns.tolist()) == {1, 2, 4}
    np.testing.assert_array_equal(columns, np.unique(draws))
    freq = np.bincount(draws, minlength=5) / draws.size
    np.testing.assert_allclose(freq, [0.0, 0.1, 0.3, 0.0, 0.6], atol=0.015)


def test_query_set_determinism_and_uniform_fallback() -> None:
    u = np.random.default_rng(1).random(300)
    a = draw_query_set(u, 50, np.random.default_rng(9))
    b = draw_query_set(u, 50, np.random.default_rng(9))
    np.testing.assert_array_equal(a[0], b[0])
    draws, _ = draw_query_set(np.zeros(4), 4000, np.random.default_rng(0))
    assert set(draws.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="non-negative"):
        draw_query_set(np.array([1.0, -1.0]), 3, np.random.default_rng(0))


def test_cosine_similarity_known_values_and_chunking() -> None:
    G_u = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.0, 0.0]])
    G_q = torch.tensor([[2.0, 0.0], [-1.0, -1.0]])
    s = 2**-0.5
    expected = torch.tensor([[1.0, -s], [0.0, -s], [s, -1.0], [0.0, 0.0]])
    torch.testing.assert_close(cosine_similarity(G_u, G_q), expected)
    torch.testing.assert_close(cosine_similarity(G_u, G_q, chunk_rows=1), expected)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 30, generator=gen), torch.randn(7, 30, generator=gen)
    torch.testing.assert_close(
        cosine_similarity(a, b, chunk_rows=8), torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=2)
    )


def _tiny_segmenter() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1))


def _log_p_pseudo_label(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``log p(ȳ|x)`` of a segmentation: sum over pixels of the log-probability of the argmax."""
    log_p = torch.log_softmax(model(x), dim=1)
    return log_p.gather(1, log_p.argmax(dim=1, keepdim=True)).sum()


def test_fisher_diagonal_is_mean_of_squared_per_sample_gradients() -> None:
    model = _tiny_segmenter()
    xs = torch.randn(6, 1, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())
    rows, running = [], None
    for x in xs:  # one sample at a time, plain autograd
        grads = torch.autograd.grad(_log_p_pseudo_label(model, x), params)
        g = torch.cat([t.flatten() for t in grads])
        rows.append(g)
        running = g.square() if running is None else running + g.square()
    assert running is not None
    F = fisher_diagonal(torch.stack(rows))
    torch.testing.assert_close(F, running / len(xs))
    # The original code's defect (the last sample's square, accumulated) is something else.
    assert not torch.allclose(F, len(xs) * rows[-1].square())


def test_sample_fisher_parameters() -> None:
    F = torch.tensor([0.0, 5.0, 1e-6, 0.0, 3.0, 2.0, 1e-6, 4.0])
    picked = sample_fisher_parameters(F, 3, np.random.default_rng(0))
    assert picked.tolist() == sorted(set(picked.tolist())) and len(picked) == 3
    assert not set(picked.tolist()) & {0, 3}
    # Tiny Fisher values are almost never drawn.
    hits = sum(
        bool({2, 6} & set(sample_fisher_parameters(F, 3, np.random.default_rng(s)).tolist())) for s in range(200)
    )
    assert hits <= 2
    # Fewer non-zero entries than k: all of them.
    assert sample_fisher_parameters(F, 7, np.random.default_rng(0)).tolist() == [1, 2, 4, 5, 6, 7]
    np.testing.assert_array_equal(
        sample_fisher_parameters(F, 3, np.random.default_rng(4)),
        sample_fisher_parameters(F, 3, np.random.default_rng(4)),
    )


def test_fisher_similarity_equals_the_formula() -> None:
    gen = torch.Generator().manual_seed(2)
    k = 6
    G_u, G_q = torch.randn(9, k, generator=gen), torch.randn(4, k, generator=gen)
    F_sel = torch.rand(k, generator=gen) + 0.1
    expected = (G_u.double() @ torch.diag(1.0 / F_sel.double()) @ G_q.double().T / k).float()
    torch.testing.assert_close(fisher_similarity(G_u, G_q, F_sel, damping=0.0, chunk_rows=2), expected)
    torch.testing.assert_close(fisher_similarity(G_u, G_q, F_sel), expected, rtol=1e-5, atol=1e-5)
    # Damping is relative: scaling gradients by a and F by a² leaves the kernel unchanged.
    torch.testing.assert_close(fisher_similarity(10 * G_u, 10 * G_q, 100 * F_sel), fisher_similarity(G_u, G_q, F_sel))
    with pytest.raises(ValueError, match="one column per sampled parameter"):
        fisher_similarity(G_u, G_q[:, :3], F_sel)

"""Known answers for FLQMI and its optimisers, and agreement with submodlib (paper Eq. 1, Appendix A)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from alseg.strategies.submodular import (
    FLQMI,
    naive_greedy,
    nonnegative_kernel,
    stochastic_greedy,
    stochastic_sample_size,
    submodlib_select,
)

# 3 candidates x 2 queries.
S_HAND = torch.tensor(
    [
        [0.9, 0.1],
        [0.2, 0.8],
        [0.5, 0.6],
    ]
)


def _exhaustive_best(fn: FLQMI, budget: int) -> float:
    return max(fn.evaluate(list(c)) for c in itertools.combinations(range(fn.n), budget))


def _clustered_kernel(n: int, q: int, seed: int) -> torch.Tensor:
    """Cosine kernel of clustered embeddings: closer to USIM's kernels than uniform noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(12, 16))[rng.integers(12, size=n)] + 0.7 * rng.normal(size=(n, 16))
    x = torch.nn.functional.normalize(torch.from_numpy(x).float(), dim=1)
    return nonnegative_kernel(x @ x[rng.choice(n, size=q, replace=False)].T, "cosine")


@pytest.mark.parametrize(
    ("selected", "expected"),
    [
        ([], 0.0),
        ([0], 0.9 + 0.1 + 0.9),  # coverage (0.9, 0.1), relevance max(0.9, 0.1)
        ([1], 0.2 + 0.8 + 0.8),
        ([0, 1], 0.9 + 0.8 + 0.9 + 0.8),
        ([0, 2], 0.9 + 0.6 + 0.9 + 0.6),
        ([0, 1, 2], 0.9 + 0.8 + 0.9 + 0.8 + 0.6),
        ([2, 0, 2], 0.9 + 0.6 + 0.9 + 0.6),  # a set: duplicates count once
    ],
)
def test_flqmi_hand_computed(selected: list[int], expected: float) -> None:
    assert FLQMI(S_HAND).evaluate(selected) == pytest.approx(expected, rel=1e-6)


def test_eta_weights_the_relevance_term() -> None:
    assert FLQMI(S_HAND, eta=0.5).evaluate([0, 1]) == pytest.approx(0.9 + 0.8 + 0.5 * (0.9 + 0.8), rel=1e-6)


def test_marginal_gains_equal_evaluate_differences() -> None:
    S = _clustered_kernel(60, 9, seed=0)
    fn = FLQMI(S, chunk_elements=20)  # chunks of 2 candidates
    chosen = [3, 17]
    state = fn.initial_state()
    for j in chosen:
        state = fn.update_state(state, j)
    gains = fn.marginal_gains(state, torch.arange(60))
    direct = torch.tensor([fn.evaluate(chosen + [j]) - fn.evaluate(chosen) for j in range(60)], dtype=torch.float64)
    direct[chosen] = gains[chosen]  # re-adding a member is never asked of the optimisers
    torch.testing.assert_close(gains, direct, rtol=1e-5, atol=1e-5)


def test_negative_kernel_is_refused_and_mapped() -> None:
    cos = torch.tensor([[-1.0, 0.0], [1.0, 0.5]])
    with pytest.raises(ValueError, match="nonnegative_kernel"):
        FLQMI(cos)
    assert torch.equal(nonnegative_kernel(cos, "cosine"), torch.tensor([[0.0, 0.5], [1.0, 0.75]]))
    fisher = np.array([[-3.0, 1.0], [2.0, 0.0]])
    np.testing.assert_array_equal(nonnegative_kernel(fisher, "fisher"), [[0.0, 4.0], [5.0, 3.0]])
    with pytest.raises(ValueError, match="cosine"):
        nonnegative_kernel(cos, "euclidean")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(4))
def test_naive_greedy_within_bound_of_exhaustive_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 12
    S = torch.from_numpy(rng.random((n, 5)).astype(np.float32) ** 3)
    fn = FLQMI(S)
    for budget in (2, 3, 4):
        picked, gains = naive_greedy(fn, budget)
        value = fn.evaluate(picked)
        assert value >= (1 - 1 / math.e) * _exhaustive_best(fn, budget)
        assert gains.sum() == pytest.approx(value, rel=1e-5)
        assert np.all(np.diff(gains) <= 1e-6)  # submodular: greedy gains never increase


def test_naive_greedy_is_optimal_when_each_query_has_its_own_best_item() -> None:
    # Items 2, 5, 8 each match one query strongly; the rest are weak everywhere.
    S = torch.full((10, 3), 0.05)
    S[2, 0], S[5, 1], S[8, 2] = 1.0, 0.9, 0.8
    fn = FLQMI(S)
    picked, _ = naive_greedy(fn, 3)
    assert picked.tolist() == [2, 5, 8]
    assert fn.evaluate(picked) == pytest.approx(_exhaustive_best(fn, 3))


@pytest.mark.parametrize("seed", range(3))
def test_stochastic_greedy_matches_submodlib_objective(seed: int) -> None:
    S = _clustered_kernel(2000, 150, seed)
    fn = FLQMI(S)
    ours, ours_gains = stochastic_greedy(fn, 20, epsilon=0.01, rng=np.random.default_rng(seed))
    ref, ref_gains = submodlib_select(S.numpy(), 20, eta=1.0, epsilon=0.01, seed=seed)
    assert len(set(ours.tolist())) == 20 and len(set(ref.tolist())) == 20
    ours_value, ref_value = fn.evaluate(ours), fn.evaluate(ref)
    assert ours_value == pytest.approx(ref_value, rel=0.01)
    # Both optimisers report gains that add up to the objective FLQMI computes.
    assert ours_gains.sum() == pytest.approx(ours_value, rel=1e-5)
    assert ref_gains.sum() == pytest.approx(ref_value, rel=1e-5)
    assert ours_value >= 0.99 * fn.evaluate(naive_greedy(fn, 20)[0])


def test_stochastic_greedy_is_deterministic_under_a_seed() -> None:
    fn = FLQMI(_clustered_kernel(500, 40, seed=7), chunk_elements=1000)
    a = stochastic_greedy(fn, 10, rng=np.random.default_rng(3))
    b = stochastic_greedy(fn, 10, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_stochastic_greedy_degenerates_to_naive_when_sample_covers_pool() -> None:
    fn = FLQMI(_clustered_kernel(12, 6, seed=2))
    assert stochastic_sample_size(12, 4, 0.01) >= 12  # every step scores every remaining item
    np.testing.assert_array_equal(stochastic_greedy(fn, 4, rng=np.random.default_rng(0))[0], naive_greedy(fn, 4)[0])


def test_sample_size_follows_mirzasoleiman() -> None:
    assert stochastic_sample_size(104_133, 100, 0.01) == math.ceil(1041.33 * math.log(100))
    with pytest.raises(ValueError, match="epsilon"):
        stochastic_sample_size(10, 2, 0.0)


def test_submodlib_is_seeded_internally_and_seed_permutes() -> None:
    S = _clustered_kernel(400, 30, seed=4).numpy()
    # submodlib calls srand(1) itself: without a seed, repeated runs are identical.
    np.testing.assert_array_equal(submodlib_select(S, 8)[0], submodlib_select(S, 8)[0])
    np.testing.assert_array_equal(submodlib_select(S, 8, seed=1)[0], submodlib_select(S, 8, seed=1)[0])
    fn = FLQMI(torch.from_numpy(S))
    assert fn.evaluate(submodlib_select(S, 8, seed=2)[0]) == pytest.approx(
        fn.evaluate(submodlib_select(S, 8)[0]), rel=0.02
    )


def test_budget_at_least_pool_returns_everything() -> None:
    S = S_HAND.numpy()
    idx, gains = submodlib_select(S, 3)
    assert idx.tolist() == [0, 1, 2]
    assert gains.sum() == pytest.approx(FLQMI(S_HAND).evaluate([0, 1, 2]), rel=1e-6)
    picked, _ = stochastic_greedy(FLQMI(S_HAND), 5, rng=np.random.default_rng(0))
    assert sorted(picked.tolist()) == [0, 1, 2]


# ----------------------------------------------------------------------------- query multiset
def test_multiset_objective_and_gains_equal_the_kernel_with_repeated_columns() -> None:
    rng = np.random.default_rng(3)
    S = torch.from_numpy(rng.random((7, 4)).astype(np.float32))
    counts = np.array([3, 1, 2, 1])
    weighted = FLQMI(S, eta=0.7, query_weights=counts)
    repeated = FLQMI(S[:, np.repeat(np.arange(4), counts)], eta=0.7)
    for subset in ([0], [1, 4], [2, 5, 6], []):
        assert weighted.evaluate(subset) == pytest.approx(repeated.evaluate(subset), rel=1e-6)
    state_w, state_r = weighted.initial_state(), repeated.initial_state()
    for j in (3, 0):
        cand = torch.arange(7)
        torch.testing.assert_close(
            weighted.marginal_gains(state_w, cand), repeated.marginal_gains(state_r, cand), rtol=1e-6, atol=1e-6
        )
        state_w, state_r = weighted.update_state(state_w, j), repeated.update_state(state_r, j)


# column A drawn 5 times, column B once; item 0 covers A, item 1 covers B a bit better than 0 covers A
MULTI_S = torch.tensor([[1.0, 0.0], [0.0, 1.5], [0.1, 0.1]])
MULTI_COUNTS = np.array([5, 1])


def test_multiplicity_changes_the_selection() -> None:
    """eta = 0, B = 1: distinct columns make item 1 best (1.5 > 1); with multiplicities item 0
    covers five draws (5 > 1.5)."""
    assert naive_greedy(FLQMI(MULTI_S, eta=0.0), 1)[0].tolist() == [1]
    picked, gains = naive_greedy(FLQMI(MULTI_S, eta=0.0, query_weights=MULTI_COUNTS), 1)
    assert picked.tolist() == [0] and gains.tolist() == pytest.approx([5.0])


def test_submodlib_repeats_columns_and_agrees_on_a_unique_optimum() -> None:
    S = MULTI_S.numpy()
    p_w, g_w = submodlib_select(S, 1, eta=0.0, query_weights=MULTI_COUNTS)
    p_a, g_a = stochastic_greedy(
        FLQMI(MULTI_S, eta=0.0, query_weights=MULTI_COUNTS), 1, 0.01, rng=np.random.default_rng(0)
    )
    assert p_w.tolist() == p_a.tolist() == [0] and g_w == pytest.approx(g_a)
    assert submodlib_select(S, 1, eta=0.0)[0].tolist() == [1]
    with pytest.raises(ValueError, match="multiplicity"):
        submodlib_select(S, 1, query_weights=np.array([1.5, 1]))

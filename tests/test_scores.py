"""Known answers for the MC dropout scores (paper §3.3.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alseg.scoring.scores import MCDropoutAccumulator, entropy_map, item_entropy


def _random_passes(t: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.softmax(3.0 * torch.randn(shape, generator=gen), dim=1) for _ in range(t)]


def _accumulate(passes: list[torch.Tensor]) -> MCDropoutAccumulator:
    acc = MCDropoutAccumulator()
    for p in passes:
        acc.update(p)
    return acc


@pytest.mark.parametrize("spatial", [(5, 4), (3, 4, 2)])
def test_entropy_of_uniform_is_log_k(spatial: tuple[int, ...]) -> None:
    k = 4
    p = torch.full((2, k, *spatial), 1.0 / k)
    assert entropy_map(p).shape == (2, *spatial)
    torch.testing.assert_close(item_entropy(p), torch.full((2,), math.log(k)))


def test_entropy_of_one_hot_is_zero_not_nan() -> None:
    p = torch.zeros(1, 3, 4, 4)
    p[:, 1] = 1.0
    assert torch.equal(entropy_map(p), torch.zeros(1, 4, 4))


def test_item_entropy_is_pixel_mean() -> None:
    # One certain pixel (H = 0) and one uniform binary pixel (H = log 2): mean log(2) / 2.
    p = torch.tensor([[[[1.0, 0.5]], [[0.0, 0.5]]]])
    torch.testing.assert_close(item_entropy(p), torch.tensor([math.log(2) / 2]))


def test_identical_passes_have_no_epistemic_uncertainty() -> None:
    p = _random_passes(1, (3, 4, 6, 5))[0]
    scores = _accumulate([p.clone() for _ in range(10)]).finalize()
    # Exact zeros up to float64 rounding of the running sums (p̄ = sum / T is not bit-exact).
    zeros = torch.zeros(3)
    torch.testing.assert_close(scores.mean_std, zeros, atol=1e-7, rtol=0)
    torch.testing.assert_close(scores.bald, zeros, atol=1e-7, rtol=0)
    torch.testing.assert_close(scores.classwise_std_sum, torch.zeros(3, 4), atol=1e-5, rtol=0)
    assert torch.all(scores.bald >= 0) and torch.all(scores.mean_std >= 0)
    torch.testing.assert_close(scores.entropy_of_mean, item_entropy(p))


@pytest.mark.parametrize("spatial", [(7, 6), (4, 3, 5)])
def test_scores_match_numpy_on_random_passes(spatial: tuple[int, ...]) -> None:
    passes = _random_passes(10, (3, 4, *spatial), seed=1)
    scores = _accumulate(passes).finalize()

    stack = np.stack([p.numpy().astype(np.float64) for p in passes])  # (T, N, C, *spatial)

    def entropy(q: np.ndarray, axis: int) -> np.ndarray:
        return -(q * np.log(q)).sum(axis=axis)

    def per_item(a: np.ndarray, reduce=np.mean) -> np.ndarray:
        return reduce(a.reshape(a.shape[0], -1), axis=1)

    std = stack.std(axis=0)  # population std, ddof=0; (N, C, *spatial)
    mean = stack.mean(axis=0)
    bald = entropy(mean, 1) - entropy(stack, 2).mean(axis=0)
    np.testing.assert_allclose(scores.mean_std.numpy(), per_item(std.mean(axis=1)), rtol=1e-5)
    np.testing.assert_allclose(scores.bald.numpy(), per_item(bald), rtol=1e-5)
    np.testing.assert_allclose(scores.entropy_of_mean.numpy(), per_item(entropy(mean, 1)), rtol=1e-5)
    classwise = np.stack([per_item(std[:, c], np.sum) for c in range(std.shape[1])], axis=1)
    np.testing.assert_allclose(scores.classwise_std_sum.numpy(), classwise, rtol=1e-5)
    assert scores.classwise_std_sum.shape == (3, 4)
    assert scores.mean_std.dtype == torch.float32


def test_bald_is_positive_when_passes_disagree() -> None:
    # Two confident passes that disagree: p̄ is uniform, each pass has zero entropy.
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    scores = _accumulate([a, a.flip(1)]).finalize()
    torch.testing.assert_close(scores.bald, torch.tensor([math.log(2)]))
    torch.testing.assert_close(scores.mean_std, torch.tensor([0.5]))


def test_nearly_agreeing_passes_keep_small_std() -> None:
    # A std of 1e-4 on p ≈ 0.9 is a variance of 1e-8: lost to cancellation in float32 sums.
    base = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1)
    delta = torch.tensor([1e-4, -1e-4]).view(1, 2, 1, 1)
    scores = _accumulate([base + delta, base - delta]).finalize()
    torch.testing.assert_close(scores.mean_std, torch.tensor([1e-4]), rtol=1e-3, atol=0)


def test_mismatched_pass_and_empty_finalize_raise() -> None:
    acc = MCDropoutAccumulator()
    with pytest.raises(ValueError, match="before any update"):
        acc.finalize()
    acc.update(torch.full((1, 2, 3, 3), 0.5))
    with pytest.raises(ValueError, match="same batch"):
        acc.update(torch.full((2, 2, 3, 3), 0.5))

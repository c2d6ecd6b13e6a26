"""Known answers for k-center greedy (Core-Set baseline, paper Appendix C)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alseg.strategies.kcenter import k_center_greedy


def _points() -> np.ndarray:
    # A labelled point at the origin, a tight cluster near it, and three far points at
    # distances 10, 7 and 5 in different directions.
    return np.array(
        [
            [0.0, 0.0],  # 0 labelled
            [0.1, 0.0],  # 1
            [0.0, 0.1],  # 2
            [10.0, 0.0],  # 3 farthest
            [0.0, 7.0],  # 4
            [-5.0, 0.0],  # 5
            [9.5, 0.0],  # 6 close to 3: redundant once 3 is a centre
        ]
    )


def test_picks_farthest_points_in_order() -> None:
    labelled = np.zeros(7, dtype=bool)
    labelled[0] = True
    assert k_center_greedy(_points(), labelled, 3).tolist() == [3, 4, 5]


def test_torch_and_numpy_agree_and_chunking_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    labelled = rng.random(300) < 0.1
    ref = k_center_greedy(x, labelled, 20)
    assert (
        k_center_greedy(torch.from_numpy(x).float(), torch.from_numpy(labelled), 20, chunk_rows=7).tolist()
        == ref.tolist()
    )


def test_result_is_the_greedy_max_min_distance() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5))
    labelled = np.zeros(200, dtype=bool)
    labelled[:10] = True
    picked = k_center_greedy(x, labelled, 15)
    centres = list(np.flatnonzero(labelled))
    for j in picked:
        d = np.linalg.norm(x[:, None] - x[centres][None], axis=2).min(axis=1)
        d[centres] = -np.inf
        assert j == int(np.argmax(d))
        centres.append(j)


def test_no_labelled_items_starts_from_seeded_random_item() -> None:
    x = _points()
    none = np.zeros(7, dtype=bool)
    a = k_center_greedy(x, none, 4, rng=np.random.default_rng(5))
    b = k_center_greedy(x, none, 4, rng=np.random.default_rng(5))
    assert a.tolist() == b.tolist()
    assert a[0] == np.random.default_rng(5).integers(7)
    assert len(set(a.tolist())) == 4
    with pytest.raises(ValueError, match="rng"):
        k_center_greedy(x, none, 2)


def test_never_picks_labelled_or_twice_even_with_duplicates() -> None:
    x = np.zeros((5, 3))  # every distance is 0
    labelled = np.array([True, False, False, True, False])
    picked = k_center_greedy(x, labelled, 10)
    assert sorted(picked.tolist()) == [1, 2, 4]

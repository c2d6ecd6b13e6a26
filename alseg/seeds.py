"""Seeds derived from the user's seed: any seed from 0 to 2**63 - 1 works for every command.

numpy's legacy seeding (``np.random.seed``, ``RandomState``) and Lightning's ``seed_everything``
take only 32-bit seeds, so a user's seed and the per-round seeds derived from it are mapped into
``0 .. 2**32 - 1`` here. The mapping keeps the numbers alseg always used wherever they fit, so
runs with the seeds that worked before (``0``, ``1``, ``2``, ..., up to 4,294,967 for a loop) are
bit-for-bit what they were: a round's seed is ``seed * 1000 + round`` while that fits 32 bits, and
otherwise a 32-bit word of numpy's ``SeedSequence([seed, round])`` (docs/design.md, "Seeds").
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_SEED", "SEED_RANGE", "derived_seed", "global_seed", "seed_for_round"]

MAX_SEED = 2**63 - 1
"""The largest seed a user may give (a signed 64-bit integer, as JSON readers and torch take it)."""

SEED_RANGE = f"0..{MAX_SEED}"
_FITS = 2**32  # numpy's legacy seeds and Lightning's seed_everything take 0 .. 2**32 - 1


def derived_seed(*keys: int) -> int:
    """A 32-bit seed from any non-negative integers (numpy's ``SeedSequence``: well mixed, no overflow)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint32)[0])


def global_seed(seed: int) -> int:
    """``seed`` itself when it fits 32 bits (as before), else a 32-bit seed derived from it."""
    seed = int(seed)
    return seed if 0 <= seed < _FITS else derived_seed(seed)


def seed_for_round(seed: int, round_: int) -> int:
    """The seed of round ``round_`` of a loop seeded ``seed`` (training, the batch uncertainty's
    masks): ``seed * 1000 + round_`` while that fits 32 bits, as alseg always derived it, else a
    32-bit seed from ``SeedSequence([seed, round_])``."""
    legacy = int(seed) * 1000 + int(round_)
    return legacy if legacy < _FITS else derived_seed(seed, round_)

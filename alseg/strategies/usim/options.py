"""USIM's typed options (``--option key=value``), validated before a run starts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from alseg.strategies.base import StrategyOptions

__all__ = ["FISHER_KERNELS", "USIMOptions", "USIMFOptions"]

FISHER_KERNELS = ("raw", "cosine")
"""USIMF's kernels (``fisher_kernel``): the paper's ``g_u^T F^-1 g_q / k``, and the same normalised by both F^-1-norms."""


class USIMOptions(StrategyOptions):
    """USIMC's and USIMF's settings (paper §3.3, Appendix A; see :mod:`alseg.strategies.usim`)."""

    query_size: int | None = Field(None, ge=1, description="'auto' (the elbow rule) or a positive integer")
    embedding_dim: int = Field(10_000, ge=1, description="a positive integer (default 10000)")
    max_candidates: int | None = Field(None, ge=1, description="'none' or a positive integer")
    eta: float = Field(1.0, ge=0.0, description="a non-negative number (default 1)")
    epsilon: float = Field(0.01, gt=0.0, lt=1.0, description="a number in (0, 1) (default 0.01)")
    optimizer: Literal["alseg", "submodlib"] = Field("alseg", description="'alseg' or 'submodlib'")
    fisher_subset: int = Field(200, ge=1, description="a positive integer (default 200)")
    embedding_dtype: Literal["auto", "float32", "float16"] = Field("auto", description="'auto', 'float32' or 'float16'")
    grad_batch_size: int | None = Field(None, ge=1, description="a positive integer (items per gradient call)")
    fisher_kernel: Literal["raw", "cosine"] = Field(
        "raw", description="'raw' (the paper's g_u^T F^-1 g_q / k) or 'cosine' (normalised by both F^-1-norms)"
    )
    query_multiset: bool = Field(
        True,
        description="true (an item drawn k times weighs k in FLQMI's coverage term) or false (distinct items only)",
    )
    figure: bool = Field(True, description="true (keep embeddings for the t-SNE map) or false")

    @field_validator("query_size", "max_candidates", mode="before")
    @classmethod
    def _none_words(cls, v: object, info: ValidationInfo) -> object:
        """``auto`` / ``none`` from the command line mean "no fixed value" (``max_candidates``: ``0``
        too); ``query_size=0`` is refused as -5 is (``auto`` asks for the elbow rule)."""
        words = ("auto", "none", "") + (("0",) if info.field_name == "max_candidates" else ())
        if v is None or (isinstance(v, str) and v.strip().lower() in words):
            return None
        if info.field_name == "max_candidates" and v == 0:
            return None
        return v

    @field_validator("optimizer", "fisher_kernel", "embedding_dtype", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v


class USIMFOptions(USIMOptions):
    """USIMF's settings: as USIM's, but FLQMI's relevance term off by default (η = 0).

    With the paper's raw Fisher kernel the relevance term ``η Σ_{j∈B} max_q S_jq`` grows with an
    item's gradient norm, so with η = 1 the batch follows gradient size, duplicates included. On
    12 duplicated Task04 cases (100 copies, Q = 1000, B = 100; ``alseg redundancy-check --cases``)
    η = 1 kept less of the duplicated case than the query set without repeating content in only
    4 of 12 cases (batch share up to 84%, up to 82 repeated items); η = 0 did in 12 of 12 (median
    5%, no repeats). See docs/design.md. ``--option eta=1`` restores the paper's setting.
    """

    eta: float = Field(0.0, ge=0.0, description="a non-negative number (default 0 for usimf; the paper's is 1)")

"""USIMC and USIMF (paper §3.3, Algorithm 1, Appendix A), split by step: options, gradient
embeddings, kernels, the pipeline and the t-SNE sample."""

from alseg.strategies.usim.embeddings import (
    IGNORE_INDEX,
    GradientEmbedding,
    fisher_information,
    gradient_embeddings,
    pseudo_label_targets,
)
from alseg.strategies.usim.kernels import Kernel, cosine_kernel, fisher_kernel
from alseg.strategies.usim.options import FISHER_KERNELS, USIMFOptions, USIMOptions
from alseg.strategies.usim.pipeline import (
    USIM,
    USIMC,
    USIMF,
    Candidates,
    QuerySet,
    USIMArtefacts,
    USIMResult,
    maximise_flqmi,
    plan_query_set,
)

__all__ = [
    "FISHER_KERNELS",
    "IGNORE_INDEX",
    "USIM",
    "USIMC",
    "USIMF",
    "Candidates",
    "GradientEmbedding",
    "Kernel",
    "QuerySet",
    "USIMArtefacts",
    "USIMOptions",
    "USIMFOptions",
    "USIMResult",
    "cosine_kernel",
    "fisher_information",
    "fisher_kernel",
    "gradient_embeddings",
    "maximise_flqmi",
    "plan_query_set",
    "pseudo_label_targets",
]

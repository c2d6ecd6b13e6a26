"""What every oracle is: the :class:`Oracle` protocol, what it is built from (:class:`OracleContext`)
and what it answers (:class:`Annotation`).

An oracle says two things about itself that the loop acts on, instead of asking for its name:
``reveals_ground_truth`` (the simulation: the pool must be labelled, strategies that read the
ground truth may run, the agreement with the truth is recorded) and ``waits_for_person`` (it
writes a package, and the loop stops with exit code 3 until the masks are there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

import numpy as np

from alseg.active.rundir import RunDir
from alseg.data.pool import Pool

if TYPE_CHECKING:  # typing only: the workspace opens plan and cache, an oracle only reads them
    from alseg.active.workspace import Workspace

__all__ = ["Annotation", "ModelSource", "Oracle", "OracleContext"]

ModelSource = Callable[[], Any] | None
"""The model that selected a round's batch, loaded only when asked (None in round 0)."""


@dataclass
class Annotation:
    """The outcome of asking an oracle: accepted masks, and what is still missing or wrong."""

    masks: dict[int, np.ndarray]
    problems: list[str]
    waiting: list[int]


@dataclass
class OracleContext:
    """What an oracle may use: the run directory, the pool, the opened plan and cache (which
    names the dataset the plan was made from), and the configuration's name."""

    run: RunDir
    pool: Pool
    workspace: "Workspace"
    config_name: str


class Oracle(Protocol):
    """Who provides the masks of selected items. One module per oracle, one line in
    :mod:`alseg.active.oracles.registry`; docs/extending.md walks through adding one."""

    name: ClassVar[str]
    reveals_ground_truth: ClassVar[bool]
    """True for the simulation: it reads the ground truth, so the pool must be labelled."""
    waits_for_person: ClassVar[bool]
    """True when a person answers through files: :meth:`annotate` may come back incomplete."""

    @classmethod
    def build(cls, ctx: OracleContext) -> "Oracle":
        """The oracle of one run."""
        ...

    def annotate(self, round_: int, indices: np.ndarray, model: ModelSource = None) -> Annotation:
        """Masks for the items ``indices`` of the pool (those it has), and what is missing or wrong."""
        ...

    def folder(self, round_: int) -> Path | None:
        """Where a person finds round ``round_``'s package (None: nobody is asked)."""
        ...

    def guide(self, round_: int) -> Path | None:
        """The file that tells the person what to do (None: nobody is asked)."""
        ...

    def waiting_cases(self) -> list[str]:
        """Cases of the last :meth:`annotate` whose label file is not there yet."""
        ...

"""Oracles by name: the one list ``--oracle`` accepts. A new oracle is a module and a line here.

Each entry names the class by its import path, as packaging entry points do, so that the
command line lists and checks the names without importing an oracle (and what it needs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from alseg.errors import AlsegError

__all__ = ["ORACLES", "OracleEntry", "oracle_class", "oracles_help"]


@dataclass(frozen=True)
class OracleEntry:
    target: str | type
    """``module:Class`` of the oracle (or the class itself, for one registered at run time)."""
    summary: str
    """One line for ``--oracle``'s help."""


ORACLES: dict[str, OracleEntry] = {
    "simulated": OracleEntry("alseg.active.oracles.simulated:SimulatedOracle", "the ground truth"),
    "files": OracleEntry(
        "alseg.active.oracles.files:FilesOracle",
        "a person annotates a package per case: image, pre-segmentation, region",
    ),
    "patches": OracleEntry("alseg.active.oracles.patches:PatchOracle", "a person annotates one NIfTI patch per item"),
}


def unknown_oracle(name: str) -> str:
    """The message for a name that is not registered."""
    return f"unknown oracle '{name}' — choose one of {', '.join(ORACLES)}"


def oracle_class(name: str) -> Any:
    """The oracle class registered as ``name`` (an :class:`~alseg.active.oracles.base.Oracle`); an
    unknown name is one line listing the known ones."""
    if name not in ORACLES:
        raise AlsegError(f"--oracle: {unknown_oracle(name)}")
    target = ORACLES[name].target
    if not isinstance(target, str):
        return target
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def oracles_help() -> str:
    """``--oracle``'s help: each name with its summary."""
    return "; ".join(f"{name} ({entry.summary})" for name, entry in ORACLES.items()) + "."

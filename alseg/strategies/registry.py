"""Strategies registered by name, so the CLI and experiments refer to them as strings."""

from __future__ import annotations

from typing import Callable

from alseg.errors import AlsegError

_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    # importing the modules runs their @register decorators
    import alseg.strategies.random  # noqa: F401

    for optional in ("alseg.strategies.uncertainty", "alseg.strategies.diversity", "alseg.strategies.usim"):
        try:
            __import__(optional)
        except ModuleNotFoundError as e:
            if e.name != optional:
                raise


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_strategy(name: str):
    """An instance of the named strategy; an unknown name lists the valid ones."""
    _load_all()
    if name not in _REGISTRY:
        raise AlsegError(f"unknown strategy '{name}' — choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()

"""Selection strategies: one module per family, a registry by name, typed options.

Names are loaded lazily (PEP 562): a module that needs one strategy's class (a test, ``alseg
strategies``) does not import every strategy family and the optimisers behind them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FeatureNetwork",
    "Selection",
    "SelectionContext",
    "Strategy",
    "StrategyOptions",
    "available",
    "describe",
    "get_strategy",
    "option_keys",
    "options_for",
    "parse_strategy_options",
    "select_batch",
    "typed_options",
]

_WHERE = {
    "FeatureNetwork": "base",
    "Selection": "base",
    "SelectionContext": "base",
    "Strategy": "base",
    "StrategyOptions": "base",
    "available": "registry",
    "describe": "registry",
    "get_strategy": "registry",
    "option_keys": "registry",
    "options_for": "registry",
    "parse_strategy_options": "registry",
    "select_batch": "batch",
    "typed_options": "registry",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'alseg.strategies' has no attribute {name!r}")
    return getattr(importlib.import_module(f"alseg.strategies.{_WHERE[name]}"), name)

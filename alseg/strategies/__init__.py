"""Selection strategies: pool scoring, one module per family, and a registry by name."""

from alseg.strategies.base import Selection, SelectionContext, Strategy
from alseg.strategies.registry import available, get_strategy, register

__all__ = ["Selection", "SelectionContext", "Strategy", "available", "get_strategy", "register"]

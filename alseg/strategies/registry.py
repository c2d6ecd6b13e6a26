"""Strategies by name, and their options validated before any work starts.

The registry imports the strategy modules; no strategy module imports the registry, so there
is no import cycle and the list of strategies is written once, here.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import ValidationError

from alseg.errors import AlsegError
from alseg.strategies.base import Strategy, StrategyOptions
from alseg.strategies.class_balanced import ClaspPEStrategy, ClassBalancedPEStrategy
from alseg.strategies.diversity import BadgeStrategy, CoreSetStrategy
from alseg.strategies.random import ForegroundRandom33Strategy, ForegroundRandomStrategy, RandomStrategy
from alseg.strategies.stochastic import PowerBALDStrategy, PowerPEStrategy, SoftrankBALDStrategy
from alseg.strategies.uncertainty import BALDStrategy, MaxEntropyStrategy, MeanSTDStrategy, StochasticBatchesStrategy
from alseg.strategies.usim import USIMC, USIMF

__all__ = [
    "STRATEGIES",
    "available",
    "describe",
    "get_strategy",
    "option_keys",
    "options_for",
    "parse_strategy_options",
    "typed_options",
]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        RandomStrategy,
        ForegroundRandomStrategy,
        MaxEntropyStrategy,
        MeanSTDStrategy,
        BALDStrategy,
        StochasticBatchesStrategy,
        CoreSetStrategy,
        BadgeStrategy,
        USIMC,
        USIMF,
        ForegroundRandom33Strategy,
        PowerBALDStrategy,
        PowerPEStrategy,
        SoftrankBALDStrategy,
        ClassBalancedPEStrategy,
        ClaspPEStrategy,
    )
}


def available() -> list[str]:
    """The strategy names, sorted."""
    return sorted(STRATEGIES)


def _strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise AlsegError(f"unknown strategy '{name}' — choose one of: {', '.join(available())}")
    return STRATEGIES[name]


def option_keys(name: str) -> list[str]:
    """The option keys strategy ``name`` accepts, sorted."""
    return sorted(_strategy_class(name).Options.model_fields)


def describe(name: str) -> str:
    """Two lines for ``alseg strategies``: the name, whether it needs the ground truth, where it
    comes from; then its options with their defaults (its own first, then those every strategy has)."""
    cls = _strategy_class(name)
    common = set(StrategyOptions.model_fields)
    own = [k for k in cls.Options.model_fields if k not in common]
    defaults = {k: cls.Options.model_fields[k].default for k in [*own, *sorted(common)]}
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in defaults.items()]
    sim = " [simulation only]" if cls.simulation_only else ""
    return f"{name}{sim} — {cls.source or 'alseg'}\n    options: {', '.join(shown)}"


def parse_strategy_options(name: str, raw: Mapping[str, Any] | None) -> StrategyOptions:
    """Validate ``raw`` (``--option key=value`` strings, or values already typed, e.g. from a
    run's config.json) into strategy ``name``'s typed options.

    Call it before any work starts: an unknown strategy, an unknown key (listing the valid
    ones) or a bad value (naming the key and what it expects) is an :class:`AlsegError` of one
    line."""
    cls = _strategy_class(name)
    model = cls.Options
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(model.model_fields))
    if unknown:
        raise AlsegError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for strategy '{name}' — "
            f"valid keys: {', '.join(option_keys(name))}"
        )
    try:
        return model(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "?"
        field = model.model_fields.get(key)
        expected = field.description if field is not None and field.description else first["msg"]
        raise AlsegError(f"invalid option {key}={raw.get(key)!r} for strategy '{name}' — expected {expected}") from None


def get_strategy(name: str, options: StrategyOptions | Mapping[str, Any] | None = None, **kwargs: Any) -> Strategy:
    """A configured instance of strategy ``name``: ``get_strategy("usimf", query_size=1000)``,
    or with options already parsed by :func:`parse_strategy_options`."""
    cls = _strategy_class(name)
    if isinstance(options, StrategyOptions):
        if kwargs:
            raise TypeError("pass either an options model or keyword options, not both")
        return cls(options)
    return cls(parse_strategy_options(name, {**dict(options or {}), **kwargs}))


def options_for(names: list[str] | tuple[str, ...], raw: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """One ``--option`` set shared by several strategies (``alseg compare``) split per strategy:
    each gets the keys it accepts, validated and typed (JSON values: ``"500"`` becomes ``500``).
    A key no strategy of ``names`` accepts is an :class:`AlsegError` (a misspelling), raised
    before any run starts."""
    raw = dict(raw or {})
    if len(names) == 1:  # one strategy: its own message (the key, the strategy, its valid keys)
        return {names[0]: parse_strategy_options(names[0], raw).model_dump(mode="json", include=set(raw))}
    accepted = {n: set(option_keys(n)) for n in names}
    stray = sorted(k for k in raw if not any(k in keys for keys in accepted.values()))
    if stray:
        valid = sorted(set().union(*accepted.values())) if accepted else []
        raise AlsegError(
            f"unknown option{'s' if len(stray) > 1 else ''} {', '.join(stray)} for strategies "
            f"{', '.join(names)} — valid keys: {', '.join(valid)}"
        )
    out = {}
    for n in names:
        mine = {k: v for k, v in raw.items() if k in accepted[n]}
        out[n] = parse_strategy_options(n, mine).model_dump(mode="json", include=set(mine))
    return out


def typed_options(names: list[str] | tuple[str, ...], raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """``raw`` typed once for the strategies ``names`` (one strategy for a run, all of a grid's):
    each key takes the type of the first strategy that accepts it (:func:`options_for`)."""
    out: dict[str, Any] = {}
    for mine in options_for(names, raw).values():
        for k, v in mine.items():
            out.setdefault(k, v)
    return {k: out[k] for k in dict(raw or {})}

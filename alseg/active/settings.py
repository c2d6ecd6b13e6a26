"""One settings model for an active-learning run, from the command line to ``config.json``.

``LoopSettings`` is what a user chooses (strategy, budget, rounds, training budget per round,
...). The CLI builds its ``alseg loop`` options from these fields (help texts included), the run
directory stores them in ``config.json`` and ``alseg compare`` hands them to its workers as a
settings file, so an option exists once. Values are checked here, before any work starts.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from alseg.active.oracles.registry import ORACLES, oracles_help, unknown_oracle
from alseg.errors import AlsegError
from alseg.seeds import MAX_SEED

if TYPE_CHECKING:
    from alseg.strategies import StrategyOptions

__all__ = ["ConfigName", "LoopSettings", "RESUME_MAY_CHANGE", "settings_error", "load_settings_file"]


class ConfigName(str, Enum):
    """The name of the plan configuration a run trains (nnU-Net's names); the configuration itself
    is :class:`alseg.plans.models.Configuration`."""

    two_d = "2d"
    three_d_fullres = "3d_fullres"


class LoopSettings(BaseModel):
    """Everything ``alseg loop`` accepts besides the target and the run directory."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True, validate_assignment=True)

    strategy: str = Field("random", description="Selection strategy (see 'alseg strategies').")
    strategy_options: dict[str, Any] = Field(
        default_factory=dict, description="Strategy option key=value (repeatable), e.g. query_size=500."
    )
    rounds: int = Field(
        3, ge=0, description="Selection rounds after the initial round 0 (0: train on the initial set only)."
    )
    budget: int = Field(100, ge=1, description="Items selected per round.")
    initial: int = Field(100, ge=1, description="Random items labelled in round 0.")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of every random choice (the same seed gives the same run)."
    )
    config: ConfigName = Field(ConfigName.two_d, description="Plan configuration: 2d or 3d_fullres.")
    item_size: list[int] | None = Field(
        None,
        description="Size of an annotation item Z,Y,X (3d_fullres) or Y,X (2d: a window of one slice), at most the "
        "plan's patch size; smaller items are trained with the image around them and unlabelled voxels ignored "
        "(default: the patch size).",
    )
    fold: int = Field(0, ge=0, le=4, description="Fold of nnU-Net's 5-fold split held out as the test set.")
    test_cases: list[str] | None = Field(
        None,
        description="Test cases ID,ID,... (each needs a label); the pool is every other training case. "
        "Default: the --fold split when every case is labelled, else the labelled cases.",
    )
    epochs: int = Field(1, ge=1, description="Epochs per round.")
    initial_epochs: int | None = Field(
        None, ge=1, description="Epochs of round 0, trained from scratch on the initial set (default: --epochs)."
    )
    iters_per_epoch: int = Field(50, ge=1, description="Training iterations per epoch.")
    batch_size: int | None = Field(None, ge=1, description="Override the plan's batch size.")
    mc_passes: int = Field(10, ge=1, description="Monte-Carlo dropout passes for uncertainty.")
    candidates: int | None = Field(
        None,
        ge=1,
        description="Unlabelled items drawn uniformly each round for the strategy to choose from (every strategy "
        "alike; default: the whole pool).",
    )
    oracle: str = Field("simulated", description="Who annotates: " + oracles_help())
    devices: str = Field("auto", description="Lightning devices: a number or 'auto'.")
    fine_tune: bool = Field(True, description="Later rounds start from the previous round's weights.")

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: str) -> str:
        v = str(v)
        if v != "auto" and not (v.isdigit() and int(v) >= 1):
            raise ValueError(f"must be a positive number or 'auto', got '{v}'")
        return v

    @field_validator("oracle")
    @classmethod
    def _oracle(cls, v: str) -> str:
        if v not in ORACLES:
            raise ValueError(unknown_oracle(v))
        return v

    @field_validator("item_size", mode="before")
    @classmethod
    def _item_size_text(cls, v: Any) -> Any:
        if isinstance(v, str):  # the command line's Z,Y,X
            try:
                v = [int(p) for p in v.split(",")]
            except ValueError:
                raise ValueError(
                    "expects sizes separated by commas, e.g. 20,20,20 (3d_fullres) or 20,20 (2d)"
                ) from None
        return v

    @field_validator("item_size")
    @classmethod
    def _item_size(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if v is None:
            return v
        if any(s <= 0 for s in v):
            raise ValueError("every size must be at least 1")
        config = info.data.get("config")
        if config is None:  # the configuration itself was invalid: its own error is reported
            return v
        config = ConfigName(config).value
        dims = 2 if config == "2d" else 3
        if len(v) != dims:
            shape = "Y,X (a window of one slice)" if dims == 2 else "Z,Y,X"
            raise ValueError(f"{config} items have {dims} sizes, {shape}; got {len(v)}")
        return v

    @field_validator("test_cases", mode="before")
    @classmethod
    def _test_cases(cls, v: Any) -> Any:
        if isinstance(v, str):  # the command line's ID,ID,...
            v = [c.strip() for c in v.split(",")]
        if isinstance(v, list):
            if not v or any(not isinstance(c, str) or not c for c in v):
                raise ValueError("expects case ids separated by commas, e.g. hippocampus_001,hippocampus_002")
            dup = sorted({c for c in v if v.count(c) > 1})
            if dup:
                raise ValueError(f"names case '{dup[0]}' twice")
        return v

    @field_validator("strategy_options")
    @classmethod
    def _typed_options(cls, raw: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The one place ``--option`` values are parsed: strings (or a stored run's values) become
        the strategy's typed values; an unknown key or a bad value fails here. A grid passes its
        strategies as validation context (:meth:`checked`): each key must suit one of them."""
        from alseg.strategies import typed_options  # lazy: the strategies load torch; 'alseg --help' stays fast

        names = (info.context or {}).get("strategies") or ([info.data["strategy"]] if "strategy" in info.data else [])
        if not names:
            return raw  # the strategy itself was refused: that is the error to show
        try:
            return typed_options(names, raw)
        except AlsegError as err:
            raise ValueError(str(err)) from None

    def strategy_settings(self) -> StrategyOptions:
        """The strategy's typed options (its defaults where none was given)."""
        from alseg.strategies import parse_strategy_options  # lazy, as in _typed_options

        return parse_strategy_options(self.strategy, self.strategy_options)

    @property
    def round0_epochs(self) -> int:
        """Epochs of round 0: ``initial_epochs``, else ``epochs``."""
        return self.initial_epochs or self.epochs

    @property
    def total_epochs(self) -> int:
        """Epochs of a whole loop, round 0 included (the full-data reference trains as long)."""
        return self.round0_epochs + self.epochs * self.rounds

    @classmethod
    def checked(cls, strategies: list[str] | None = None, **values: Any) -> "LoopSettings":
        """Validate user values; the first problem is one line naming the option (``--budget``).
        ``strategies``: a grid's, whose ``--option`` keys the settings share (``alseg compare``)."""
        try:
            return cls.model_validate(values, context={"strategies": strategies} if strategies else None)
        except ValidationError as err:
            raise settings_error(err) from None

    def differences(self, other: "LoopSettings", names: set[str] | None = None) -> list[str]:
        """``--name stored → given`` for each option (of ``names``; default all) that differs and
        may not change on resume."""
        out = []
        for name in type(self).model_fields:
            if name in RESUME_MAY_CHANGE or (names is not None and name not in names):
                continue
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                flag = "--option" if name == "strategy_options" else "--" + name.replace("_", "-")
                out.append(f"{flag} {_show(a)} → {_show(b)}")
        return out


RESUME_MAY_CHANGE = frozenset({"rounds", "devices"})
"""What ``--resume`` may change: more rounds extend a run; devices do not change its result."""


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v))
    return json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)


def settings_error(err: ValidationError, source: Path | None = None) -> AlsegError:
    """The first pydantic error as one user line naming the option."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    name = "--" + loc[0].replace("_", "-") if loc else "settings"
    if loc and loc[0] == "strategy_options":
        name = "--option " + ".".join(loc[1:]) if len(loc) > 1 else "--option"
    msg = first["msg"].removeprefix("Value error, ")
    if loc == ["strategy_options"] and first["type"] == "value_error":
        return AlsegError(msg, source)  # the registry's line names the option and the strategy already
    if first["type"] == "extra_forbidden":
        msg = f"is not a loop setting — valid ones: {', '.join(LoopSettings.model_fields)}"
    value = first.get("input")
    shown = f" (got {value!r})" if first["type"] != "extra_forbidden" and not isinstance(value, dict) else ""
    return AlsegError(f"{name}: {msg}{shown}", source)


def load_settings_file(path: Path, strategies: list[str] | None = None) -> LoopSettings:
    """A settings JSON file (as ``alseg compare`` writes for its workers, or a grid's protocol:
    then ``strategies`` are the grid's, whose options it may hold)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise AlsegError(f"cannot read ({e.strerror}) — pass an existing settings file", path) from None
    except json.JSONDecodeError as e:
        raise AlsegError(f"is not valid JSON (line {e.lineno}: {e.msg}) — fix it or write it anew", path) from None
    try:
        return LoopSettings.model_validate(data, context={"strategies": strategies} if strategies else None)
    except ValidationError as err:
        raise settings_error(err, path) from None

"""Checks of a run's settings against its strategy, pool and devices, made before any work starts
(``alseg loop`` and ``alseg compare`` alike): one line naming the option and the fix."""

from __future__ import annotations

from alseg.active.settings import LoopSettings
from alseg.errors import AlsegError
from alseg.strategies import get_strategy

__all__ = ["check_mc_passes", "check_sizes"]


def check_mc_passes(strategy: str, mc_passes: int) -> None:
    """A strategy whose scores measure disagreement between MC dropout passes gives every item
    the score 0 with one pass (and would take the pool's first items): one line before any work.
    The strategy class says how many it needs (:meth:`Strategy.mc_passes_needed`)."""
    need = type(get_strategy(strategy)).mc_passes_needed()
    if mc_passes < need:
        raise AlsegError(
            f"--mc-passes {mc_passes} is too few for strategy '{strategy}': its scores compare Monte-Carlo "
            f"dropout passes, so with fewer than {need} every item scores the same — use --mc-passes {need} or "
            "more (the default is 10)"
        )


def check_sizes(settings: LoopSettings, n_items: int, plan_batch_size: int) -> None:
    """The run's sizes against its pool of ``n_items`` items and its devices (one line if they do not fit)."""
    cfg, n = settings, n_items
    if cfg.devices.isdigit() and int(cfg.devices) > 1:  # DDP splits the (global) batch over the devices
        batch = cfg.batch_size or plan_batch_size
        if batch < int(cfg.devices):
            raise AlsegError(
                f"a batch of {batch} cannot be split over {cfg.devices} devices — use --batch-size "
                f"{cfg.devices} or more, or fewer --devices"
            )
    if cfg.initial > n:
        raise AlsegError(f"--initial {cfg.initial} is larger than the pool ({n} items) — choose at most {n}")
    if cfg.initial + cfg.budget > n:
        raise AlsegError(
            f"--budget {cfg.budget} is larger than the unlabelled pool after the initial set ({n - cfg.initial} "
            "items) — lower --budget"
        )
    if cfg.candidates is not None and cfg.candidates < cfg.budget:
        raise AlsegError(
            f"--candidates {cfg.candidates} is smaller than --budget {cfg.budget} — draw at least as many candidates"
        )
    if cfg.candidates is not None and cfg.devices.isdigit() and int(cfg.devices) > 1:
        raise AlsegError("--candidates works on one device for now — use --devices 1, or drop --candidates")
    if cfg.initial + cfg.rounds * cfg.budget > n:
        most = (n - cfg.initial) // cfg.budget
        raise AlsegError(
            f"{cfg.rounds} rounds of {cfg.budget} items need more than the pool's {n} items — use at most --rounds {most}"
        )

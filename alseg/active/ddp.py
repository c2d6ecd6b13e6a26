"""Loops on several devices: Lightning's DDP re-launches ``alseg loop`` once per extra device.

With ``--devices N`` (N > 1) Lightning's subprocess launcher starts N - 1 copies of the same
command line at the first ``fit``, with ``LOCAL_RANK`` (and ``NODE_RANK``, ``WORLD_SIZE``) set.
Every copy must then call ``fit`` as often as the first process does, on the same labelled set,
or the collectives of DDP never meet. The first process (rank 0) is the run's only writer: it
holds the lock, evaluates, scores the pool, selects, asks the oracle and writes every file. A
copy is a :class:`FollowerDriver`: it takes no lock, writes nothing, and before each round
waits until rank 0's ``state.json`` shows the round's batch labelled, then trains with it. It
ends when the run is finished, or quietly when rank 0 has gone (it stopped to wait for
annotations, failed, or was killed: rank 0's exit code and message are the ones that count).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from alseg.active.loop import LoopDriver
from alseg.active.oracles.labels import LabelStore
from alseg.active.rundir import RunDir, RunState
from alseg.active.settings import LoopSettings
from alseg.active.workspace import Workspace
from alseg.errors import AlsegError
from alseg.scoring.sharding import FileDoorbell, LeaderGone  # LeaderGone: rank 0 has gone, nothing left to train with

__all__ = ["FollowerDriver", "LeaderGone", "launched_rank"]

POLL_SECONDS = 0.2
STARTUP_SECONDS = 600.0  # rank 0 writes the run's files before its first fit; this is only a safety net


def launched_rank() -> int:
    """This process's rank when a launcher started it for DDP (0 for a process a user started).

    ``RANK`` (torchrun, Lightning's cluster environments) wins; otherwise Lightning's subprocess
    launcher sets ``LOCAL_RANK`` and ``NODE_RANK`` for the copies it starts.
    """
    env = os.environ
    if env.get("RANK", "").isdigit():
        return int(env["RANK"])
    local = int(env["LOCAL_RANK"]) if env.get("LOCAL_RANK", "").isdigit() else 0
    node = int(env["NODE_RANK"]) if env.get("NODE_RANK", "").isdigit() else 0
    return local if node == 0 else max(1, local + node)


class FollowerDriver(LoopDriver):
    """A DDP copy of ``alseg loop`` (rank > 0): trains every round with rank 0, writes nothing."""

    def __init__(self, target: Path, run_dir: Path, settings: LoopSettings, workers: int | None = None):
        self.given = None
        self.run = RunDir(run_dir)
        self.workers = workers
        self.show_progress = False
        self.leader = os.getppid()  # Lightning's launcher is rank 0 itself
        self.doorbell = FileDoorbell(self.run.doorbell_path, alive=lambda: os.getppid() == self.leader)
        self._wait(lambda: self.run.config_path.is_file() and self.run.state_path.is_file(), STARTUP_SECONDS)
        self.config = self.run.load_config()
        self.ws = Workspace.open(
            Path(target),
            self.run.path,
            self.config.config,  # the run's own choices, as rank 0 stored them
            self.config.fold,
            show_progress=False,
            test_cases=self.config.test_cases,
            item_size=self.config.item_size,
        )
        self.labels = LabelStore(self.run.labels_dir, self.ws.train_shapes())
        if settings.devices != self.config.devices:
            self.config = self.config.model_copy(update={"devices": settings.devices})
        self.state = self.run.load_state()

    def run_all(self) -> RunState | None:
        """Train each round once rank 0 has labelled its batch; None when rank 0 went away first."""
        trained = -1
        try:
            while True:
                state = self._wait(lambda t=trained: self._next(t))
                if state.finished:
                    return state
                self.state = state
                trained = state.round + 1
                self.train_round(trained)
        except LeaderGone:
            return None

    def _next(self, trained: int) -> RunState | None:
        """rank 0's state once the next round can train (or the run is finished), else None."""
        try:
            state = self.run.load_state()
        except AlsegError:  # rank 0 replaces the file atomically; a failed read is only a race
            return None
        if state.finished:
            return state
        k = state.round + 1
        if k <= trained or state.pending is not None:
            return None
        record = self.run.load_round(k)
        if record is None or not set(record.selected) <= set(state.labelled):
            return None
        return state

    def _wait(self, ready, timeout: float | None = None):
        """Poll ``ready()`` until it returns something truthy; LeaderGone if rank 0 exits first."""
        start = time.monotonic()
        while True:
            value = ready()
            if value:
                return value
            if os.getppid() != self.leader:
                raise LeaderGone
            if timeout is not None and time.monotonic() - start > timeout:
                raise AlsegError("rank 0 did not write the run's files in time — start the run again", self.run.path)
            time.sleep(POLL_SECONDS)

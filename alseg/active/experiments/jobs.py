"""A cell of ``alseg compare`` as a submitit job. Light on purpose: the job process unpickles it
and imports this module only (no torch), then starts ``alseg loop`` as its own process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

__all__ = ["CellFailed", "CellJob", "REQUEUED_NOTE"]

REQUEUED_NOTE = "alseg compare: pre-empted or out of time — requeued; the run resumes from its last finished round"
"""The line a cell's log ends with while its job waits to be requeued (``alseg status`` reads it)."""


class CellFailed(RuntimeError):
    """The cell's ``alseg loop`` exited with an error (its log says why)."""


class CellJob(Checkpointable):
    """One cell as a submitit job: its ``alseg loop ... --resume`` command, output appended to its log.

    Like :class:`submitit.helpers.CommandFunction`, but the output streams into the cell's log
    file (not into memory), and the job is checkpointable: pre-empted or out of time, it stops
    the loop and is requeued with the same command, which resumes the run directory (a finished
    round is never lost, the round in progress is redone).
    """

    def __init__(self, command: list[str], log_path: Path):
        self.command = [str(c) for c in command]
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen | None = None
        self._requeued = False

    def __getstate__(self) -> dict[str, Any]:
        return {"command": self.command, "log_path": self.log_path, "_proc": None, "_requeued": False}

    def __call__(self) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a killed loop's log keeps every line it printed
            self._proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                code = self._proc.wait()
            except BaseException:  # interrupted (cancelled, requeued): never leave the loop running alone
                self._stop()
                raise
        self._proc = None
        if code < 0 and not self._requeued:  # killed by a signal: the loop could not say so itself
            with self.log_path.open("a") as log:
                log.write(f"alseg compare: 'alseg loop' was killed (signal {-code})\n")
        if code != 0:
            raise CellFailed(f"exit {code}")
        return code

    def _stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the OS drops the run's lock with the process
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        self._requeued = True
        self._stop()
        with self.log_path.open("a") as log:
            log.write(REQUEUED_NOTE + "\n")
        return DelayedSubmission(CellJob(self.command, self.log_path))

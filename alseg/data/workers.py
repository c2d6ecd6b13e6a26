"""Process pools for the per-case work of fingerprinting and preprocessing."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

__all__ = ["default_workers", "make_executor"]


def default_workers() -> int:
    """At most 2 processes: each holds a whole case in memory, and the CPUs are shared."""
    return max(1, min(2, os.cpu_count() or 1))


def make_executor(workers: int) -> ProcessPoolExecutor:
    """A process pool of fresh interpreters ("spawn", as nnU-Net): forking a process whose
    SimpleITK or torch thread pools are running can deadlock. Spawn re-imports ``__main__``
    from its file, so when there is no such file (``python - < script``) it falls back to fork.
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    method = "fork" if main_file is not None and not os.path.isfile(main_file) else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))

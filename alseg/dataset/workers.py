"""Process pools for the per-case work of fingerprinting and preprocessing."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

__all__ = ["DIE_WITH_ENV", "default_workers", "die_with_parent", "make_executor", "watch_from_env", "worker_pool_args"]

PR_SET_PDEATHSIG = 1  # linux/prctl.h
DIE_WITH_ENV = "ALSEG_DIE_WITH"
"""Set by ``alseg compare`` (local executor) to its pid for the cells it starts: a cell's
``alseg loop`` (a grandchild, through submitit's job process) exits when compare is gone."""
WATCH_SECONDS = 0.5


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
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context(method), **worker_pool_args()
    )


def worker_pool_args() -> dict:
    """``initializer``/``initargs`` for a ``ProcessPoolExecutor`` whose workers die with this process."""
    return {
        "initializer": die_with_parent,
        "initargs": (os.getpid(), threading.current_thread() is threading.main_thread()),
    }


def die_with_parent(parent: int, pdeathsig: bool = True) -> None:
    """Pool worker initializer: exit when ``parent`` dies, also by ``kill -9`` (a pool's workers
    would otherwise wait on their task queue for good, each holding its memory).

    On Linux the kernel sends SIGKILL at once (``PR_SET_PDEATHSIG``; only when the pool was made
    in the main thread: the signal follows the thread that started the worker, not the process);
    everywhere a daemon thread also checks twice a second whether the parent is still there."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watching thread alone
            pass
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="alseg-parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but another user's (the pid was reused)
        return False
    try:  # a killed process stays a zombie until its parent reaps it: dead all the same
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux), or it just went
        return True


def watch_from_env() -> None:
    """When :data:`DIE_WITH_ENV` names a process, exit as soon as it is gone (a daemon thread
    checks twice a second): a cell of a killed ``alseg compare`` stops, like a killed run (the OS
    drops its lock; the next ``compare`` resumes it)."""
    value = os.environ.get(DIE_WITH_ENV, "")
    if not value.isdigit():
        return
    pid = int(value)

    def watch() -> None:
        while _alive(pid):
            time.sleep(WATCH_SECONDS)
        print(f"alseg: the process that started this one (pid {pid}) is gone — stopping", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="alseg-starter-watch", daemon=True).start()

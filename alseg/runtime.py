"""Process-wide CPU settings that PyTorch leaves at values which are slow for alseg's workloads.

The ``alseg`` command applies both when it starts (``alseg.cli.main``), before torch is imported;
``import alseg`` alone leaves the process as it is, so a program that uses alseg as a library
decides for itself (call :func:`tune_process` first thing to get the same behaviour). Both yield
to a user's own choice.

* **OpenMP waiting.** OpenMP threads that spin while they wait make a CPU training step ~10x
  slower as soon as another process shares the cores (measured: 3.2 s vs 0.36 s per step on 2
  busy cores). Passive waiting costs nothing measurable on idle cores. It must be set before
  torch is imported; a user's ``OMP_WAIT_POLICY`` wins.
* **glibc malloc.** Activations of a batch are allocated and freed many times per step. glibc
  hands blocks above its mmap threshold straight back to the kernel and trims the heap top, so
  every forward pass faults its pages in again: scoring 600 Task04 items x 11 passes spent
  5.5 s of 51 s CPU in the kernel (3.6 M page faults). With the mmap threshold at glibc's
  maximum (32 MiB) and a 1 GiB trim threshold the same run spends 0.2 s there (40 k faults), 9%
  less wall time. The price: up to 1 GiB of freed heap stays mapped to the process. Skipped
  when the process already set ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` or
  ``ALSEG_KEEP_MALLOC=1``, and off glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_process"]

MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def _tune_malloc() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("ALSEG_KEEP_MALLOC") == "1":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")):
        return False  # the user chose an allocator or its settings
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or no glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def tune_process() -> dict[str, bool]:
    """Apply both settings; returns which ones this call applied."""
    omp = "OMP_WAIT_POLICY" not in os.environ
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return {"omp_passive": omp, "malloc": _tune_malloc()}

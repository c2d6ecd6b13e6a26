"""Atomic writes: a crash or kill leaves either the old file or the new one, never half of one.

A write goes to ``.<name>.<random>.tmp`` beside its target, is flushed to disk, verified (its
size, or its archive's checksums, read back: a write that the OS cut short without an error, as
some libraries let happen at a full disk or a file size limit, is caught) and renamed over the
target; a process killed half-way leaves only such a temp file (:func:`is_temp_file`), which
the loop deletes on resume. A write that fails (full disk, read-only folder, a path that is a
file) is an :class:`~alseg.errors.AlsegError` naming the path, and the old file stays as it was.
New files get the usual ``0o666 & ~umask`` mode (``mkstemp`` alone would leave them 0600).

Test-only hook: with ``ALSEG_TEST_KILL_AT_WRITE=N`` in the environment a process SIGKILLs
itself during its N-th atomic write (``=PATH``: during the write of that file), after the temp file is written and before it is renamed,
printing ``killed at write N: PATH`` on stderr first (the kill-sweep test uses it to stop a loop
in every phase). When the run leads its process group (started in a new session, as the test
does) the whole group is killed, pool workers included, as a real kill of the run would. Never
set it outside tests.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alseg.errors import AlsegError

__all__ = [
    "INCOMPLETE",
    "atomic_copy",
    "atomic_save_figure",
    "atomic_write",
    "atomic_save_npy",
    "atomic_save_npz",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "default_file_mode",
    "is_temp_file",
    "kill_hook",
    "remove_temp_files_of",
    "verify_archive",
    "write_error",
]

KILL_AT_WRITE = "ALSEG_TEST_KILL_AT_WRITE"
_writes = 0
_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$|^\.tmp-[a-z0-9_]{8}\.[A-Za-z0-9.]+$")


def is_temp_file(path: Path) -> bool:
    """A temp file left by a killed atomic write: ``.<name>.<8 random chars>.tmp[<suffix>]``
    (here and :func:`alseg.dataset.io.write_image`), or ``.tmp-<8 random chars><suffix>`` (the
    image writes of alseg before 2026-12-07)."""
    return bool(_TEMP.match(Path(path).name))


_TEMP_OF = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")


def remove_temp_files_of(targets: Iterable[Path]) -> list[Path]:
    """Delete the temp files killed writes of ``targets`` left beside them
    (``.<name>.<random>.tmp*``), listing each folder once; returns them. Safe while nobody else
    writes those targets (e.g. the cases of one predict part)."""
    by_folder: dict[Path, set[str]] = {}
    for t in targets:
        by_folder.setdefault(Path(t).parent, set()).add(Path(t).name)
    stale = []
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _TEMP_OF.match(p.name)
            if m and m["target"] in names and p.is_file():
                stale.append(p)
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` would give a new file (readable by others)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


INCOMPLETE = "incomplete after writing"
"""The reason of a write whose read-back failed (see :func:`write_error`)."""


def write_error(err: OSError, path: Path) -> AlsegError:
    """An OS error of a write as one user line naming the path and the likely fix."""
    reason = err.strerror or str(err)
    hint = {
        "No space left on device": "free some space and run the same command again (with --resume for a loop)",
        "File too large": "free some space or raise the file size limit (ulimit -f), then run the same command again",
        INCOMPLETE: "free some space or raise the file size limit (ulimit -f), then run the same command again",
        "Read-only file system": "choose a writable output folder",
        "Permission denied": "choose a folder you may write to",
        "Not a directory": "a parent of this path is a file — choose another output path",
        "File exists": "a parent of this path is a file — choose another output path",
        "Is a directory": "the path is a folder — choose a file name",
    }.get(reason, "check the output path and free space")
    return AlsegError(f"cannot write ({reason}) — {hint}", path)


def kill_hook(path: Path) -> None:
    """The test-only kill point of every verified write, between the temp file and the rename
    (module docstring); does nothing unless the test variable is set."""
    global _writes
    n = os.environ.get(KILL_AT_WRITE)
    if n:
        _writes += 1
        if (_writes == int(n)) if n.isdigit() else (str(path) == n):
            import multiprocessing  # lazy: test-only hook

            print(f"killed at write {n}: {path}", file=sys.stderr, flush=True)
            group = os.getpgrp()
            if group in (os.getpid(), os.getppid()):  # the run leads its process group: kill it whole
                os.killpg(group, signal.SIGKILL)
            if multiprocessing.parent_process() is not None:
                os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


def _check(ok: bool) -> None:
    if not ok:
        raise OSError(errno.EIO, INCOMPLETE)


def _size_is(size: int) -> Callable[[str], None]:
    return lambda tmp: _check(os.path.getsize(tmp) == size)


def verify_archive(path: str) -> None:
    """``OSError`` unless ``path`` is a whole zip archive (a torch checkpoint, an ``.npz``)."""
    _zip_intact(path)


def _zip_intact(tmp: str) -> None:
    """An archive (``.npz``, a torch checkpoint) whose members all read back with their CRCs."""
    try:
        with zipfile.ZipFile(tmp) as z:
            _check(z.testzip() is None)
    except (zipfile.BadZipFile, EOFError, zlib.error):
        _check(False)


def _npy_intact(expected: int) -> Callable[[str], None]:
    """A ``.npy`` file whose header reads and whose size is the header plus the array's bytes."""

    def verify(tmp: str) -> None:
        try:
            with open(tmp, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is not None:  # version 3.0 (unicode field names) is not checked further
                    read_header(f)
                    _check(os.path.getsize(tmp) == f.tell() + expected)
        except ValueError:
            _check(False)

    return verify


def _atomic(
    path: Path, write: Callable[[str], None], suffix: str = "", verify: Callable[[str], None] | None = None
) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, default_file_mode())
        kill_hook(path)
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(err, Path(err.filename) if err.filename and tmp != err.filename else path) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, write: Callable[[str], None], verify: Callable[[str], None] | None = None) -> None:
    """``write(tmp)`` writes the file at the temp path ``tmp``; ``verify(tmp)`` raises ``OSError``
    when it did not come out whole. Then it is renamed over ``path`` (module docstring)."""
    _atomic(path, write, verify=verify)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), verify=_size_is(len(text.encode())))


def atomic_write_json(path: Path, data: Any) -> None:
    """JSON as the standard has it: a NaN or infinity (which ``json`` would write as the
    non-standard ``NaN``/``Infinity``) is refused, naming the file, and nothing is written."""
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except ValueError:
        raise AlsegError(
            "would hold a non-finite number (NaN or infinity) — nothing was written; this is a bug, please report it",
            path,
        ) from None
    atomic_write_text(path, text + "\n")


def atomic_copy(source: Path, path: Path) -> None:
    """A byte-for-byte copy of ``source`` (its header and voxels unchanged), written atomically."""
    _atomic(path, lambda tmp: shutil.copyfile(source, tmp), verify=_size_is(os.path.getsize(source)))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic(path, write, verify=_npy_intact(np.asarray(array).nbytes))


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    _atomic(path, write, verify=_zip_intact)


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # lazy: reading and writing JSON or NumPy files should not load torch (start-up)

    def write(tmp: str) -> None:
        try:
            with open(tmp, "wb") as f:  # a file object: torch would name the archive after the temp file
                torch.save(obj, f)
        except RuntimeError as err:  # torch wraps a failed write (e.g. a full disk) in a RuntimeError
            raise OSError(errno.EIO, f"write failed: {err}") from None

    _atomic(path, write, verify=_zip_intact)


def atomic_save_figure(path: Path, fig: Any, **savefig: Any) -> None:
    """A matplotlib figure (``fig.savefig(**savefig)``), written atomically; a PNG must end in its IEND chunk."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            fig.savefig(f, **savefig)

    def verify(tmp: str) -> None:
        if savefig.get("format", Path(path).suffix.lstrip(".")) == "png":
            with open(tmp, "rb") as f:
                f.seek(max(os.path.getsize(tmp) - 12, 0))
                _check(f.read(12)[4:8] == b"IEND")
        else:
            _check(os.path.getsize(tmp) > 0)

    _atomic(path, write, verify=verify)

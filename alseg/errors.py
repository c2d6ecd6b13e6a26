"""User-facing errors: one line that names the file and the fix; the CLI turns them into exit 2."""

from __future__ import annotations

from pathlib import Path

__all__ = ["AlsegError"]


class AlsegError(Exception):
    """An error the user can fix. ``str(err)`` is the one line printed on stderr."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)

"""``python -m alseg``: the same as the ``alseg`` command (and how DDP re-launches it)."""

from alseg.cli import main

main()

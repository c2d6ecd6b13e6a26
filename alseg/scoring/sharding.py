"""Pool passes sharded over the ranks of a DDP group, gathered on rank 0 in pool order.

A pass over pool items (scoring, embedding) is cut into *chunks* of items fixed by the item
list and the batch size alone (:func:`alseg.scoring.pool_inference.pool_chunks`). Work on a chunk
depends only on the chunk and its number (MC dropout masks are seeded per chunk), so the ranks
can each take a contiguous run of whole chunks and rank 0 can put the per-chunk results back
in chunk order: the result is the single-process one, bit for bit.

The work of a pass is a *chunk function* ``fn(ctx, numbered, **kwargs)``: a module-level
function (pickled by name) that yields ``(chunk number, result)`` for each ``(number, item
indices)`` of ``numbered``. :func:`map_chunks` runs it in-process when ``ctx.ranks`` is None
(world size 1: the path, speed and memory of a plain loop), else through :class:`ShardGroup`.

The protocol, over the default process group Lightning set up for ``fit`` (it stays up between
fits): rank 0 holds a :class:`ShardGroup` for a while (:func:`lead`); for each pass it
broadcasts a :class:`Request` (function, keyword arguments, all chunks, the scalar settings of
its context), runs its own shard, and gathers the others' results. The other ranks sit in
:func:`serve` for as long, each answering requests with its local network, pool and device,
until rank 0 broadcasts the end (None).

Between messages rank 0 may work alone for a long time (evaluating a round, the selection's own
work). Waiting inside a broadcast would be bounded by the process group's timeout (30 min by
default) and end the run; so with a :class:`FileDoorbell` the others wait by polling a file
instead: rank 0 rings (writes the message count) just before each broadcast, and a rank enters
the broadcast only once its message has been rung, checking meanwhile that rank 0 is alive.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from alseg.atomic import atomic_write_text
from alseg.data.pool import Pool

__all__ = [
    "FileDoorbell",
    "LeaderGone",
    "RankContext",
    "Request",
    "ShardGroup",
    "lead",
    "map_chunks",
    "serve",
    "shard_of",
]

#: The scalar settings of a scoring context that a request carries to the other ranks.
SETTINGS = ("mc_passes", "dropout_mc", "batch_size", "n_classes")

Numbered = list[tuple[int, np.ndarray]]
ChunkFn = Callable[..., Iterator[tuple[int, Any]]]


def shard_of(numbered: Numbered, rank: int, world_size: int) -> Numbered:
    """Rank ``rank``'s contiguous run of whole chunks (sizes differ by at most one chunk)."""
    n = len(numbered)
    lo, hi = (n * rank) // world_size, (n * (rank + 1)) // world_size
    return numbered[lo:hi]


@dataclass
class RankContext:
    """What a chunk function may read on a rank other than 0: its own copy of the network, pool
    and images, its device, and rank 0's scalar settings. No generator: seeds are arguments."""

    model: nn.Module
    pool: Pool
    load_image: Callable[[str], np.ndarray]
    device: torch.device
    mc_passes: int = 1
    dropout_mc: float = 0.0
    batch_size: int = 1
    n_classes: int = 2
    show_progress: bool = False
    ranks: None = None
    rng: None = None


@dataclass(frozen=True)
class Request:
    """One pass, as rank 0 broadcasts it."""

    fn: ChunkFn
    kwargs: dict[str, Any]
    numbered: Numbered
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Failed:
    """A rank's chunk function raised; rank 0 raises it again with the rank's traceback."""

    rank: int
    text: str


def _to_cpu(value: Any) -> Any:
    """Tensors moved to the CPU (inside tuples, lists, dicts and dataclasses), for pickling across ranks."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _to_cpu(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    if isinstance(value, (tuple, list)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def _run(fn: ChunkFn, ctx: Any, mine: Numbered, kwargs: dict[str, Any], rank: int) -> list | _Failed:
    try:
        return [(c, _to_cpu(r)) for c, r in fn(ctx, mine, **kwargs)]
    except Exception:
        return _Failed(rank, traceback.format_exc())


class LeaderGone(Exception):
    """Rank 0 went away while this rank waited for its next message."""


class FileDoorbell:
    """Rank 0 announces each broadcast in a file; the other ranks wait for it there, not in a
    collective (module docstring). The file must be visible to every rank (the run directory).

    Both sides count messages from the start of their process: rank 0 :meth:`reset` s the file
    before its first fit (the other ranks cannot wait before that fit has joined them all), then
    every :meth:`ring` writes the next count; every :meth:`wait` expects the next count and
    returns once the file shows it, raising :class:`LeaderGone` when ``alive()`` says rank 0 is
    gone.
    """

    def __init__(self, path: Path, alive: Callable[[], bool] = lambda: True, poll_seconds: float = 0.2):
        self.path = Path(path)
        self.alive = alive
        self.poll_seconds = poll_seconds
        self.count = 0

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.count = 0

    def ring(self) -> None:
        self.count += 1
        atomic_write_text(self.path, f"{self.count}\n")

    def wait(self) -> None:
        self.count += 1
        while self._rung() < self.count:
            if not self.alive():
                raise LeaderGone
            time.sleep(self.poll_seconds)

    def _rung(self) -> int:
        try:
            return int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):  # not written yet (written atomically: never half a number)
            return 0


class ShardGroup:
    """Rank 0's handle on the DDP group while the other ranks :func:`serve`."""

    def __init__(self, rank: int, world_size: int, doorbell: FileDoorbell | None = None):
        self.rank = rank
        self.world_size = world_size
        self.doorbell = doorbell
        self.busy = False  # inside a pass: the others are in a collective, the end must not be sent
        self.passes = 0  # passes shared so far

    def broadcast(self, message: Any) -> None:
        """Send the next request (or the end, None) to the other ranks."""
        if self.doorbell is not None:
            self.doorbell.ring()
        dist.broadcast_object_list([message], src=0)

    def map(self, ctx: Any, numbered: Numbered, fn: ChunkFn, kwargs: dict[str, Any]) -> Iterator[tuple[int, Any]]:
        """``fn`` over all of ``numbered``, sharded over the ranks; results in chunk order."""
        settings = {k: getattr(ctx, k) for k in SETTINGS if hasattr(ctx, k)}
        self.busy = True
        self.broadcast(Request(fn, kwargs, numbered, settings))
        mine = _run(fn, ctx, shard_of(numbered, 0, self.world_size), kwargs, 0)
        parts: list[Any] = [None] * self.world_size
        dist.gather_object(mine, parts, dst=0)
        self.busy = False
        self.passes += 1
        for part in parts:
            if isinstance(part, _Failed):
                raise RuntimeError(f"pool pass {fn.__name__} failed on rank {part.rank}:\n{part.text}")
        for part in parts:  # contiguous shards in rank order: chunk order
            yield from part


def map_chunks(ctx: Any, numbered: Numbered, work: ChunkFn, /, **kwargs: Any) -> Iterator[tuple[int, Any]]:
    """``work(ctx, numbered, **kwargs)``: in this process, or sharded when ``ctx.ranks`` is set."""
    group: ShardGroup | None = getattr(ctx, "ranks", None)
    if group is None or group.world_size == 1:
        return work(ctx, numbered, **kwargs)
    return group.map(ctx, numbered, work, kwargs)


def _world() -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sharded pool passes need an initialised torch.distributed process group")
    return dist.get_rank(), dist.get_world_size()


@contextmanager
def lead(doorbell: FileDoorbell | None = None) -> Iterator[ShardGroup]:
    """Rank 0: a :class:`ShardGroup` for the block; the other ranks leave :func:`serve` at its end.

    After an error inside a pass the end is not sent (the others are in another collective);
    Lightning's launcher ends them when rank 0's exception leaves ``fit``."""
    rank, world = _world()
    if rank != 0:
        raise RuntimeError("only rank 0 leads sharded pool passes")
    group = ShardGroup(rank, world, doorbell)
    try:
        yield group
    finally:
        if not group.busy:
            group.broadcast(None)


def serve(make_context: Callable[[dict[str, Any]], Any], doorbell: FileDoorbell | None = None) -> int:
    """Ranks > 0: answer rank 0's passes with ``make_context(settings)`` until it ends; returns
    how many passes this rank took part in. With ``doorbell`` each message is awaited there
    (:class:`LeaderGone` if rank 0 goes first), else inside the broadcast."""
    rank, world = _world()
    served = 0
    while True:
        if doorbell is not None:
            doorbell.wait()
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        request = box[0]
        if request is None:
            return served
        ctx = make_context(dict(request.settings))
        mine = _run(request.fn, ctx, shard_of(request.numbered, rank, world), request.kwargs, rank)
        dist.gather_object(mine, None, dst=0)
        served += 1

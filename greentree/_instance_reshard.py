"""reshard(): move a stopped InstanceManager's store to another partition count, offline."""

from __future__ import annotations

import os
from typing import Any

from ._errors import ArgumentError
from ._instance_record import encode_row
from ._instance_spec import StoreCorruptError
from ._instance_store import (
    close_shard,
    create_shard_file,
    fsync_dir,
    open_shard,
    shard_path,
    store_layout,
)
from ._partition import partition_for

__all__ = ["reshard"]

_SUFFIXES = ("", "-wal", "-shm", ".lock")


def _remove_set(store_dir: str, partitions: int, suffixes: tuple = _SUFFIXES) -> None:
    for index in range(partitions):
        base = shard_path(store_dir, index, partitions)
        for suffix in suffixes:
            try:
                os.unlink(base + suffix)
            except FileNotFoundError:
                pass


def reshard(store_dir: Any, new_partitions: int) -> int:
    """Move every instance in ``store_dir`` to ``new_partitions`` shards; return how many moved.

    >>> import tempfile
    >>> from greentree import InstanceManager, StateMachine, reshard
    >>> spec = StateMachine("s", initial="a", transitions={("a", "go"): "b"})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with InstanceManager([spec], partitions=2, store_dir=d) as im:
    ...         for n in range(10):
    ...             _ = im.init_instance("s", n)
    ...     reshard(d, 3)
    ...     with InstanceManager([spec], partitions=3, store_dir=d) as im:
    ...         sorted(i.id for i in im.all_instances())
    10
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]

    Offline and blocking: run it while no manager uses the store (it takes
    every shard's lock, and raises :class:`StoreError` if one is held), from
    a maintenance script rather than a running gevent program.  Crash-safe:
    the new shard files are written and fsynced under temporary names,
    renamed, and only then are the old ones deleted; running it again after
    an interruption finishes the job.  Routing is :func:`partition_for` with
    the new count, as the manager will use.
    """
    if isinstance(new_partitions, bool) or not isinstance(new_partitions, int) or new_partitions < 1:
        raise ArgumentError(f"reshard(): new_partitions must be a positive int, not {new_partitions!r}")
    store_dir = os.fspath(store_dir)
    for name in os.listdir(store_dir) if os.path.isdir(store_dir) else ():
        if ".sqlite.tmp" in name:
            os.unlink(os.path.join(store_dir, name))
    layout = store_layout(store_dir)
    old = sorted(n for n in layout if n != new_partitions)
    if not old:
        return 0
    if len(old) > 1:
        raise StoreCorruptError(
            f"reshard({store_dir!r}): shard files for {old} partitions are mixed; keep one set and retry"
        )
    (n_old,) = old
    if layout.get(new_partitions) == set(range(new_partitions)):
        # Interrupted after every new file was renamed into place: only the deletion is left.
        _remove_set(store_dir, n_old)
        fsync_dir(store_dir)
        return 0
    _remove_set(store_dir, new_partitions)  # a partial new set from an interrupted run
    if layout[n_old] != set(range(n_old)):
        missing = sorted(set(range(n_old)) - layout[n_old])
        raise StoreCorruptError(
            f"reshard({store_dir!r}): shard files {missing} of {n_old} are missing; restore them first"
        )
    opened = []
    try:
        new_rows: list[list] = [[] for _ in range(new_partitions)]
        for index in range(n_old):
            shard, rows = open_shard(store_dir, n_old, index, "full")
            opened.append(shard)
            for key, inst, meta in rows:
                new_rows[partition_for(inst.id, new_partitions)].append(encode_row(key, inst, meta))
        for index, rows in enumerate(new_rows):
            create_shard_file(shard_path(store_dir, index, new_partitions) + ".tmp", new_partitions, index, rows)
        fsync_dir(store_dir)
        for index in range(new_partitions):
            path = shard_path(store_dir, index, new_partitions)
            os.rename(path + ".tmp", path)
        fsync_dir(store_dir)
    finally:
        for shard in opened:
            close_shard(shard)
    _remove_set(store_dir, n_old)
    fsync_dir(store_dir)
    return sum(len(rows) for rows in new_rows)

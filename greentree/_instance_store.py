"""The instance store: one SQLite file per shard, and the thread it runs in.

Files.  Shard ``i`` of ``n`` lives in ``store_dir/shard-{i}-of-{n}.sqlite``
(with its ``-wal`` file while open) and is locked with ``flock`` on
``shard-{i}-of-{n}.lock``, so a second manager, in this process or another,
gets a clear :class:`StoreError` instead of writing behind the first one's
back.  The partition count is in the file name and in the file's ``meta``
table: opening a store written with another count raises
:class:`StoreMismatchError` naming both.

SQLite runs in WAL mode; ``durability="full"`` is ``synchronous=FULL`` (every
commit is fsynced: survives power loss), ``"normal"`` is ``synchronous=NORMAL``
(the WAL is fsynced at checkpoints only: survives a crash of the process, not
of the machine).  A batch of writes is one transaction.

Threads.  Everything that touches a file (open and load, commit, close) is a
plain function run in gevent's threadpool, never on the hub.  A
:class:`SerialRunner` per shard index runs them one at a time in submission
order, across restarts of the shard: a restarted shard loads only after its
previous incarnation's last commit and close have finished.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import sqlite3
from collections import deque
from collections.abc import Callable
from typing import Any

from gevent import get_hub, spawn
from gevent.event import AsyncResult, Event

from ._instance_record import FORMAT_VERSION, DeadlineQueue, Instance, decode_row
from ._instance_spec import StoreCorruptError, StoreError, StoreMismatchError
from ._report import report_event

__all__ = [
    "SerialRunner",
    "ShardFile",
    "check_layout",
    "close_shard",
    "commit",
    "create_shard_file",
    "fsync_dir",
    "open_shard",
    "shard_path",
    "store_layout",
]

_NAME = re.compile(r"^shard-(\d+)-of-(\d+)\.sqlite$")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID",
    (
        "CREATE TABLE IF NOT EXISTS instances (key BLOB PRIMARY KEY, crc INTEGER NOT NULL, "
        "head BLOB NOT NULL, meta BLOB NOT NULL) WITHOUT ROWID"
    ),
)
_UPSERT = "INSERT OR REPLACE INTO instances (key, crc, head, meta) VALUES (?, ?, ?, ?)"
_DELETE = "DELETE FROM instances WHERE key = ?"
SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


def shard_path(store_dir: str, index: int, partitions: int) -> str:
    return os.path.join(store_dir, f"shard-{index}-of-{partitions}.sqlite")


def store_layout(store_dir: str) -> dict[int, set[int]]:
    """``{partitions: {indexes}}`` of the shard files in ``store_dir``."""
    out: dict[int, set[int]] = {}
    try:
        names = os.listdir(store_dir)
    except FileNotFoundError:
        return out
    for name in names:
        m = _NAME.match(name)
        if m:
            out.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    return out


class ShardFile:
    """An open shard: the connection and the held lock."""

    __slots__ = ("conn", "lock_fd", "path")

    def __init__(self, path: str, conn: sqlite3.Connection, lock_fd: int):
        self.path = path
        self.conn = conn
        self.lock_fd = lock_fd


def _lock(path: str) -> int:
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreError(
                f"{path} is in use by another InstanceManager (in this process or another): stop it "
                "first, or give this manager its own store_dir"
            ) from None
        raise
    return fd


def _connect(path: str, durability: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: SQLite refused WAL mode (got {mode!r}); use a local file system")
        conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[durability]}")
        return conn
    except BaseException:
        conn.close()
        raise


def _write_meta(conn: sqlite3.Connection, partitions: int, index: int) -> None:
    conn.executemany("INSERT INTO meta (k, v) VALUES (?, ?)", [
        ("format", FORMAT_VERSION), ("partitions", partitions), ("index", index),
    ])


def _check_meta(conn: sqlite3.Connection, path: str, partitions: int, index: int) -> None:
    meta = dict(conn.execute("SELECT k, v FROM meta").fetchall())
    if not meta:
        conn.execute("BEGIN IMMEDIATE")
        _write_meta(conn, partitions, index)
        conn.execute("COMMIT")
        return
    fmt = meta.get("format")
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION or fmt < 1:
        raise StoreCorruptError(
            f"{path} has store format {fmt!r}; this greentree reads format {FORMAT_VERSION} "
            "(written by a newer greentree, or damaged)"
        )
    if meta.get("partitions") != partitions or meta.get("index") != index:
        raise StoreMismatchError(
            f"{path} says it is shard {meta.get('index')!r} of {meta.get('partitions')!r}, but it was "
            f"opened as shard {index} of {partitions}; the file was renamed or copied by hand",
            meta.get("partitions"), partitions,
        )


def check_layout(store_dir: str, partitions: int) -> None:
    """Raise :class:`StoreMismatchError` if ``store_dir`` holds shards of another count."""
    others = sorted(n for n in store_layout(store_dir) if n != partitions)
    if others:
        found = others[0]
        ours = store_layout(store_dir).get(partitions)
        if ours:
            raise StoreMismatchError(
                f"{store_dir} holds shard files for {found} and for {partitions} partitions (an "
                f"interrupted reshard?); run greentree.reshard({store_dir!r}, {partitions}) to finish it",
                found, partitions,
            )
        raise StoreMismatchError(
            f"{store_dir} was written with {found} partitions, not {partitions}: open it with "
            f"partitions={found}, or move the instances offline first with "
            f"greentree.reshard({store_dir!r}, {partitions})",
            found, partitions,
        )


def open_shard(
    store_dir: str, partitions: int, index: int, durability: str,
) -> tuple[ShardFile, list[tuple[bytes, Instance, bytes]]]:
    """Open (creating it if needed) and load shard ``index``: ``(file, [(key, Instance, meta bytes)])``.

    Runs in a worker thread.  Raises :class:`StoreMismatchError`,
    :class:`StoreCorruptError` or :class:`StoreError`; leaves nothing open then.
    """
    path = shard_path(store_dir, index, partitions)
    try:
        os.makedirs(store_dir, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the store directory {store_dir}: {e}") from e
    check_layout(store_dir, partitions)
    fresh = not os.path.exists(path)
    lock_fd = _lock(path)
    conn = None
    try:
        conn = _connect(path, durability)
        for stmt in _SCHEMA:
            conn.execute(stmt)
        _check_meta(conn, path, partitions, index)
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise StoreCorruptError(
                f"{path} is damaged (SQLite quick_check: {'; '.join(str(r[0]) for r in check[:3])}); "
                "restore it from a backup or move it aside"
            )
        rows = []
        for row in conn.execute("SELECT key, crc, head, meta FROM instances"):
            try:
                inst, meta = decode_row(*row)
                rows.append((row[0], inst, meta))
            except Exception as e:  # noqa: BLE001 - user code or a thread's failure, handed on, never swallowed
                raise StoreCorruptError(
                    f"{path}: the row for key {row[0]!r:.80} is damaged ({type(e).__name__}: {e}); "
                    "restore the file from a backup or move it aside"
                ) from None
        if fresh:
            fsync_dir(store_dir)
        return ShardFile(path, conn, lock_fd), rows
    except BaseException as e:
        if conn is not None:
            conn.close()
        os.close(lock_fd)
        if isinstance(e, StoreError) or not isinstance(e, Exception):
            raise
        if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "unable to open" in str(e)):
            raise StoreError(f"{path}: {e}") from None
        if isinstance(e, OSError):
            raise StoreError(f"{path}: {type(e).__name__}: {e}") from e
        # sqlite3.DatabaseError, or what a damaged file makes SQLite return
        # (text that is not UTF-8, values of the wrong type): a clear error.
        raise StoreCorruptError(
            f"{path} is not a readable store ({type(e).__name__}: {e}); restore it from a backup or move it aside"
        ) from None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Loaded:
    """A shard's file and its instances, ready for the shard (built in the worker thread)."""

    __slots__ = ("deadlines", "file", "instances", "keys", "metas")

    def __init__(self, file: ShardFile, rows: list[tuple[bytes, Instance, bytes]]):
        self.file = file
        self.instances: dict = {}
        self.metas: dict = {}
        self.keys: dict = {}
        pending = []
        instances, metas, keys = self.instances, self.metas, self.keys
        for key, inst, meta in rows:
            i = inst.id
            instances[i] = inst
            metas[i] = meta
            keys[i] = key
            if inst.deadline is not None:
                pending.append((i, inst.deadline))
        self.deadlines = DeadlineQueue.from_items(pending)


def load_shard(store_dir: str, partitions: int, index: int, durability: str) -> Loaded:
    """:func:`open_shard`, and the dicts and deadline queue the shard needs.  Runs in a worker thread,
    so a large shard does not hold the hub while its records are indexed."""
    return Loaded(*open_shard(store_dir, partitions, index, durability))


#: Rows in one multi-row upsert statement at most (4 values each: 512 stay under SQLite's
#: oldest limit of 999 bound values).
UPSERT_CHUNK = 128
_UPSERT_N = {n: _UPSERT + ", (?, ?, ?, ?)" * (n - 1) for n in (1 << k for k in range(8))}


def _upsert_statements(upserts: list) -> list[tuple[str, list]]:
    """``[(sql, flat values)]`` writing ``upserts`` with as few statements as possible.

    Why: sqlite3 lets go of the GIL around every statement step, and a worker
    thread must win it back from the busy event loop each time; ``executemany``
    steps once per row, one multi-row INSERT steps once per chunk.  A chunk is
    padded to a power of two by repeating its last row (an upsert of the same
    row twice leaves what once does), so 8 statement texts serve every size
    and stay in the connection's statement cache.
    """
    out = []
    for start in range(0, len(upserts), UPSERT_CHUNK):
        chunk = upserts[start:start + UPSERT_CHUNK]
        n = len(chunk)
        size = 1 << (n - 1).bit_length()
        if size > n:
            chunk = chunk + [chunk[-1]] * (size - n)
        out.append((_UPSERT_N[size], [v for row in chunk for v in row]))
    return out


def commit(shard: ShardFile, upserts: list, deletes: list) -> int:
    """Write one batch in one transaction; return the number of rows touched.  Runs in a worker thread.

    A batch of at most :data:`UPSERT_CHUNK` upserts and no deletes is one
    statement, which SQLite runs as one transaction of its own (the same
    commit, with the same ``synchronous`` setting, as BEGIN ... COMMIT).
    """
    conn = shard.conn
    statements = _upsert_statements(upserts)
    if len(statements) == 1 and not deletes:
        conn.execute(*statements[0])
        return len(upserts)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, values in statements:
            conn.execute(sql, values)
        if deletes:
            conn.executemany(_DELETE, deletes)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(upserts) + len(deletes)


def create_shard_file(path: str, partitions: int, index: int, rows: list) -> None:
    """Write a complete shard file at ``path`` (which must not exist) holding ``rows``, fsynced."""
    conn = _connect(path, "full")
    try:
        for stmt in _SCHEMA:
            conn.execute(stmt)
        conn.execute("BEGIN IMMEDIATE")
        _write_meta(conn, partitions, index)
        conn.executemany(_UPSERT, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def close_shard(shard: ShardFile) -> None:
    """Close the connection (checkpointing the WAL) and release the lock.  Runs in a worker thread."""
    try:
        shard.conn.close()
    finally:
        os.close(shard.lock_fd)


def _capture(fn: Callable[..., Any], args: tuple) -> tuple[bool, Any]:
    # gevent's threadpool prints a function's exception through the hub's
    # error handler; the runner hands it to the waiting greenlet instead.
    try:
        return True, fn(*args)
    except Exception as e:  # noqa: BLE001 - user code or a thread's failure, handed on, never swallowed
        return False, e


def _report_failure(ok: bool, value: Any) -> None:
    if not ok:
        report_event(logging.WARNING, "instance store: cleanup failed: %s: %s", type(value).__name__, value)


class SerialRunner:
    """Runs functions in gevent's threadpool one at a time, in submission order.

    :meth:`submit` calls ``then(ok, value)`` in the hub when the function has
    run (it must not block); :meth:`call` waits in the calling greenlet and
    returns the value or raises.  Both are called from greenlets (they may
    wait for a free thread); the next queued function is submitted from a
    short-lived greenlet, never from the hub.
    """

    __slots__ = ("_busy", "_idle", "_queue")

    def __init__(self) -> None:
        self._queue: deque = deque()
        self._busy = False
        self._idle = Event()
        self._idle.set()

    def submit(self, then: Callable[[bool, Any], None], fn: Callable[..., Any], *args: Any) -> None:
        self._queue.append((fn, args, then))
        if not self._busy:
            self._busy = True
            self._idle.clear()
            self._next()

    def call(self, fn: Callable[..., Any], *args: Any, release: Callable[[Any], Any] | None = None) -> Any:
        """Run ``fn(*args)`` in turn and wait for its value (or raise its error).

        A thread cannot be interrupted: if the waiting greenlet is killed,
        ``fn`` still finishes, and then ``release(value)`` runs next in this
        runner (in a worker thread) to free what it returned, e.g. an open
        file, before anything submitted later.
        """
        waiting = [True]
        out = AsyncResult()

        def then(ok: bool, value: Any) -> None:
            if ok and not waiting[0] and release is not None:
                self._queue.appendleft((release, (value,), _report_failure))  # runs before later work
            elif ok:
                out.set(value)
            else:
                out.set_exception(value)

        self.submit(then, fn, *args)
        try:
            return out.get()
        finally:
            waiting[0] = False

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            self._idle.set()
            return
        fn, args, then = self._queue.popleft()
        try:
            result = get_hub().threadpool.spawn(_capture, fn, args)
        except BaseException as e:  # noqa: BLE001 - handed to the submitter, never swallowed
            then(False, e)
            self._next()
            return
        result.rawlink(lambda r, then=then: self._done(then, r))

    def _done(self, then: Callable[[bool, Any], None], result: AsyncResult) -> None:
        # In the hub: never block here.
        if result.successful():
            then(*result.value)
        else:
            then(False, result.exception)
        if self._queue:
            spawn(self._next)
        else:
            self._busy = False
            self._idle.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted has finished; False on timeout."""
        return self._idle.wait(timeout)

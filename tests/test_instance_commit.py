"""A committed batch leaves the file exactly as one BEGIN / executemany / COMMIT did."""

from __future__ import annotations

import sqlite3

import pytest

from greentree._instance_store import _UPSERT, UPSERT_CHUNK, _upsert_statements, close_shard, commit, open_shard

pytestmark = pytest.mark.timeout(60)


def _row(k: int, v: int) -> tuple:
    return (b"k%d" % k, v, b"h%d" % v, b"m%d" % (v % 7))


def _reference(path: str, batches: list) -> list:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE instances (key BLOB PRIMARY KEY, crc INTEGER NOT NULL, "
                 "head BLOB NOT NULL, meta BLOB NOT NULL) WITHOUT ROWID")
    for upserts, deletes in batches:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_UPSERT, upserts)
        conn.executemany("DELETE FROM instances WHERE key = ?", deletes)
        conn.execute("COMMIT")
    rows = conn.execute("SELECT * FROM instances ORDER BY key").fetchall()
    conn.close()
    return rows


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_batches_of_every_size_write_what_executemany_writes(tmp_path, durability):
    sizes = [0, 1, 2, 3, 5, 7, 8, 9, 63, 64, 65, UPSERT_CHUNK - 1, UPSERT_CHUNK, UPSERT_CHUNK + 1,
             3 * UPSERT_CHUNK + 5, 1000]
    batches, v = [], 0
    for n in sizes:
        v += 1
        upserts = [_row((k * 7 + n) % 1500, v) for k in range(n)]
        upserts = list({r[0]: r for r in upserts}.values())  # a batch holds each key once
        deletes = [(b"k%d" % k,) for k in range(n % 5)] if n % 2 else []
        batches.append((upserts, deletes))
    expected = _reference(str(tmp_path / "ref.sqlite"), batches)

    shard, _ = open_shard(str(tmp_path / "store"), 1, 0, durability)
    try:
        for upserts, deletes in batches:
            assert commit(shard, upserts, deletes) == len(upserts) + len(deletes)
            assert not shard.conn.in_transaction
        got = shard.conn.execute("SELECT * FROM instances ORDER BY key").fetchall()
    finally:
        close_shard(shard)
    assert got == expected
    assert len(expected) > UPSERT_CHUNK


def test_statements_are_padded_to_eight_texts():
    texts = set()
    for n in range(1, 2 * UPSERT_CHUNK + 2):
        stmts = _upsert_statements([_row(k, 1) for k in range(n)])
        assert len(stmts) == -(-n // UPSERT_CHUNK)
        for sql, values in stmts:
            texts.add(sql)
            assert sql.count("?") == len(values) <= 4 * UPSERT_CHUNK
    assert len(texts) == 8


def test_a_failed_statement_leaves_nothing_written(tmp_path):
    shard, _ = open_shard(str(tmp_path / "store"), 1, 0, "normal")
    try:
        good = [_row(k, 1) for k in range(UPSERT_CHUNK + 3)]
        bad = good[:UPSERT_CHUNK + 1] + [(b"kx", 1, None, b"m")]  # head NOT NULL, in the second statement
        with pytest.raises(sqlite3.IntegrityError):
            commit(shard, bad, [])
        assert not shard.conn.in_transaction
        with pytest.raises(sqlite3.IntegrityError):
            commit(shard, [(b"ky", 1, None, b"m")], [])  # a single statement
        assert shard.conn.execute("SELECT count(*) FROM instances").fetchone() == (0,)
    finally:
        close_shard(shard)

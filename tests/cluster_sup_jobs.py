"""Children for the ClusterSupervisor tests, importable by name on every node.

A node process sets ``RECORD`` (a history writer) and ``CLUSTER``; in-process
tests leave them None.
"""

from __future__ import annotations

from typing import Any

import gevent

from greentree import Server

RECORD: Any = None
CLUSTER: Any = None


def _record(ev: str, **fields: Any) -> None:
    if RECORD is not None:
        RECORD(ev, **fields)


class Counter(Server):
    """Counts "inc" casts; hands its count off on a graceful leave."""

    def init(self, cid, start=0, handoff=None):
        self.cid = cid
        self.count = handoff["count"] if handoff else start
        self.handed = handoff is not None
        self.token = CLUSTER.token(cid) if CLUSTER is not None else None
        _record("acquire", name=cid, token=self.token, handed=self.handed, count=self.count)

    def handle_call(self, msg, caller):
        if msg == "get":
            return {"count": self.count, "handed": self.handed}
        if msg == "crash":
            raise RuntimeError("asked to crash")
        return None

    def handle_cast(self, msg):
        if msg == "inc":
            self.count += 1

    def terminate(self, reason):
        _record("release", name=self.cid, token=self.token)

    def handoff(self):
        return {"count": self.count}


class Big(Counter):
    """Hands off more state than any limit allows."""

    def handoff(self):
        return {"blob": b"x" * 2_000_000}


def finish(cid):
    """Returns at once: a normal exit."""


def crash(cid):
    gevent.sleep(0.01)
    raise RuntimeError(f"{cid} crashed")


def sleeper(cid):
    gevent.sleep(3600)

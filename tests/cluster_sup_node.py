"""A node running a ClusterSupervisor, as an OS process, for the fault tests.

Runs its tree through ``greentree.run`` (so SIGTERM is a graceful leave),
reads JSON-line commands on stdin, answers on stdout (same "id").  With
--history FILE the children append acquire/release events (and the node its
end) for the history checker, each stamped with the wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import gevent
import gevent.os

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import cluster_node  # noqa: E402
import cluster_sup_jobs as J  # noqa: E402
from cluster_node import OUT, emit  # noqa: E402

import greentree  # noqa: E402
from greentree import ChildSpec, Supervisor  # noqa: E402


class Node:
    def __init__(self, args):
        self.name = args.node
        self.history = open(args.history, "a") if args.history else None
        self.cluster = greentree.Cluster(args.etcd, node=args.node, ttl=args.ttl, listen=("127.0.0.1", 0),
                                         secret=args.secret.encode())
        self.jobs = greentree.ClusterSupervisor(self.cluster, "jobs", placement=args.placement)
        self.root = Supervisor([self.cluster.child_spec(), self.jobs.child_spec()], name="root",
                               max_restarts=100, max_seconds=1.0)
        self.cluster.monitor_nodes(self.on_node)
        J.RECORD = self.record
        J.CLUSTER = self.cluster

    def record(self, ev: str, **fields) -> None:
        if self.history is not None:
            fields.setdefault("inc", self.cluster.incarnation)
            self.history.write(json.dumps({"t": time.time(), "ev": ev, "node": self.name, **fields}) + "\n")
            self.history.flush()

    def on_node(self, note):
        c = self.cluster
        if note[0] == "fenced":
            wall = time.time() - (time.monotonic() - c.lease_deadline)
            self.record("end", t_end=min(time.time(), wall))
        emit({"event": note[0], "node": note[1], "t": time.time()})

    def op_state(self):
        c = self.cluster
        return {"state": c.state, "incarnation": c.incarnation, "local": sorted(self.jobs.local_children()),
                "members": sorted(c.records("cs.jobs.member")) if c.state == "up" else []}

    def op_start(self, n, prefix="job-"):
        for i in range(n):
            self.jobs.start_child(ChildSpec(f"{prefix}{i}", J.Counter, f"{prefix}{i}"))
        return {}

    def op_which(self):
        return {"children": [list(ch) for ch in self.jobs.which_children()]}

    def op_inc(self, counts):
        for cid, k in counts.items():
            for _ in range(k):
                self.cluster.cast(cid, "inc")
        return {}

    def op_get(self, ids):
        return {"got": {cid: self.cluster.call(cid, "get") for cid in ids}}

    handle = cluster_node.Node.handle  # the same JSON-line protocol

    def read_commands(self):
        for cmd in cluster_node.read_commands():
            if cmd["op"] == "exit":
                break
            gevent.spawn(self.handle, cmd)
        self.root.stop()

    def run(self):
        self.root.start()
        self.root.wait_started()
        emit({"event": "listening", "port": self.cluster.address[1]})
        reader = gevent.spawn(self.read_commands)
        rc = greentree.run(self.root)
        inc = self.cluster.incarnation
        self.record("end", inc=inc, t_end=time.time())
        reader.kill()
        emit({"event": "exited", "rc": rc})
        return rc


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--etcd", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--ttl", type=float, default=2.0)
    p.add_argument("--history")
    p.add_argument("--placement", default="hash")
    p.add_argument("--secret", default="test-secret-123")
    args = p.parse_args()
    gevent.os.make_nonblocking(OUT)
    sys.exit(Node(args).run())


if __name__ == "__main__":
    main()

"""ClusterSupervisor nodes as real OS processes against real etcd: a node SIGKILLed,
every node restarted in turn with SIGTERM, a node cut off from etcd.  The history
checker verifies that no child ever ran on two nodes at once."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import gevent
import pytest
from cluster_support import EtcdServer, NodeProc, PortBlock, etcd_available, iptables_usable, read_history

from greentree.testing import check_history

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd is not installed (Debian package etcd-server)")

TTL = 2.0
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_sup_node.py")


class SupNode(NodeProc):
    """tests/cluster_sup_node.py in its own process; NodeProc's JSON-line protocol."""

    def __init__(self, url: str, node: str, history: str, placement: str = "hash"):
        super().__init__(url, node, ttl=TTL, history=history, extra=["--placement", placement], script=SCRIPT)

    def local(self) -> list[str]:
        return self.request("state")["local"]

    def which(self) -> list[list]:
        return self.request("which")["children"]


@pytest.fixture
def cluster(tmp_path):
    """start(name, url=...) -> a SupNode up and seen as a member by the others; all stopped after."""
    etcds = []
    procs: list[SupNode] = []
    history = str(tmp_path / "history.jsonl")

    def start(name, url=None):
        if url is None:
            if not etcds:
                etcds.append(EtcdServer(1, base_dir=str(tmp_path)).start())
            url = etcds[0].url + "/cs"
        p = SupNode(url, name, history)
        procs.append(p)
        p.wait_up()
        live = [q for q in procs if q.proc.poll() is None]
        names = sorted(q.node for q in live)
        deadline = time.monotonic() + 10
        while not all(q.request("state")["members"] == names for q in live):
            assert time.monotonic() < deadline, f"members not seen: {[q.request('state') for q in live]}"
            gevent.sleep(0.05)
        return p

    start.procs = procs
    start.history = history
    start.etcds = etcds
    yield start
    for p in procs:
        p.stop()
    for e in etcds:
        e.stop()


def running(node: SupNode, n: int, avoid: str | None = None) -> bool:
    children = node.which()
    return len(children) == n and all(c[3] == "running" and c[1] != avoid for c in children)


def wait_for(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        gevent.sleep(0.05)
    return time.monotonic() - t0


def acquires_after(history: list[dict], t: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for ev in history:
        if ev["ev"] == "acquire" and ev["t"] > t:
            out[ev["name"]] = out.get(ev["name"], 0) + 1
    return out


@pytest.mark.timeout(90)
def test_a_killed_nodes_children_run_again_on_the_others_each_once_within_ttl_plus_2s(cluster):
    a, b, c = cluster("a"), cluster("b"), cluster("c")
    a.request("start", n=30)
    wait_for(lambda: running(a, 30), 15, "30 children running")
    where = {ch[0]: ch[1] for ch in a.which()}
    victims = sorted(cid for cid, node in where.items() if node == "b")
    assert victims and len(set(where.values())) == 3
    inc_b = b.request("state")["incarnation"]
    killed_at = b.kill()
    with open(cluster.history, "a") as f:
        f.write(json.dumps({"t": killed_at, "ev": "end", "node": "b", "inc": inc_b}) + "\n")
    took = wait_for(lambda: running(a, 30, avoid="b"), TTL + 5, "b's children running elsewhere")
    print(f"b's {len(victims)} children running elsewhere {took:.2f} s after the kill")
    assert took < TTL + 2.0, f"b's children came back after {took:.2f} s (promise: ttl + 2 s = {TTL + 2})"
    gevent.sleep(0.5)  # would any duplicate start show up late?
    history = read_history([cluster.history])
    again = acquires_after(history, killed_at)
    assert again == {cid: 1 for cid in victims}, "each of the dead node's children started exactly once"
    assert sorted(a.local() + c.local()) == sorted(where)
    assert check_history(history) == []


@pytest.mark.timeout(120)
def test_a_rolling_sigterm_restart_loses_no_child_and_keeps_their_state(cluster):
    nodes = {n: cluster(n) for n in ("a", "b", "c")}
    nodes["a"].request("start", n=30)
    wait_for(lambda: running(nodes["a"], 30), 15, "30 children running")
    counts = {f"job-{i}": i % 5 + 1 for i in range(30)}
    nodes["a"].request("inc", counts=counts)
    ids = sorted(counts)
    wait_for(lambda: all(v["count"] == counts[k] for k, v in nodes["a"].request("get", ids=ids)["got"].items()),
             5, "the increments applied")
    handed = set()
    for name in ("a", "b", "c"):
        old = nodes[name]
        leaving = set(old.local())
        handed |= leaving
        old.signal(signal.SIGTERM)
        assert old.wait_event(lambda e: e.get("event") == "exited", timeout=20)["rc"] == 0
        old.stop()
        other = next(n for k, n in nodes.items() if k != name)
        wait_for(lambda: running(other, 30, avoid=name), 10, f"{name}'s children handed over")  # noqa: B023 - waited for here
        nodes[name] = cluster(name)  # the same node name, a new process and incarnation
    got = nodes["c"].request("get", ids=ids)["got"]
    assert {k: v["count"] for k, v in got.items()} == counts, "no child and no increment lost"
    history = read_history([cluster.history])
    assert all(ev.get("count") == counts[ev["name"]] for ev in history
               if ev["ev"] == "acquire" and ev.get("handed")), "every handoff carried the state"
    handoffs = sum(1 for ev in history if ev["ev"] == "acquire" and ev.get("handed"))
    print(f"rolling restart: {handoffs} handoffs, {len(handed)} distinct children handed over")
    assert handoffs >= len(handed)
    assert check_history(history) == []


@pytest.mark.timeout(90)
def test_a_node_cut_off_from_etcd_stops_its_children_before_others_start_them(cluster, tmp_path):
    why = iptables_usable()
    if why:
        pytest.skip(why)
    etcd3 = EtcdServer(3, base_dir=str(tmp_path)).start()
    cluster.etcds.append(etcd3)
    ports = etcd3.client_ports
    a = cluster("a", url=f"etcd://127.0.0.1:{ports[2]}/cs")  # a talks to member 2 only
    b = cluster("b", url=f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/cs")
    b.request("start", n=20)
    wait_for(lambda: running(b, 20), 15, "20 children running")
    on_a = sorted(a.local())
    assert on_a
    block = PortBlock(ports[2])
    try:
        block.add()
        a.wait_event(lambda e: e.get("event") == "fenced", timeout=TTL + 2)
        wait_for(lambda: running(b, 20, avoid="a"), TTL + 5, "a's children running on b")
    finally:
        block.remove()
    history = read_history([cluster.history])
    gaps = []
    for cid in on_a:
        stopped = [ev["t"] for ev in history if ev["ev"] == "release" and ev["name"] == cid and ev["node"] == "a"]
        restarted = [ev["t"] for ev in history if ev["ev"] == "acquire" and ev["name"] == cid and ev["node"] == "b"]
        assert stopped and restarted and max(stopped) < min(restarted), f"{cid}: stopped on a after b started it"
        gaps.append(min(restarted) - max(stopped))
    print(f"{len(on_a)} children of the cut-off node: stopped {min(gaps):.2f}-{max(gaps):.2f} s before b started them")
    assert check_history(history) == []
    wait_for(lambda: a.request("state")["state"] == "up", 10, "a rejoined")


def _loop_seconds() -> float:
    # As long as the cluster's own fault loop (tests/test_cluster_faults.py), with supervised children.
    return float(os.environ.get("GREENTREE_CS_FAULT_SECONDS", "60"))


@pytest.mark.slow
@pytest.mark.timeout(int(_loop_seconds()) + 100)
def test_fault_loop_keeps_every_child_running_once(cluster):
    """SIGKILL, SIGTERM, SIGSTOP past the ttl and etcd cut off, at random, over 4 nodes
    running 20 children; then every child runs exactly once and the history checker passes."""
    nodes = {n: cluster(n) for n in ("a", "b", "c", "d")}
    nodes["a"].request("start", n=20)
    wait_for(lambda: running(nodes["a"], 20), 15, "20 children running")
    etcd_port = cluster.etcds[0].client_ports[0]
    rng = random.Random(int(os.environ.get("GREENTREE_FAULT_SEED", "12")))
    blocking = iptables_usable() is None
    ends: list = []
    faults: list = []
    deadline = time.monotonic() + _loop_seconds()
    while time.monotonic() < deadline:
        fault = rng.choice(["kill", "term", "pause", "block"] if blocking else ["kill", "term", "pause"])
        faults.append(fault)
        name = rng.choice(sorted(nodes))
        node = nodes[name]
        if fault in ("kill", "term"):
            inc = node.request("state")["incarnation"]
            if fault == "kill":
                ends.append({"ev": "end", "t": node.kill(), "node": name, "inc": inc})
            else:
                node.signal(signal.SIGTERM)
                node.wait_event(lambda e: e.get("event") == "exited", timeout=30)
            node.stop()
            nodes[name] = cluster(name)
        elif fault == "pause":
            node.signal(signal.SIGSTOP)
            gevent.sleep(TTL + rng.uniform(0.0, 1.0))
            node.signal(signal.SIGCONT)
        else:
            block = PortBlock(etcd_port)
            try:
                block.add()
                gevent.sleep(rng.uniform(0.5, TTL + 0.5))
            finally:
                block.remove()
        gevent.sleep(rng.uniform(0.3, 1.0))
    for n in nodes.values():
        n.wait_up(timeout=20)
    wait_for(lambda: running(nodes["a"], 20), 15, "20 children running after the faults")
    wait_for(lambda: sorted(c for n in nodes.values() for c in n.local()) == sorted(ch[0] for ch in nodes["a"].which()),
             10, "each child on exactly one node")
    history = read_history([cluster.history]) + ends
    acquired = [e for e in history if e["ev"] == "acquire"]
    print(f"cluster supervisor fault loop: {len(faults)} faults {faults}; {len(acquired)} child starts")
    problems = check_history(history)
    assert problems == [], "\n".join(problems[:20])
    assert len(acquired) > 20

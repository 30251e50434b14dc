"""greentree's benchmarks: each scenario side by side with the bare-gevent floor.

Run them all (a few minutes; results in ``benchmarks/results/``)::

    python -m benchmarks

or a quick check that every scenario still runs (what CI does)::

    python -m benchmarks --smoke

Scenarios, in order (``--only NAME`` runs one; repeat it for several):

========== ==============================================================
spec       the cost of one ChildSpec()
start      start N children under a DynamicSupervisor vs spawn + rawlink
restart    one_for_one restart latency with N idle siblings
group      one_for_all / rest_for_one restart of a static group
shutdown   DynamicSupervisor.stop vs killall; Supervisor.stop vs ordered kills
memory     bytes per idle supervised child vs a bare parked greenlet, and
           per idle supervisor with no children
storm      crash storm: throughput, p99, RSS slope, leaked greenlets
conn_tree  the per-connection tree's start/stop cost and memory
cluster    cross-node call and throughput vs local, publish fan-out, claim
           rate, takeover after SIGKILL (real etcd, nodes in processes);
           ``cluster_redis`` (last) runs it on redis-server
instances  InstanceManager: acknowledged transitions/s, hub stall, load, fan-out
telemetry  start and restart with no telemetry handler, with one, and the floor
========== ==============================================================

See ``docs/performance.rst`` for the method and the latest numbers.
"""

SCENARIOS = ("spec", "start", "restart", "group_restart", "shutdown", "memory", "storm", "conn_tree", "cluster", "instances",
             "cluster_redis", "telemetry")
ALIASES = {"group": "group_restart", "conn": "conn_tree", "im": "instances"}

"""Scenario: the cluster scenario of ``benchmarks/cluster.py`` on a real redis-server.

The same rows (cross-node call round trip and throughput vs local, publish
fan-out to 3 nodes, claim rate vs the bare create-if-absent + delete,
takeover after SIGKILL), with membership and names in Redis and messages
through each node's Redis Stream inbox instead of direct TCP links.

Needs ``redis-server`` (Debian) and redis-py (``greentree-otp[redis]``);
without them the scenario reports nothing and says why.
"""

from __future__ import annotations

import sys

from ._harness import Config, Row

NAME = "cluster_redis"
TITLE = "cluster on Redis: the cluster scenario with a Redis store and Stream inboxes"


def run(cfg: Config) -> list[Row]:
    from cluster_support import RedisServer, redis_available

    from .cluster import run_on  # puts tests/ (cluster_support) on sys.path

    if not redis_available():
        print("cluster_redis: redis-server or redis-py is not installed: skipped", file=sys.stderr)
        return []
    return run_on(cfg, RedisServer(), NAME)

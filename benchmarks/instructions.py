"""Instructions per operation, for ``valgrind --tool=callgrind`` (not a timed scenario).

``python -m benchmarks.instructions start|restart N [--handler]`` runs 200
warm-up operations, then N more.  Run it under callgrind with N=0 and with
N=3000 and divide the difference of the two totals by 3000: the
interpreter's start-up and the warm-up cancel out.  ``--handler`` attaches
one no-op handler to every telemetry event first (greentree builds that have
``greentree.telemetry``).  ``--pad K`` allocates K objects first: it moves
every later object to another address, which shows how much of a
difference between two builds is only their memory layout (objects hashed
by address collide differently).  Run it with ``PYTHONHASHSEED=0`` (the cyclic GC
is off in it) so that two runs differ only by the N operations.  See
docs/telemetry.rst for the numbers.
"""

from __future__ import annotations

import gc
import sys

import gevent
from gevent.event import Event

from greentree import ChildSpec, DynamicSupervisor

WARMUP = 200


def park() -> None:
    Event().wait()


def starts(dyn: DynamicSupervisor, n: int) -> None:
    for _ in range(n):
        dyn.start_child(ChildSpec(None, park))
    gevent.sleep(0)


def restarts(dyn: DynamicSupervisor, n: int) -> None:
    done = Event()
    left = [n]

    def crasher() -> None:
        if left[0] <= 0:
            done.set()
            park()
        left[0] -= 1
        raise RuntimeError("benchmark crash")

    dyn.start_child(ChildSpec(None, crasher))
    done.wait()


def main(argv: list[str]) -> None:
    path, n = argv[0], int(argv[1])
    gc.disable()  # a collection lands at a different moment in each run: not the path's cost
    if "--handler" in argv:
        from greentree import telemetry

        telemetry.attach("instructions", telemetry.EVENTS, lambda e, m, md: None)
    pad = [object() for _ in range(int(argv[argv.index("--pad") + 1]))] if "--pad" in argv else []
    import logging

    logging.getLogger("greentree").disabled = True  # count the path, not traceback formatting
    dyn = DynamicSupervisor(max_restarts=10 * (n + WARMUP) + 10, max_seconds=3600.0)
    dyn.start()
    dyn.wait_started()
    op = starts if path == "start" else restarts
    op(dyn, WARMUP)
    op(dyn, n)
    del pad


if __name__ == "__main__":
    main(sys.argv[1:])

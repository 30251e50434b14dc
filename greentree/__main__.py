"""``python -m greentree demo`` (see :mod:`greentree._demo`) and
``python -m greentree cluster`` (see :mod:`greentree._cluster_cli`)."""

import sys

USAGE = (
    "usage: python -m greentree demo [--clients N] [--seconds S] [--faults-per-second F] [--seed N] [--plain]\n"
    "       python -m greentree cluster --etcd URL [--json] nodes|names|whereis NAME"
)


def _cli(argv) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "cluster":
        from ._cluster_cli import main as cluster_main

        return cluster_main(argv[1:])
    if argv[0] != "demo":
        print(f"python -m greentree: unknown command {argv[0]!r}; the commands are 'demo' and 'cluster'", file=sys.stderr)
        return 2
    from ._demo import main

    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))

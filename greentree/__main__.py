"""``python -m greentree demo`` (see :mod:`greentree._demo`),
``python -m greentree cluster`` (see :mod:`greentree._cluster_cli`) and
``python -m greentree tree`` (see :mod:`greentree.observe._cli`)."""

import sys

USAGE = (
    "usage: python -m greentree demo [--clients N] [--seconds S] [--faults-per-second F] [--seed N] [--plain]\n"
    "                               [--observe-port PORT]\n"
    "       python -m greentree cluster --etcd URL [--json] nodes|names|whereis NAME\n"
    "       python -m greentree tree --url http://127.0.0.1:PORT/tree.json [--watch] [--interval S]"
)


def _cli(argv) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "cluster":
        from ._cluster_cli import main as cluster_main

        return cluster_main(argv[1:])
    if argv[0] == "tree":
        from .observe._cli import main as tree_main

        return tree_main(argv[1:])
    if argv[0] != "demo":
        print(f"python -m greentree: unknown command {argv[0]!r}; the commands are 'demo', 'cluster' and 'tree'",
              file=sys.stderr)
        return 2
    from ._demo import main

    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))

"""``python -m greentree demo``: see :mod:`greentree._demo`."""

import sys


def _cli(argv) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m greentree demo [--clients N] [--seconds S] [--faults-per-second F] [--seed N] [--plain]")
        return 0 if argv else 2
    if argv[0] != "demo":
        print(f"python -m greentree: unknown command {argv[0]!r}; the only command is 'demo'", file=sys.stderr)
        return 2
    from ._demo import main

    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))

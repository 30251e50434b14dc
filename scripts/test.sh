#!/usr/bin/env bash
# The project's one test command: README, CONTRIBUTING and .ci/run all call this.
# Extra arguments are passed on to pytest, e.g. ./scripts/test.sh -k restart -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -e '.[test]'

# Branch coverage of greentree. `coverage run` rather than pytest-cov's --cov:
# greentree.testing is a pytest11 plugin, so pytest imports greentree before
# pytest-cov starts measuring, and --cov would report every module-level line
# (def, class, imports) as missed. Settings live in tox.ini [coverage:*].
rm -f .coverage
status=0
.venv/bin/python -m coverage run --branch --source=greentree -m pytest "$@" || status=$?
.venv/bin/python -m coverage report --show-missing --skip-covered || true
exit "$status"

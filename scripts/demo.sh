#!/usr/bin/env bash
# Run the greentree demo from a fresh clone. Arguments go to `python -m greentree demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -e '.[websocket]'

exec .venv/bin/python -m greentree demo "$@"

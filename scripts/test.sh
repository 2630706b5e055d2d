#!/usr/bin/env bash
# Installs everything the test suite needs, then runs it: the project and its test extras in
# .venv, azure-batch 14.2.0 in .venv-sdk14 and azure-cli in .venv-azcli (neither can share a venv
# with azure-batch 15.1), and PostgreSQL's server binaries (the tests start a throw-away cluster
# on loopback themselves).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/scheduler -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e '.[test]'

if [ ! -x .venv-sdk14/bin/python ]; then
    "$PYTHON" -m venv .venv-sdk14
fi
.venv-sdk14/bin/python -m pip install --quiet 'azure-batch==14.2.0'

# azure-cli pins its own azure-batch (15.0.0b1); `az batch` is a client wire.md names.
if [ ! -x .venv-azcli/bin/az ]; then
    "$PYTHON" -m venv .venv-azcli
    .venv-azcli/bin/python -m pip install --quiet 'azure-cli==2.91.0'
fi

bash scripts/ensure-postgres.sh

# Lint and types first: they take seconds and fail fast.
.venv/bin/ruff check --quiet .
.venv/bin/mypy --no-error-summary shoal

export AZURE_BATCH_14_PYTHON="$PWD/.venv-sdk14/bin/python"
export AZURE_CLI_AZ="$PWD/.venv-azcli/bin/az"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

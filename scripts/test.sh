#!/usr/bin/env bash
# Installs everything the test suite needs, then runs it: the project and its test extras in
# .venv; azure-batch 11.0.0, 12.0.0, 13.0.0 and 14.2.0 in .venv-sdk11 … .venv-sdk14 and azure-cli
# in .venv-azcli (none can share a venv with azure-batch 15.1); node and the JavaScript SDK
# (@azure/batch, in tests/compat/js); Debian's Chromium for the dashboard tests; Open MPI for the
# multi-instance tests; and PostgreSQL's
# server binaries (the tests start a throw-away cluster on loopback themselves). What is
# already installed is not installed again.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/scheduler -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e '.[test]'

# The msrest-based SDK generation, one venv per release (tests/compat/test_msrest_sdks.py).
for release in 11.0.0 12.0.0 13.0.0 14.2.0; do
    venv=".venv-sdk${release%%.*}"
    if [ ! -x "$venv/bin/python" ]; then
        "$PYTHON" -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c "import sys, azure.batch; sys.exit(azure.batch.VERSION != '$release')" 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet "azure-batch==$release"
    fi
done

# The JavaScript SDK (tests/compat/test_js_sdk.py): node and npm from Debian, the SDK from npm.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -f tests/compat/js/node_modules/@azure/batch/package.json ] \
        || [ tests/compat/js/package-lock.json -nt tests/compat/js/node_modules/.package-lock.json ]; then
    npm ci --prefix tests/compat/js --no-audit --no-fund --loglevel=error
fi

# The OpenSSH client logs into a node user's SSH server (tests/acceptance/test_node_users.py).
if ! command -v ssh >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends openssh-client >/dev/null
fi

# Open MPI runs a real MPI program as a multi-instance task (tests/acceptance/test_multi_instance.py).
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev >/dev/null
fi

# Prometheus scrapes /metrics in tests/acceptance/test_prometheus.py.
if ! command -v prometheus >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# Debian's Chromium and a font, which Playwright drives for the dashboard's browser tests
# (tests/acceptance/test_dashboard_browser.py); Playwright's own browser download is not used.
if [ ! -x /usr/bin/chromium ] || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

# Azurite, the Azure Storage emulator the storage tests start on a free loopback port.
if [ ! -x tests/storage/node_modules/.bin/azurite-blob ] \
        || [ tests/storage/package-lock.json -nt tests/storage/node_modules/.package-lock.json ]; then
    npm ci --prefix tests/storage --no-audit --no-fund --loglevel=error
fi

# azure-cli pins its own azure-batch (15.0.0b1); `az batch` is a client wire.md names.
if [ ! -x .venv-azcli/bin/az ]; then
    "$PYTHON" -m venv .venv-azcli
    .venv-azcli/bin/python -m pip install --quiet 'azure-cli==2.91.0'
fi

bash scripts/ensure-postgres.sh

# Lint and types first: they take seconds and fail fast.
.venv/bin/ruff check --quiet .
.venv/bin/mypy --no-error-summary shoal

for major in 11 12 13 14; do
    export "AZURE_BATCH_${major}_PYTHON=$PWD/.venv-sdk${major}/bin/python"
done
export AZURE_CLI_AZ="$PWD/.venv-azcli/bin/az"
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=20 "$@"

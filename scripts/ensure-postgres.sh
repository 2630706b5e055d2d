#!/bin/sh
# Make sure the PostgreSQL server binaries (initdb, pg_ctl) that shoal.testing.TempPostgres needs
# are installed. Does nothing when they already are; otherwise installs Debian's `postgresql`.
set -eu

have_initdb() {
    command -v initdb >/dev/null 2>&1 && return 0
    for bin_dir in /usr/lib/postgresql/*/bin; do
        [ -x "$bin_dir/initdb" ] && return 0
    done
    return 1
}

have_initdb && exit 0

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
else
    as_root="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$as_root apt-get update -qq >/dev/null
$as_root apt-get install -y -qq --no-install-recommends postgresql >/dev/null

if ! have_initdb; then
    echo "ensure-postgres: postgresql was installed but initdb is still missing" >&2
    exit 1
fi

"""Fixtures of the security suite: besides the root `shoal` (CI runs as root), a `shoal up`
started as an ordinary user, which cannot create users and must say so."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.testing.server import RunningShoal, running_shoal

NONROOT_USER = "shoal-nonroot"


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--create-home", "--shell", "/bin/sh", name],
                       check=True, capture_output=True)
        return pwd.getpwnam(name)


@pytest.fixture(scope="module")
def nonroot_shoal() -> Iterator[RunningShoal]:
    """`shoal up` run as an unprivileged user, with its data dir where that user may write (pytest's
    own temporary folders are root's and closed to others)."""
    if os.geteuid() != 0:
        pytest.skip("starting Shoal as another user needs root")
    user = _ensure_user(NONROOT_USER)
    base = Path(tempfile.mkdtemp(prefix="shoal-nonroot-"))
    os.chown(base, user.pw_uid, user.pw_gid)
    data_dir = base / "data"
    data_dir.mkdir()
    os.chown(data_dir, user.pw_uid, user.pw_gid)
    try:
        with running_shoal(data_dir, as_user=NONROOT_USER) as running:
            yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def nonroot_client(nonroot_shoal: RunningShoal) -> object:
    return nonroot_shoal.client()

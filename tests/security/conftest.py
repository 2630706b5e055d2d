"""Fixtures of the security suite. Every test that takes `shoal` (or `client`) runs twice: against
a `shoal up` started as root, as CI runs, and against one started as an ordinary user, which
cannot create users and must say so. A module whose properties only root can give lists the
modes it runs in as ``SHOAL_MODES``; tests/security/test_nonroot.py checks what a non-root
Shoal says it cannot isolate."""

from __future__ import annotations

import contextlib
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


MODES = ("root", "nonroot")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "shoal_mode" in metafunc.fixturenames:
        modes = getattr(metafunc.module, "SHOAL_MODES", MODES)
        metafunc.parametrize("shoal_mode", modes, scope="module")


@pytest.fixture(scope="module")
def shoal_mode() -> str:
    """Where a module asks for `shoal` only at run time, it gets the root one."""
    return "root"


@pytest.fixture(scope="module")
def shoal(shoal_mode: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    """One `shoal up` per module and mode."""
    if shoal_mode == "root":
        with running_shoal(tmp_path_factory.mktemp("shoal")) as running:
            yield running
    else:
        with _nonroot_running_shoal() as running:
            yield running


@pytest.fixture(scope="module")
def nonroot_shoal() -> Iterator[RunningShoal]:
    with _nonroot_running_shoal() as running:
        yield running


@contextlib.contextmanager
def _nonroot_running_shoal() -> Iterator[RunningShoal]:
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

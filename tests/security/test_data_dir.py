"""The data directory holds the keys and every node token: nobody but Shoal's user reads it."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from tests.helpers import pool_options, wait_pool_idle


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_is_private_and_its_files_are_0600(shoal: Any, client: Any) -> None:
    client.create_pool(pool_options("private-files", target_dedicated_nodes=1))
    wait_pool_idle(client, "private-files", 1)
    assert _mode(shoal.data_dir) == 0o700
    files = [p for p in shoal.data_dir.iterdir() if p.is_file()]
    names = {p.name for p in files}
    assert {"shoal.db", "endpoint.json"} <= names, names
    for path in files:
        assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))


def test_agent_logs_are_private_and_node_roots_are_outside_the_data_dir(shoal: Any, client: Any,
                                                                          shoal_mode: str) -> None:
    nodes = wait_pool_idle(client, "private-files", 1)
    node_dir = shoal.nodes_dir / nodes[0].id
    if shoal_mode == "root":
        # Task users must reach their node root, never the data dir. Without root, tasks run as
        # Shoal's own user and can read the data dir anyway (docs/security.md), and the default
        # nodes dir is the data dir's `nodes/`.
        assert shoal.data_dir not in node_dir.parents
    log = node_dir / "agent.log"
    assert log.exists()
    assert _mode(log) & 0o077 == 0, oct(_mode(log))


def test_a_data_dir_made_with_loose_modes_is_tightened(tmp_path: Path) -> None:
    from shoal.testing.server import running_shoal

    data_dir = tmp_path / "loose"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    leftover = data_dir / "shoal.db"
    leftover.touch()
    leftover.chmod(0o644)
    with running_shoal(data_dir) as running:
        assert _mode(running.data_dir) == 0o700
        assert _mode(leftover) == 0o600


def test_a_nodes_dir_task_users_cannot_reach_is_refused_at_start(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import pytest

    if os.geteuid() != 0:
        pytest.skip("only root runs tasks as other users")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    result = subprocess.run([sys.executable, "-m", "shoal.cli", "up", "--port", "0", "--data-dir",
                             str(tmp_path / "data"), "--nodes-dir", str(closed / "nodes")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "task users cannot enter" in result.stdout and str(closed) in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (closed / "nodes").exists()

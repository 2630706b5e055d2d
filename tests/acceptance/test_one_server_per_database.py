"""Until replicas coordinate, a second server on the same PostgreSQL database is refused."""

from __future__ import annotations

import subprocess
import sys

from shoal.testing.server import kill_agents, start_shoal, stop_shoal


def test_a_second_server_on_the_same_postgresql_is_refused(tmp_path, postgres):
    url = postgres.create_database("one_server")
    first = start_shoal(tmp_path / "first", command="server", extra_args=["--database", url])
    try:
        second = subprocess.run(
            [sys.executable, "-m", "shoal.cli", "server", "--port", "0", "--data-dir", str(tmp_path / "second"),
             "--database", url], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "another Shoal server is already serving this PostgreSQL database" in second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        # The first keeps serving.
        assert first.client().list_pools() is not None
        assert list(first.client().list_pools()) == []
    finally:
        stop_shoal(first)
        kill_agents(tmp_path)
    # Once the first has stopped, the database is free again.
    again = start_shoal(tmp_path / "second", command="server", extra_args=["--database", url])
    stop_shoal(again)

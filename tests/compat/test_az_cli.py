"""`az batch` (azure-cli 2.91, which pins azure-batch 15.0.0b1 and sends api-version
2024-02-01.19.0) drives Shoal through the environment variables wire.md names."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import wait_for


def az_path() -> str:
    """The test command installs azure-cli into its own venv and names it here."""
    path = os.environ.get("AZURE_CLI_AZ") or str(Path(__file__).resolve().parents[2] / ".venv-azcli" / "bin" / "az")
    if not Path(path).exists():
        pytest.fail("azure-cli venv missing: run the README's test command (scripts/test.sh)")
    return path


@pytest.fixture
def az(shoal, tmp_path):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "AZURE_CONFIG_DIR": str(tmp_path / "azure"), "AZURE_CORE_COLLECT_TELEMETRY": "false",
           "AZURE_CORE_NO_COLOR": "true", "AZURE_BATCH_ENDPOINT": shoal.endpoint,
           "AZURE_BATCH_ACCOUNT": shoal.account, "AZURE_BATCH_ACCESS_KEY": shoal.primary_key}

    def run(*args: str) -> str:
        result = subprocess.run([az_path(), "batch", *args], capture_output=True, text=True, env=env,
                                timeout=120, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    return run


def test_az_batch_pool_job_task_and_file(az, tmp_path):
    az("pool", "create", "--id", "azpool", "--vm-size", "Standard_D2s_v3", "--target-dedicated-nodes", "1",
       "--image", "canonical:0001-com-ubuntu-server-jammy:22_04-lts", "--node-agent-sku-id", "batch.node.ubuntu 22.04")
    wait_for(lambda: json.loads(az("node", "list", "--pool-id", "azpool", "--query", "[].state", "-o", "json"))
             == ["idle"], 60, interval=0.5, message="the node to be idle")
    az("job", "create", "--id", "azjob", "--pool-id", "azpool")
    az("task", "create", "--job-id", "azjob", "--task-id", "t1", "--command-line", "/bin/echo hello-az")
    wait_for(lambda: json.loads(az("task", "show", "--job-id", "azjob", "--task-id", "t1", "--query", "state",
                                   "-o", "json")) == "completed", 60, interval=0.5, message="the task")
    az("task", "file", "download", "--job-id", "azjob", "--task-id", "t1", "--file-path", "stdout.txt",
       "--destination", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "hello-az\n"
    pools = json.loads(az("pool", "list", "--query", "[].{id:id,slots:taskSlotsPerNode}", "-o", "json"))
    assert pools == [{"id": "azpool", "slots": 1}]

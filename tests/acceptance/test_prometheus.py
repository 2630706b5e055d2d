"""A real Prometheus (Debian's) scrapes Shoal's /metrics with the data dir's scrape token, and a
PromQL query answers how many tasks completed (issue 12, acceptance)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from urllib.parse import urlparse

import httpx
import pytest
from azure.batch import models

from tests.helpers import pool_options, wait_for, wait_pool_idle, wait_tasks_done

PROMETHEUS = shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def prometheus(shoal, tmp_path):
    if PROMETHEUS is None:
        pytest.fail("Debian's prometheus is not installed (scripts/test.sh installs it)")
    target = urlparse(shoal.endpoint).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: shoal
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {shoal.data_dir / 'metrics-token'}
    static_configs:
      - targets: ['{target}']
""")
    port = _free_port()
    process = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def _query(prometheus: str, promql: str) -> list[dict]:
    try:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    except httpx.HTTPError:
        return []
    return answer.json()["data"]["result"] if answer.status_code == 200 else []


def test_promql_counts_the_completed_tasks(shoal, client, prometheus):
    client.create_pool(pool_options("prom-pool", target_dedicated_nodes=1, task_slots_per_node=2))
    wait_pool_idle(client, "prom-pool", 1)
    client.create_job(models.BatchJobCreateOptions(id="prom-job", pool_info=models.BatchPoolInfo(pool_id="prom-pool")))
    client.create_tasks("prom-job", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true")
                                     for i in range(7)])
    wait_tasks_done(client, "prom-job")
    # The scrape succeeds (the token is accepted) ...
    wait_for(lambda: _query(prometheus, 'up{job="shoal"} == 1'), timeout=30, interval=0.5, message="a scrape")
    # ... and the count Prometheus holds is the job's.
    result = wait_for(lambda: _query(prometheus, 'sum(shoal_tasks{state="completed"}) == 7'), timeout=30,
                      interval=0.5, message="7 completed tasks in Prometheus")
    assert float(result[0]["value"][1]) == 7
    placed = _query(prometheus, "shoal_task_placements_total")
    assert placed and float(placed[0]["value"][1]) >= 7

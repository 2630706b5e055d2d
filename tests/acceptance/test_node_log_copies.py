"""A node's own logs outlive it (issue 10 item 5, beyond Azure): the start task's stdout/stderr go
to the control plane with the report that ends the start task, the agent's log with each boot and
when it leaves (or, for a local node, from the provider when it finds the agent dead), and they are
read through the node's file routes while it cannot answer and under
`/shoal/v1/pools/{pool}/removednodes/{node}/files` once it is gone."""

from __future__ import annotations

import subprocess
import sys

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from shoal.agent.outputs import KEPT_BYTES
from tests.acceptance.rest import call
from tests.helpers import pool_options, wait_for, wait_pool_idle

POOL = "logs-pool"
# More than a copy holds on stdout, so the copy is the end of it.
START = "/bin/sh -c 'echo start-out; seq 1 4000 | sed s/^/line-/; echo start-err >&2'"
FULL_STDOUT = b"start-out\n" + b"".join(f"line-{i}\n".encode() for i in range(1, 4001))


def _removed(node_id: str, path: str = "", pool: str = POOL) -> str:
    return f"/shoal/v1/pools/{pool}/removednodes/{node_id}/files" + (f"/{path}" if path else "")


@pytest.fixture(scope="module")
def removed(shoal, client):
    """The id of a node that ran its start task and has since left the pool."""
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1,
                                    start_task=models.BatchStartTask(command_line=START, wait_for_success=True)))
    node = wait_pool_idle(client, POOL, 1)[0]
    client.begin_resize_pool(POOL, models.BatchPoolResizeOptions(target_dedicated_nodes=0)).result()
    wait_for(lambda: not list(client.list_nodes(POOL)), timeout=60, message="the node gone")
    return node.id


def test_start_task_output_and_agent_log_are_readable_after_the_node_left(shoal, client, removed):
    with pytest.raises(HttpResponseError) as gone:
        client.get_node(POOL, removed)
    assert gone.value.status_code == 404
    listed = call(shoal, "GET", _removed(removed))
    assert listed.status_code == 200, listed.text
    names = {f["name"]: f for f in listed.json()["value"]}
    assert sorted(names) == ["agent.log", "startup/stderr.txt", "startup/stdout.txt"]
    assert names["startup/stderr.txt"]["properties"]["contentLength"] == len(b"start-err\n")
    stdout = call(shoal, "GET", _removed(removed, "startup/stdout.txt"))
    assert stdout.status_code == 200
    assert len(stdout.content) == KEPT_BYTES and FULL_STDOUT.endswith(stdout.content)
    assert stdout.headers["ocp-shoal-truncated-from"] == str(len(FULL_STDOUT))
    assert call(shoal, "GET", _removed(removed, "startup/stderr.txt")).content == b"start-err\n"
    agent_log = call(shoal, "GET", _removed(removed, "agent.log"))
    assert agent_log.status_code == 200 and agent_log.headers["content-type"] == "application/octet-stream"
    assert b"shoal.agent" in agent_log.content  # the agent's own lines


def test_kept_logs_answer_ranges_and_head(shoal, removed):
    ranged = call(shoal, "GET", _removed(removed, "startup/stderr.txt"), headers={"ocp-range": "bytes=6-8"})
    assert ranged.status_code == 206 and ranged.content == b"err"
    assert ranged.headers["content-range"] == "bytes 6-8/10"
    head = call(shoal, "HEAD", _removed(removed, "startup/stderr.txt"))
    assert head.status_code == 200 and head.headers["content-length"] == "10"
    assert call(shoal, "GET", _removed(removed, "startup/stderr.txt"),
                headers={"ocp-range": "bytes=99-100"}).status_code == 416


@pytest.mark.parametrize("path", [
    "startup/../agent.log", "startup%2F..%2F..%2Fshoal.db", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/agent.log",
    "startup/std%00out.txt", "agent.log%00", "startup/wd/x", "shared", "a" * 5000, "startup//stdout.txt",
])
def test_only_the_kept_logs_are_served_and_no_path_escapes(shoal, removed, path):
    answer = call(shoal, "GET", _removed(removed, path))
    assert 400 <= answer.status_code < 500, (path, answer.status_code)
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["code"]


def test_kept_logs_are_not_deleted_and_the_route_wants_the_account_key(shoal, removed):
    assert call(shoal, "DELETE", _removed(removed, "agent.log")).status_code == 409
    assert call(shoal, "GET", _removed(removed, "agent.log")).status_code == 200
    assert call(shoal, "GET", _removed(removed, "agent.log"), sign=False).status_code == 401
    assert call(shoal, "GET", _removed(removed, "agent.log"), key="d3Jvbmc=").status_code in (401, 403)


@pytest.mark.parametrize("pool,node", [("logs-pool", "no-such-node"), ("other-pool", "REMOVED"),
                                       ("logs-pool", "n%00de"), ("logs-pool", "x" * 200)])
def test_unknown_or_malformed_nodes_are_refused(shoal, removed, pool, node):
    node = removed if node == "REMOVED" else node
    answer = call(shoal, "GET", _removed(node, "agent.log", pool=pool))
    assert answer.status_code in (400, 404), (pool, node, answer.status_code)
    assert answer.json()["code"] in ("NodeNotFound", "InvalidQueryParameterValue")


def test_a_preempted_nodes_start_task_output_is_read_through_the_node_routes(shoal, client):
    # The start task swaps its stderr for a link to a file only root may read: the copy must not follow it.
    sly = "/bin/sh -c 'echo spot-start; cd $AZ_BATCH_NODE_STARTUP_DIR && rm -f stderr.txt && ln -s /etc/shadow stderr.txt'"
    client.create_pool(pool_options("logs-spot", target_low_priority_nodes=1,
                                    start_task=models.BatchStartTask(command_line=sly, wait_for_success=True)))
    node = wait_pool_idle(client, "logs-spot", 1)[0]
    subprocess.run([sys.executable, "-m", "shoal.cli", "node", "preempt", "logs-spot", node.id, "--data-dir",
                    str(shoal.data_dir)], check=True, capture_output=True, timeout=60)
    assert client.get_node("logs-spot", node.id).state == "preempted"
    assert b"".join(client.download_node_file("logs-spot", node.id, "startup/stdout.txt")) == b"spot-start\n"
    assert b"".join(client.download_node_file("logs-spot", node.id, "startup/stderr.txt")) == b""
    names = sorted(f.name for f in client.list_node_files("logs-spot", node.id))
    assert names == ["agent.log", "startup/stderr.txt", "startup/stdout.txt"]
    # The provider kept the log of the agent it stopped: it has the agent's own lines.
    assert b"shoal.agent" in b"".join(client.download_node_file("logs-spot", node.id, "agent.log"))
    with pytest.raises(HttpResponseError) as missing:
        b"".join(client.download_node_file("logs-spot", node.id, "startup/wd/anything"))
    assert missing.value.status_code == 404

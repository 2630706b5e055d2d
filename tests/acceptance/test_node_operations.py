"""Node operations through the SDK: disable/enable scheduling, reboot, reimage."""

from __future__ import annotations

from azure.batch import models

# Not re-exported by azure-batch 15.1.0, whose reboot/reimage also fail client-side without options.
from azure.batch.models._models import BatchNodeRebootOptions, BatchNodeReimageOptions

from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle, wait_task_state

# The start task counts its runs in the node's shared folder; a reboot keeps the folder, a
# reimage wipes it.
BOOTS = "/bin/sh -c 'echo boot >> $AZ_BATCH_NODE_SHARED_DIR/boots.txt'"


def _boots(client, pool_id: str, node_id: str) -> int:
    data = b"".join(client.download_node_file(pool_id, node_id, "shared/boots.txt"))
    return data.count(b"boot")


def _node_state(client, pool_id: str, node_id: str) -> str:
    return client.get_node(pool_id, node_id).state


def test_disable_scheduling_lets_tasks_finish_then_node_is_offline(client):
    client.create_pool(pool_options("sched", target_dedicated_nodes=1, task_slots_per_node=2))
    node = wait_pool_idle(client, "sched", 1)[0]
    client.create_job(models.BatchJobCreateOptions(id="sched-job", pool_info=models.BatchPoolInfo(pool_id="sched")))
    client.create_task("sched-job", models.BatchTaskCreateOptions(id="first", command_line="/bin/sleep 2"))
    wait_task_state(client, "sched-job", "first", "running")
    client.disable_node_scheduling("sched", node.id, models.BatchNodeDisableSchedulingOptions(
        node_disable_scheduling_option="taskcompletion"))
    assert client.get_node("sched", node.id).scheduling_state == "disabled"
    client.create_task("sched-job", models.BatchTaskCreateOptions(id="second", command_line="/bin/true"))
    wait_task_state(client, "sched-job", "first", "completed")
    assert client.get_task("sched-job", "first").execution_info.result == "success"
    wait_for(lambda: _node_state(client, "sched", node.id) == "offline", 20, message="offline node")
    assert client.get_task("sched-job", "second").state == "active"
    again = models.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option="requeue")
    assert error_of(lambda: client.disable_node_scheduling("sched", node.id, again))[:2] == (
        409, "NodeAlreadyInTargetSchedulingState")
    client.enable_node_scheduling("sched", node.id)
    wait_task_state(client, "sched-job", "second", "completed")
    assert client.get_node("sched", node.id).scheduling_state == "enabled"


def test_reboot_requeues_running_tasks_reruns_the_start_task_and_keeps_files(client):
    client.create_pool(pool_options("reboot", target_dedicated_nodes=1, task_slots_per_node=1,
                                    start_task=models.BatchStartTask(command_line=BOOTS, wait_for_success=True)))
    node = wait_pool_idle(client, "reboot", 1)[0]
    assert _boots(client, "reboot", node.id) == 1
    client.create_job(models.BatchJobCreateOptions(id="reboot-job", pool_info=models.BatchPoolInfo(pool_id="reboot")))
    client.create_task("reboot-job", models.BatchTaskCreateOptions(id="long", command_line="/bin/sleep 3"))
    wait_task_state(client, "reboot-job", "long", "running")
    client.begin_reboot_node("reboot", node.id, BatchNodeRebootOptions(node_reboot_kind="requeue"),
                             polling_interval=0.2).result()
    wait_for(lambda: _node_state(client, "reboot", node.id) in ("idle", "running"), 30, message="node back")
    assert _boots(client, "reboot", node.id) == 2
    task = wait_task_state(client, "reboot-job", "long", "completed", timeout=30)
    assert task.execution_info.result == "success" and task.execution_info.requeue_count == 1


def test_reimage_wipes_the_node_and_reruns_the_start_task(client):
    client.create_pool(pool_options("reimage", target_dedicated_nodes=1,
                                    start_task=models.BatchStartTask(command_line=BOOTS, wait_for_success=True)))
    node = wait_pool_idle(client, "reimage", 1)[0]
    client.begin_reimage_node("reimage", node.id, BatchNodeReimageOptions(node_reimage_option="requeue"),
                              polling_interval=0.2).result()
    wait_for(lambda: _node_state(client, "reimage", node.id) == "idle"
             and client.get_node("reimage", node.id).start_task_info is not None
             and client.get_node("reimage", node.id).start_task_info.state == "completed", 30, message="node back")
    assert _boots(client, "reimage", node.id) == 1  # the first boot's file went with the old disk


def test_a_daemon_the_start_task_left_dies_with_a_reboot(client):
    import os
    import time

    # The start task leaves a daemon behind (allowed: it is not a task) that records its pid.
    daemon = ("/bin/sh -c 'setsid /bin/sh -c \"echo \\$\\$ > $AZ_BATCH_NODE_SHARED_DIR/daemon.pid; "
              "exec sleep 600\" > /dev/null 2>&1 < /dev/null &'")
    client.create_pool(pool_options("daemon", target_dedicated_nodes=1,
                                    start_task=models.BatchStartTask(command_line=daemon, wait_for_success=True)))
    node = wait_pool_idle(client, "daemon", 1)[0]

    def daemon_pid() -> int:
        return int(b"".join(client.download_node_file("daemon", node.id, "shared/daemon.pid")))

    first = wait_for(lambda: _safe(daemon_pid), 20, message="daemon pid")
    os.kill(first, 0)  # alive
    client.begin_reboot_node("daemon", node.id, BatchNodeRebootOptions(node_reboot_kind="requeue"),
                             polling_interval=0.2).result()
    wait_for(lambda: _node_state(client, "daemon", node.id) == "idle" and _safe(daemon_pid) not in (None, first),
             30, message="node back with a new daemon")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(first):
        time.sleep(0.1)
    assert not _alive(first), "the start task's daemon outlived the reboot"


def _safe(read):  # type: ignore[no-untyped-def]
    try:
        return read()
    except Exception:  # noqa: BLE001 - not written yet
        return None


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_a_failed_start_task_is_in_the_nodes_errors_with_its_stderr_until_it_succeeds(client):
    # Issue 10 item 4: errors users can act on, without fetching files.
    failing = models.BatchStartTask(command_line="/bin/sh -c 'echo starting >&2; echo \"bad config at line 7\" >&2; "
                                                 "exit 3'", wait_for_success=True)
    client.create_pool(pool_options("st-errors", target_dedicated_nodes=1, start_task=failing))
    node = wait_for(lambda: next((n for n in client.list_nodes("st-errors") if n.state == "starttaskfailed"), None),
                    30, message="start task failed")
    errors = [e for e in node.errors or [] if e.code == "StartTaskFailed"]
    assert len(errors) == 1
    assert "exit code 3" in errors[0].message and "bad config at line 7" in errors[0].message
    assert {(d.name, d.value) for d in errors[0].error_details} >= {("exitCode", "3"), ("failureCode", "FailureExitCode")}
    client.replace_pool_properties("st-errors", models.BatchPoolReplaceOptions(
        start_task=models.BatchStartTask(command_line="/bin/true", wait_for_success=True),
        application_package_references=[], metadata=[]))
    client.begin_reboot_node("st-errors", node.id, BatchNodeRebootOptions(node_reboot_kind="requeue"),
                             polling_interval=0.2).result()
    healed = wait_for(lambda: (n := client.get_node("st-errors", node.id)).state == "idle" and n, 30, message="idle")
    assert not [e for e in healed.errors or [] if e.code == "StartTaskFailed"]

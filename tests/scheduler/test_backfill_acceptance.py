"""Backfill through a real `shoal up` and the SDK: tasks that fit start even when tasks that cannot
fit wait ahead of them, in a higher-priority job or earlier in the same job."""

from __future__ import annotations

from azure.batch import models

from tests.helpers import pool_options, wait_pool_idle, wait_task_state

# More non-fitting tasks than a pass used to look at (4 per free slot, 6 free slots here).
NON_FITTING = 30


def _job(client, job_id: str, pool_id: str, priority: int) -> None:
    client.create_job(models.BatchJobCreateOptions(id=job_id, priority=priority,
                                                   pool_info=models.BatchPoolInfo(pool_id=pool_id)))


def _task(task_id: str, command: str, slots: int = 1) -> models.BatchTaskCreateOptions:
    return models.BatchTaskCreateOptions(id=task_id, command_line=command, required_slots=slots)


def _pool_with_a_slot_busy_per_node(client, pool_id: str) -> None:
    """Two 4-slot nodes, each running a long 1-slot task: 3 slots free on each, so no 4-slot task fits."""
    client.create_pool(pool_options(pool_id, target_dedicated_nodes=2, task_slots_per_node=4))
    wait_pool_idle(client, pool_id, 2)
    _job(client, f"{pool_id}-busy", pool_id, priority=1000)
    client.create_tasks(f"{pool_id}-busy", [_task(f"busy{i}", "/bin/sleep 120") for i in range(2)])
    busy = [wait_task_state(client, f"{pool_id}-busy", f"busy{i}", "running") for i in range(2)]
    assert {t.node_info.node_id for t in busy} == {n.id for n in client.list_nodes(pool_id)}


def _release(client, pool_id: str) -> None:
    for i in range(2):
        client.terminate_task(f"{pool_id}-busy", f"busy{i}")


def test_a_lower_priority_one_slot_task_starts_past_a_higher_priority_job_that_cannot_fit(client):
    _pool_with_a_slot_busy_per_node(client, "backfill")
    _job(client, "wide", "backfill", priority=500)
    client.create_tasks("wide", [_task(f"w{i}", "/bin/true", slots=4) for i in range(NON_FITTING)])
    _job(client, "narrow", "backfill", priority=0)
    client.create_task("narrow", _task("n0", "/bin/true"))
    try:
        done = wait_task_state(client, "narrow", "n0", "completed", timeout=20)
        assert done.execution_info.exit_code == 0
        # The 4-slot tasks still wait (nothing freed 4 slots), and so do the slots they could not use.
        assert client.get_job_task_counts("wide").task_counts.active == NON_FITTING
        assert all(t.state == "running" for t in client.list_tasks("backfill-busy"))
    finally:
        _release(client, "backfill")


def test_a_one_slot_task_starts_behind_non_fitting_tasks_of_its_own_job(client):
    _pool_with_a_slot_busy_per_node(client, "behind")
    _job(client, "mixed", "behind", priority=0)
    client.create_tasks("mixed", [_task(f"w{i}", "/bin/true", slots=4) for i in range(NON_FITTING)])
    client.create_tasks("mixed", [_task(f"n{i}", "/bin/true") for i in range(3)])
    try:
        for i in range(3):
            wait_task_state(client, "mixed", f"n{i}", "completed", timeout=20)
        counts = client.get_job_task_counts("mixed").task_counts
        assert (counts.active, counts.succeeded) == (NON_FITTING, 3)
    finally:
        _release(client, "behind")

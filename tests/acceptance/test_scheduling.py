"""Scheduling observed through the SDK: fill type, slots, priority, maxParallelTasks, retries."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from azure.batch import models

from tests.helpers import pool_options, wait_pool_idle, wait_tasks_done


def _job(client, job_id: str, pool_id: str, **kwargs) -> None:
    client.create_job(models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id),
                                                   **kwargs))


def _task(task_id: str, command: str, **kwargs) -> models.BatchTaskCreateOptions:
    return models.BatchTaskCreateOptions(id=task_id, command_line=command, **kwargs)


def _intervals(client, job_id: str) -> list[tuple[datetime, datetime, str, int]]:
    return [(t.execution_info.start_time, t.execution_info.end_time, t.node_info.node_id, t.required_slots)
            for t in client.list_tasks(job_id)]


def _peak_slots(intervals) -> dict[str, int]:
    """The most slots in use at once on each node, from task start/end times."""
    events = defaultdict(list)
    for start, end, node, slots in intervals:
        events[node] += [(start, slots), (end, -slots)]
    peaks = {}
    for node, items in events.items():
        used = peak = 0
        for _, delta in sorted(items, key=lambda e: (e[0], e[1])):
            used += delta
            peak = max(peak, used)
        peaks[node] = peak
    return peaks


def test_pack_fills_one_node_first_and_spread_uses_both(client):
    client.create_pool(pool_options("packed", target_dedicated_nodes=2, task_slots_per_node=4,
                                    task_scheduling_policy=models.BatchTaskSchedulingPolicy(node_fill_type="pack")))
    client.create_pool(pool_options("spread", target_dedicated_nodes=2, task_slots_per_node=4))
    wait_pool_idle(client, "packed", 2)
    wait_pool_idle(client, "spread", 2)
    for pool in ("packed", "spread"):
        _job(client, f"{pool}-job", pool)
        client.create_tasks(f"{pool}-job", [_task(f"t{i}", "/bin/sleep 1") for i in range(4)])
    wait_tasks_done(client, "packed-job")
    wait_tasks_done(client, "spread-job")
    packed_nodes = {t.node_info.node_id for t in client.list_tasks("packed-job")}
    spread_nodes = {t.node_info.node_id for t in client.list_tasks("spread-job")}
    assert len(packed_nodes) == 1
    assert len(spread_nodes) == 2


def test_no_node_runs_more_slots_than_it_has(client):
    client.create_pool(pool_options("slots", target_dedicated_nodes=2, task_slots_per_node=3))
    wait_pool_idle(client, "slots", 2)
    _job(client, "slots-job", "slots")
    tasks = [_task(f"t{i}", "/bin/sleep 0.3", required_slots=1 + i % 3) for i in range(18)]
    client.create_tasks("slots-job", tasks)
    counts = wait_tasks_done(client, "slots-job")
    assert counts.succeeded == 18
    peaks = _peak_slots(_intervals(client, "slots-job"))
    assert max(peaks.values()) <= 3, peaks


def test_higher_priority_job_runs_first(client):
    client.create_pool(pool_options("prio", target_dedicated_nodes=1, task_slots_per_node=1))
    wait_pool_idle(client, "prio", 1)
    _job(client, "low", "prio", priority=0)
    client.create_task("low", _task("blocker", "/bin/sleep 1"))
    client.create_tasks("low", [_task(f"low{i}", "/bin/true") for i in range(3)])
    _job(client, "high", "prio", priority=500)
    client.create_tasks("high", [_task(f"high{i}", "/bin/true") for i in range(3)])
    wait_tasks_done(client, "low")
    wait_tasks_done(client, "high")
    last_high = max(t.execution_info.start_time for t in client.list_tasks("high"))
    first_low = min(t.execution_info.start_time for t in client.list_tasks("low") if t.id != "blocker")
    assert last_high <= first_low


def test_max_parallel_tasks_caps_a_job(client):
    client.create_pool(pool_options("parallel", target_dedicated_nodes=1, task_slots_per_node=4))
    wait_pool_idle(client, "parallel", 1)
    _job(client, "capped", "parallel", max_parallel_tasks=1)
    client.create_tasks("capped", [_task(f"t{i}", "/bin/sleep 0.3") for i in range(4)])
    wait_tasks_done(client, "capped")
    intervals = sorted(_intervals(client, "capped"))
    for (_, end, _, _), (start, _, _, _) in zip(intervals, intervals[1:], strict=False):
        assert start >= end


def test_failed_attempt_with_retries_left_goes_back_to_the_queue(client):
    client.create_pool(pool_options("retry", target_dedicated_nodes=1, task_slots_per_node=2))
    wait_pool_idle(client, "retry", 1)
    _job(client, "retry-job", "retry")
    # Fails twice, then succeeds: the counter file lives in the node's shared folder.
    script = ("n=$(cat $AZ_BATCH_NODE_SHARED_DIR/count 2>/dev/null || echo 0); n=$((n+1)); "
              "echo $n > $AZ_BATCH_NODE_SHARED_DIR/count; [ $n -ge 3 ]")
    client.create_task("retry-job", _task("flaky", f"/bin/sh -c '{script}'",
                                          constraints=models.BatchTaskConstraints(max_task_retry_count=3)))
    wait_tasks_done(client, "retry-job")
    task = client.get_task("retry-job", "flaky")
    assert task.execution_info.result == "success"
    assert task.execution_info.retry_count == 2

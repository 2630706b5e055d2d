"""Node layout: ids become path segments only when they are Batch ids, whole."""

from __future__ import annotations

import pytest

from shoal.agent.layout import NodeLayout, UnsafeIdError, task_folder


@pytest.mark.parametrize("bad", ["job\n", "..", "a/b", "", "x" * 65, "é", "a\x00", "a b"])
def test_ids_that_are_not_whole_batch_ids_are_refused(bad: str) -> None:
    layout = NodeLayout.at("/nonexistent/root")
    with pytest.raises(UnsafeIdError):
        layout.task(bad, "t")
    with pytest.raises(UnsafeIdError):
        layout.task("j", bad)


def test_batch_ids_make_the_task_folder() -> None:
    paths = NodeLayout.at("/r").task("Job_1-a", "t" * 64)
    assert str(paths.task_dir) == "/r/workitems/Job_1-a/job-1/" + "t" * 64


def test_the_agent_and_the_control_plane_name_the_same_task_folder() -> None:
    assert task_folder("Job_1-a", "t") == "workitems/Job_1-a/job-1/t"
    assert NodeLayout.at("/r").task("Job_1-a", "t").task_dir == NodeLayout.at("/r").root / task_folder("Job_1-a", "t")


def test_a_scheduled_jobs_tasks_live_under_its_schedule() -> None:
    """Batch keeps the tasks of `<scheduleId>:job-<n>` under workitems/<scheduleId>/job-<n>."""
    layout = NodeLayout.at("/r")
    assert str(layout.task("nightly:job-12", "t").task_dir) == "/r/workitems/nightly/job-12/t"
    assert task_folder("nightly:job-12", "t") == "workitems/nightly/job-12/t"
    # Deleting one of its jobs takes only that job's folder, not the schedule's others.
    assert str(layout.job_dir("nightly:job-12")) == "/r/workitems/nightly/job-12"
    assert str(layout.job_dir("plain")) == "/r/workitems/plain"


@pytest.mark.parametrize("bad", ["a:job-0", "a:job-01", "a:job-1/..", "../a:job-1", "a:job-", ":job-1", "a:b",
                                 "a:job-1:job-2", "a:job-12345678901", "a:job-1\n"])
def test_scheduled_job_ids_must_be_whole(bad: str) -> None:
    layout = NodeLayout.at("/r")
    with pytest.raises(UnsafeIdError):
        layout.task(bad, "t")
    with pytest.raises(UnsafeIdError):
        layout.job_dir(bad)

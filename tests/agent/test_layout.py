"""Node layout: ids become path segments only when they are Batch ids, whole."""

from __future__ import annotations

import pytest

from shoal.agent.layout import NodeLayout, UnsafeIdError


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

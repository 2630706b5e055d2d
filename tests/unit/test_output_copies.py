"""The output copies an agent sends with its reports are input like any other (agent_bodies)."""

from __future__ import annotations

import base64

import pytest

from shoal.agent.outputs import COPY_BUDGET_PER_SYNC, KEPT_BYTES
from shoal.api.agent_bodies import check_sync
from shoal.errors import BatchError


def _sync(output):
    return {"reports": [{"jobId": "j", "taskId": "t", "attempt": 1, "exitCode": 0, "output": output}]}


def _part(data: bytes, size: int | None = None):
    return {"size": len(data) if size is None else size, "tail": base64.b64encode(data).decode()}


def test_a_copy_is_decoded_for_the_service():
    body = check_sync(_sync({"stdout": _part(b"out", 10), "stderr": _part(b"")}))
    assert body["reports"][0]["output"] == {"stdout": (b"out", 10), "stderr": (b"", 0)}


@pytest.mark.parametrize("output", [
    "text",
    {"stdout": {"size": 3, "tail": "!!!not base64"}},
    {"stdout": {"size": 3}},
    {"stdout": {"size": -1, "tail": ""}},
    {"stdout": {"size": True, "tail": ""}},
    {"stdout": _part(b"longer than its size", 3)},
    {"stdout": _part(b"x" * (KEPT_BYTES + 1))},
    {"stdout": {"size": 10**9, "tail": "A" * (COPY_BUDGET_PER_SYNC * 4)}},
    {"stderr": {"size": 1, "tail": 7}},
])
def test_a_bad_copy_is_refused_naming_the_field(output):
    with pytest.raises(BatchError) as error:
        check_sync(_sync(output))
    assert error.value.status == 400 and "reports[0].output" in str(error.value.values)

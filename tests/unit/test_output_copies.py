"""The output copies an agent sends with its reports are input like any other (agent_bodies)."""

from __future__ import annotations

import base64

import pytest

from shoal.agent.outputs import COPY_BUDGET_PER_SYNC, KEPT_BYTES
from shoal.api.agent_bodies import check_goodbye, check_sync
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


BAD_PARTS = [
    "text",
    {"size": 3, "tail": "!!!not base64"},
    {"size": 3},
    {"size": -1, "tail": ""},
    {"size": True, "tail": ""},
    {"size": "3", "tail": ""},
    _part(b"longer than its size", 3),
    _part(b"x" * (KEPT_BYTES + 1)),
    {"size": 10**9, "tail": "A" * (COPY_BUDGET_PER_SYNC * 4)},
    {"size": 2**63, "tail": ""},
    {"size": 1, "tail": "AA\x00="},
]


def _start_task(output):
    return {"startTask": {"state": "completed", "exitCode": 0, "output": output}}


def test_the_start_tasks_copy_and_the_agent_log_are_decoded_for_the_service():
    body = check_sync({**_start_task({"stdout": _part(b"s", 5), "stderr": _part(b"")}),
                       "agentLog": _part(b"log", 30),
                       "runningOutputs": [{"jobId": "j", "taskId": "t", "attempt": 0,
                                           "output": {"stdout": _part(b"so far")}}]})
    assert body["startTask"]["output"] == {"stdout": (b"s", 5), "stderr": (b"", 0)}
    assert body["agentLog"] == (b"log", 30)
    assert body["runningOutputs"][0]["output"] == {"stdout": (b"so far", 6), "stderr": (b"", 0)}
    assert check_goodbye({"agentLog": _part(b"bye")})["agentLog"] == (b"bye", 3)
    assert check_goodbye({}) == {}


@pytest.mark.parametrize("part", BAD_PARTS)
def test_a_bad_start_task_copy_is_refused_naming_the_field(part):
    with pytest.raises(BatchError) as error:
        check_sync(_start_task({"stdout": part}))
    assert error.value.status == 400 and "startTask.output.stdout" in str(error.value.values)


@pytest.mark.parametrize("part", BAD_PARTS)
def test_a_bad_agent_log_is_refused_naming_the_field(part):
    for check in (check_sync, check_goodbye):
        with pytest.raises(BatchError) as error:
            check({"agentLog": part})
        assert error.value.status == 400 and "agentLog" in str(error.value.values)


@pytest.mark.parametrize("entries,field", [
    ("text", "runningOutputs"),
    ([{"jobId": "j", "taskId": "t", "attempt": 0, "output": {}}] * 65, "runningOutputs"),
    (["entry"], "runningOutputs[0]"),
    ([{"taskId": "t", "attempt": 0, "output": {}}], "runningOutputs[0].jobId"),
    ([{"jobId": "j\x00", "taskId": "t", "attempt": 0, "output": {}}], "runningOutputs[0].jobId"),
    ([{"jobId": "j", "taskId": "t" * 65, "attempt": 0, "output": {}}], "runningOutputs[0].taskId"),
    ([{"jobId": "j", "taskId": "t", "attempt": "0", "output": {}}], "runningOutputs[0].attempt"),
    ([{"jobId": "j", "taskId": "t", "attempt": 0}], "runningOutputs[0].output"),
    ([{"jobId": "j", "taskId": "t", "attempt": 0, "output": []}], "runningOutputs[0].output"),
    ([{"jobId": "j", "taskId": "t", "attempt": 0, "output": {"stderr": BAD_PARTS[1]}}],
     "runningOutputs[0].output.stderr"),
])
def test_bad_running_copies_are_refused_naming_the_field(entries, field):
    with pytest.raises(BatchError) as error:
        check_sync({"runningOutputs": entries})
    assert error.value.status == 400 and field in str(error.value.values)


def test_a_goodbye_body_must_be_an_object():
    with pytest.raises(BatchError) as error:
        check_goodbye(["agentLog"])
    assert error.value.status == 400

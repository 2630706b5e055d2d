"""The shapes of agent request bodies (docs/agent-protocol.md), checked before the service sees them.

A node token is a credential a task might steal, so an agent body is input like any other:
every field the control plane reads is checked for type and size here, and a body that does not
fit answers 400 `InvalidPropertyValue` naming the field. Fields the control plane does not read
are left alone (newer agents may send more). The service then checks what needs the store
(which attempts the node holds, times against the assignment).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from shoal import clock
from shoal.agent.outputs import KEPT_BYTES
from shoal.errors import BadRequest, InvalidProperty
from shoal.model.states import StartTaskState
from shoal.service.folder_orders import MAX_ORDERS_PER_ANSWER

# Ids are Batch ids (≤ 64 characters); incarnations are uuid hex; both fit their columns.
MAX_ID_CHARS = 64
MAX_INCARNATION_CHARS = 64
# The agent sends at most 2,000 reports a sync (shoal/agent/main.py MAX_REPORTS_PER_SYNC).
MAX_REPORTS_PER_SYNC = 2000
MAX_METRICS = 64
# Failure texts are the agent's own words; longer ones are cut rather than refused, so a
# verbose error never wedges a node's reports.
MAX_FAILURE_CODE_CHARS = 256
MAX_FAILURE_MESSAGE_CHARS = 4096
MAX_STDERR_TAIL_CHARS = 4096
INT32 = (-(2**31), 2**31 - 1)
MAX_PID = 2**31 - 1
MAX_URL_CHARS = 256


def _refuse(name: str, value: Any, reason: str) -> InvalidProperty:
    return InvalidProperty(name, repr(value)[:64], reason)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="InvalidRequestBody")
    return body


def _text(body: dict[str, Any], name: str, limit: int, *, path: str | None = None,
          required: bool = False) -> str | None:
    value = body.get(name)
    label = path or name
    if value is None:
        if required:
            raise _refuse(label, value, "The value is required.")
        return None
    if not isinstance(value, str) or not value or len(value) > limit or "\x00" in value:
        raise _refuse(label, value, f"The value must be a non-empty string of at most {limit} characters.")
    return value


def _integer(value: Any, label: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _refuse(label, value, f"The value must be an integer from {low} to {high}.")
    return value


def _time(body: dict[str, Any], name: str, label: str) -> None:
    value = body.get(name)
    if value is not None and clock.parse_iso(value) is None:
        raise _refuse(label, value, "The value must be an ISO 8601 time with a zone (…Z).")


def _failure(body: dict[str, Any], label: str) -> None:
    failure = body.get("failure")
    if failure is None:
        return
    if not isinstance(failure, dict):
        raise _refuse(label, failure, "The value must be an object or null.")
    for key, limit in (("category", MAX_FAILURE_CODE_CHARS), ("code", MAX_FAILURE_CODE_CHARS),
                       ("message", MAX_FAILURE_MESSAGE_CHARS)):
        text = failure.get(key)
        if text is None:
            continue
        if not isinstance(text, str):
            raise _refuse(f"{label}.{key}", text, "The value must be a string.")
        failure[key] = text[:limit]
    # Only these three travel on into the task's failureInfo.
    body["failure"] = {k: failure[k] for k in ("category", "code", "message") if failure.get(k) is not None}


def _attempt_fields(report: dict[str, Any], label: str) -> None:
    _text(report, "jobId", MAX_ID_CHARS, path=f"{label}.jobId", required=True)
    _text(report, "taskId", MAX_ID_CHARS, path=f"{label}.taskId", required=True)
    _integer(report.get("attempt"), f"{label}.attempt", 0, INT32[1])


def _outcome_fields(report: dict[str, Any], label: str) -> None:
    for name in ("startTime", "endTime"):
        _time(report, name, f"{label}.{name}")
    if report.get("exitCode") is not None:
        _integer(report["exitCode"], f"{label}.exitCode", *INT32)
    _failure(report, f"{label}.failure")


def _copy(part: Any, path: str) -> tuple[bytes, int]:
    """One file's copy {"size": full size, "tail": base64 of its last bytes} (shoal/agent/outputs.py)
    as (last bytes, size); a copy longer than KEPT_BYTES or than the file is refused."""
    if not isinstance(part, dict) or not isinstance(part.get("tail"), str):
        raise _refuse(path, part, "The value must be an object with a base64 tail.")
    size = _integer(part.get("size"), f"{path}.size", 0, 2**62)
    if len(part["tail"]) > 4 * (KEPT_BYTES // 3 + 1):
        raise _refuse(f"{path}.tail", part["tail"][:16], f"The copy must be at most {KEPT_BYTES} bytes.")
    try:
        data = base64.b64decode(part["tail"], validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(f"{path}.tail", part["tail"][:16], "The value must be base64.") from None
    if len(data) > KEPT_BYTES or len(data) > size:
        raise _refuse(f"{path}.tail", part["tail"][:16], "The copy is longer than the file or the cap.")
    return data, size


def _output(report: dict[str, Any], label: str) -> None:
    """A task's (or the start task's) copy of its output: decoded in place to
    {"stdout": (last bytes, size), "stderr": (...)}."""
    output = report.get("output")
    if output is None:
        return
    if not isinstance(output, dict):
        raise _refuse(f"{label}.output", output, "The value must be an object.")
    report["output"] = {name: _copy(output.get(name) or {"size": 0, "tail": ""}, f"{label}.output.{name}")
                        for name in ("stdout", "stderr")}


# The agent sends copies of at most this many running tasks' output a sync (the rest wait for
# the next), so their base64 stays well inside a sync body (api/agent.py MAX_SYNC_BODY_BYTES).
MAX_RUNNING_COPIES = 64


def _objects(body: dict[str, Any], name: str, most: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, entry) of each entry of the list ``name``: at most ``most`` objects; none when absent."""
    entries = body.get(name)
    if entries is None:
        return []
    if not isinstance(entries, list) or len(entries) > most:
        raise _refuse(name, type(entries).__name__, f"The value must be a list of at most {most} objects.")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _refuse(f"{name}[{index}]", entry, "The value must be an object.")
    return [(f"{name}[{index}]", entry) for index, entry in enumerate(entries)]


def _running_outputs(body: dict[str, Any]) -> None:
    """`runningOutputs`: copies of running attempts' output so far, each [jobId, taskId, attempt]
    and its `output`, for when the node is lost before the attempt ends."""
    for label, entry in _objects(body, "runningOutputs", MAX_RUNNING_COPIES):
        _attempt_fields(entry, label)
        if entry.get("output") is None:
            raise _refuse(f"{label}.output", None, "The value is required.")
        _output(entry, label)


def _pool_packages(body: dict[str, Any]) -> None:
    """`applicationPackages`: whether the pool's packages are installed on the node, or why not."""
    report = body.get("applicationPackages")
    if report is None:
        return
    if not isinstance(report, dict) or report.get("state") not in ("installed", "failed"):
        raise _refuse("applicationPackages", type(report).__name__,
                      "The value must be an object whose state is installed or failed.")
    failure = report.get("failure")
    if report["state"] == "failed":
        if not isinstance(failure, dict) or not isinstance(failure.get("message"), str) \
                or len(failure["message"]) > MAX_STDERR_TAIL_CHARS:
            raise _refuse("applicationPackages.failure", type(failure).__name__,
                          "A failed installation carries a failure with a message.")


def _agent_log(body: dict[str, Any]) -> None:
    """`agentLog`: the last bytes of the agent's own log, decoded in place to (bytes, size)."""
    if body.get("agentLog") is not None:
        body["agentLog"] = _copy(body["agentLog"], "agentLog")


def check_goodbye(body: Any) -> dict[str, Any]:
    body = _object(body)
    _agent_log(body)
    return body


def check_hello(body: Any) -> dict[str, Any]:
    body = _object(body)
    if body.get("pid") is not None:
        _integer(body["pid"], "pid", 1, MAX_PID)
    _text(body, "incarnation", MAX_INCARNATION_CHARS)
    _text(body, "fileServerUrl", MAX_URL_CHARS)
    _text(body, "ipAddress", MAX_URL_CHARS)
    return body


def check_register(body: Any) -> dict[str, Any]:
    body = _object(body)
    _text(body, "poolId", MAX_ID_CHARS, required=True)
    return body


def _attempt_keys(body: dict[str, Any], name: str) -> None:
    """`known` (the attempts the agent holds) or `coordinated` (the multi-instance attempts whose
    coordination command succeeded here): lists of [jobId, taskId, attempt]."""
    keys = body.get(name)
    if keys is None:
        return
    if not isinstance(keys, list):
        raise _refuse(name, keys, "The value must be a list of [jobId, taskId, attempt].")
    for index, entry in enumerate(keys):
        label = f"{name}[{index}]"
        if not isinstance(entry, list) or len(entry) != 3:
            raise _refuse(label, entry, "The value must be [jobId, taskId, attempt].")
        for position, part in enumerate(entry[:2]):
            _batch_id(part, f"{label}[{position}]")
        _integer(entry[2], f"{label}[2]", 0, INT32[1])


def check_sync(body: Any) -> dict[str, Any]:
    body = _object(body)
    _text(body, "incarnation", MAX_INCARNATION_CHARS)
    if body.get("wait") is not None and not isinstance(body["wait"], bool):
        raise _refuse("wait", body["wait"], "The value must be a boolean.")
    for name in ("known", "coordinated"):
        _attempt_keys(body, name)
    for label, report in _objects(body, "reports", MAX_REPORTS_PER_SYNC):

        _attempt_fields(report, label)
        _outcome_fields(report, label)
        _output(report, label)
    start_task = body.get("startTask")
    if start_task is not None:
        if not isinstance(start_task, dict):
            raise _refuse("startTask", start_task, "The value must be an object or null.")
        if start_task.get("state") not in (StartTaskState.RUNNING, StartTaskState.COMPLETED):
            raise _refuse("startTask.state", start_task.get("state"), "The value must be running or completed.")
        _outcome_fields(start_task, "startTask")
        _time(start_task, "lastRetryTime", "startTask.lastRetryTime")
        tail = start_task.get("stderrTail")
        if tail is not None and (not isinstance(tail, str) or len(tail) > MAX_STDERR_TAIL_CHARS):
            raise _refuse("startTask.stderrTail", tail, f"The value must be a string of at most "
                                                        f"{MAX_STDERR_TAIL_CHARS} characters.")
        if start_task.get("retryCount") is not None:
            _integer(start_task["retryCount"], "startTask.retryCount", 0, INT32[1])
        _output(start_task, "startTask")
    _pool_packages(body)
    _running_outputs(body)
    _agent_log(body)
    _job_tasks(body)
    _deleted_dirs(body)
    metrics = body.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
            raise _refuse("metrics", type(metrics).__name__,
                          f"The value must be an object of at most {MAX_METRICS} numbers.")
        for key, value in metrics.items():
            if len(key) > MAX_ID_CHARS or isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise _refuse(f"metrics.{key[:MAX_ID_CHARS]}", value, "The value must be a finite number.")
    return body


# Job ids of a schedule's jobs (`<scheduleId>:job-<n>`) are longer than a task id.
MAX_JOB_ID_CHARS = 96
JOB_TASK_KINDS = ("prep", "release")


def _job_task_key(entry: Any, label: str) -> None:
    if not isinstance(entry, list) or len(entry) != 3 or entry[0] not in JOB_TASK_KINDS:
        raise _refuse(label, entry, "The value must be [prep|release, jobId, generation].")
    if not isinstance(entry[1], str) or not entry[1] or len(entry[1]) > MAX_JOB_ID_CHARS or "\x00" in entry[1]:
        raise _refuse(f"{label}[1]", entry[1], "The value must be a job id.")
    _integer(entry[2], f"{label}[2]", 0, INT32[1])


def _job_tasks(body: dict[str, Any]) -> None:
    """`knownJobTasks` (the job preparation and release runs the agent holds) and `jobTasks`
    (the latest state of each it has news of)."""
    known = body.get("knownJobTasks")
    if known is not None:
        if not isinstance(known, list) or len(known) > MAX_REPORTS_PER_SYNC:
            raise _refuse("knownJobTasks", type(known).__name__, "The value must be a list.")
        for index, entry in enumerate(known):
            _job_task_key(entry, f"knownJobTasks[{index}]")
    for label, report in _objects(body, "jobTasks", MAX_REPORTS_PER_SYNC):
        _job_task_key([report.get("kind"), report.get("jobId"), report.get("generation")], label)
        if report.get("state") not in ("running", "completed"):
            raise _refuse(f"{label}.state", report.get("state"), "The value must be running or completed.")
        _outcome_fields(report, label)
        _time(report, "lastRetryTime", f"{label}.lastRetryTime")
        if report.get("retryCount") is not None:
            _integer(report["retryCount"], f"{label}.retryCount", 0, INT32[1])


# An agent acknowledges at most as many folder deletions a sync as it is sent orders in one answer.
MAX_DELETED_DIRS = MAX_ORDERS_PER_ANSWER


def _batch_id(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS or "\x00" in value:
        raise _refuse(label, value, "The value must be a Batch id.")
    return value


def _deleted_dirs(body: dict[str, Any]) -> None:
    """`deletedTaskDirs` [[jobId, taskId], …] and `deletedJobDirs` [jobId, …]: the folder
    deletions the agent has carried out (shoal.service.folder_orders)."""
    for name, width in (("deletedTaskDirs", 2), ("deletedJobDirs", 1)):
        entries = body.get(name)
        if entries is None:
            continue
        if not isinstance(entries, list) or len(entries) > MAX_DELETED_DIRS:
            raise _refuse(name, type(entries).__name__, f"The value must be a list of at most {MAX_DELETED_DIRS}.")
        for index, entry in enumerate(entries):
            label = f"{name}[{index}]"
            if width == 1:
                _batch_id(entry, label)
                continue
            if not isinstance(entry, list) or len(entry) != width:
                raise _refuse(label, entry, "The value must be [jobId, taskId].")
            for position, part in enumerate(entry):
                _batch_id(part, f"{label}[{position}]")


# A batch sync (docs/agent-protocol.md) carries the syncs of at most this many nodes.
MAX_BATCH_NODES = 1000
MAX_TOKEN_CHARS = 128


def _batch_entries(body: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(node id, token, entry) of each entry of a batch body: 1 to MAX_BATCH_NODES objects, each
    node at most once."""
    body = _object(body)
    entries = body.get("nodes")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_BATCH_NODES:
        raise _refuse("nodes", type(entries).__name__, f"The value must be a list of 1 to {MAX_BATCH_NODES} entries.")
    checked = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        label = f"nodes[{index}]"
        if not isinstance(entry, dict):
            raise _refuse(label, entry, "The value must be an object.")
        node_id = _text(entry, "nodeId", MAX_ID_CHARS * 2, path=f"{label}.nodeId", required=True)
        token = _text(entry, "token", MAX_TOKEN_CHARS, path=f"{label}.token", required=True)
        assert node_id is not None and token is not None
        if node_id in seen:
            raise _refuse(f"{label}.nodeId", node_id, "A node may appear once in a batch.")
        seen.add(node_id)
        checked.append((node_id, token, entry))
    return checked


def check_batch_sync(body: Any) -> list[tuple[str, str, Any]]:
    """The (node id, token, unchecked sync body) of each entry of a batch; an entry's own sync
    body is checked on its own (`check_sync`), so one bad entry fails only itself."""
    return [(node_id, token, entry.get("sync")) for node_id, token, entry in _batch_entries(body)]


def check_batch_wait(body: Any) -> list[tuple[str, str, str | None]]:
    """The (node id, token, incarnation) of each node a batch wait watches."""
    checked = []
    for index, (node_id, token, entry) in enumerate(_batch_entries(body)):
        incarnation = _text(entry, "incarnation", MAX_INCARNATION_CHARS, path=f"nodes[{index}].incarnation")
        checked.append((node_id, token, incarnation))
    return checked

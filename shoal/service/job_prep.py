"""A job's preparation and release tasks as the client gives them (semantics §3.4): validated
with the job, shown on it as Azure shows them, and turned into what a node runs.

What they did on each node lives in `job_node_tasks` (service/job_prep_nodes.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shoal import clock
from shoal.errors import BatchError, InvalidProperty, MissingProperty
from shoal.service import request_body, task_files
from shoal.service import validation as v

PREP = "jobPreparationTask"
RELEASE = "jobReleaseTask"
DEFAULT_PREP_ID = "jobpreparation"
DEFAULT_RELEASE_ID = "jobrelease"
# A release task may run at most this long, and does unless it says less (Batch's rule).
RELEASE_MAX_WALL_CLOCK = timedelta(minutes=15)
RELEASE_MAX_WALL_CLOCK_TEXT = "PT15M"
DEFAULT_RETENTION = "P7D"
DEFAULT_IDENTITY = {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}
# Shoal runs no containers: refused, never dropped.
UNSUPPORTED = ("containerSettings",)


def _named(error: BatchError, root: str) -> BatchError:
    """An error of the task's own rules, naming the property as the client sent it."""
    name = error.values.get("PropertyName")
    if name and not name.startswith(root):
        error.values["PropertyName"] = f"{root}.{name}"
    return error


def _common(given: dict[str, Any], root: str, default_id: str) -> dict[str, Any]:
    task_id = v.resource_id(given) if given.get("id") is not None else default_id
    v.command_line(given)
    v.environment_settings(given)
    v.user_identity(given)
    task_files.resource_files(given)
    request_body.refuse_unsupported(given, UNSUPPORTED, root=root)
    shown: dict[str, Any] = {"id": task_id, "commandLine": given["commandLine"]}
    for name in ("resourceFiles", "environmentSettings"):
        if given.get(name):
            shown[name] = given[name]
    return shown


def _prep(given: dict[str, Any]) -> dict[str, Any]:
    shown = _common(given, PREP, DEFAULT_PREP_ID)
    constraints = v.obj(given, "constraints") or {}
    v.duration(constraints, "maxWallClockTime", path="constraints.maxWallClockTime")
    v.duration(constraints, "retentionTime", path="constraints.retentionTime")
    retries = v.integer(constraints, "maxTaskRetryCount", minimum=-1, path="constraints.maxTaskRetryCount")
    shown["constraints"] = {"maxWallClockTime": constraints.get("maxWallClockTime") or clock.UNLIMITED,
                            "retentionTime": constraints.get("retentionTime") or DEFAULT_RETENTION,
                            "maxTaskRetryCount": retries if retries is not None else 0}
    shown["userIdentity"] = given.get("userIdentity") or DEFAULT_IDENTITY
    shown["waitForSuccess"] = v.boolean(given, "waitForSuccess", default=True)
    shown["rerunOnNodeRebootAfterSuccess"] = v.boolean(given, "rerunOnNodeRebootAfterSuccess", default=True)
    return shown


def _release(given: dict[str, Any]) -> dict[str, Any]:
    shown = _common(given, RELEASE, DEFAULT_RELEASE_ID)
    wall = v.duration(given, "maxWallClockTime")
    if wall is not None and wall > RELEASE_MAX_WALL_CLOCK:
        raise InvalidProperty("maxWallClockTime", given["maxWallClockTime"],
                              "The maximum wall clock time of a job release task is at most 15 minutes.")
    v.duration(given, "retentionTime")
    shown["maxWallClockTime"] = given.get("maxWallClockTime") or RELEASE_MAX_WALL_CLOCK_TEXT
    shown["retentionTime"] = given.get("retentionTime") or DEFAULT_RETENTION
    shown["userIdentity"] = given.get("userIdentity") or DEFAULT_IDENTITY
    return shown


def parse(body: dict[str, Any]) -> dict[str, Any]:
    """The job's preparation and release tasks as the job shows them ({} without them).
    `request_body.check` has already held them to their properties and types."""
    out: dict[str, Any] = {}
    for name, parser in ((PREP, _prep), (RELEASE, _release)):
        given = v.obj(body, name)
        if given is None:
            continue
        try:
            out[name] = parser(given)
        except BatchError as error:
            raise _named(error, name) from None
    if RELEASE in out and PREP not in out:
        # Batch runs a release only where the preparation ran: one without the other is refused.
        raise MissingProperty(PREP)
    if RELEASE in out and out[RELEASE]["id"].lower() == out[PREP]["id"].lower():
        raise InvalidProperty(f"{RELEASE}.id", out[RELEASE]["id"],
                              "The job release task cannot have the id of the job preparation task.")
    manager = body.get("jobManagerTask")
    if isinstance(manager, dict) and isinstance(manager.get("id"), str):
        for name, shown in out.items():
            if shown["id"].lower() == manager["id"].lower():
                raise InvalidProperty("jobManagerTask.id", manager["id"],
                                      f"The job manager task cannot have the id of the {name}.")
    return out


def reserved_id_conflict(job_spec: dict[str, Any], task_id: str) -> str | None:
    """The error code for a task added with the id of its job's preparation or release task."""
    key = task_id.lower()
    if (job_spec.get(PREP) or {}).get("id", "").lower() == key:
        return "TaskIdSameAsJobPreparationTask"
    if (job_spec.get(RELEASE) or {}).get("id", "").lower() == key:
        return "TaskIdSameAsJobReleaseTask"
    return None


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    seconds = clock.parse_duration(text).total_seconds()
    return seconds if seconds < 10 * 365 * 86400 else None


def definition(kind: str, job_id: str, generation: int, job_spec: dict[str, Any]) -> dict[str, Any]:
    """What a node is handed to run the job's `kind` ("prep" | "release") task."""
    shown = job_spec[PREP if kind == "prep" else RELEASE]
    env = {item["name"]: item.get("value") or "" for item in job_spec.get("commonEnvironmentSettings") or []}
    for item in shown.get("environmentSettings") or []:
        env[item["name"]] = item.get("value") or ""
    if kind == "prep":
        wall, retries = shown["constraints"]["maxWallClockTime"], shown["constraints"]["maxTaskRetryCount"]
    else:
        wall, retries = shown["maxWallClockTime"], 0
    return {"kind": kind, "jobId": job_id, "generation": generation, "taskId": shown["id"],
            "commandLine": shown["commandLine"], "environment": env, "userIdentity": shown.get("userIdentity"),
            "resourceFiles": task_files.for_node(shown.get("resourceFiles")), "maxWallClockTimeS": _seconds(wall),
            "maxTaskRetryCount": retries, "prepTaskId": job_spec[PREP]["id"]}

"""How pools, jobs, tasks and nodes look on the wire, built from the records `shoal.service`
returns.

Each function writes the resource with every property any served api-version defines, in its
newest spelling, and with the defaults Azure shows (`wire_defaults`); `versions.render` then
writes it as the request's api-version does. Properties a client set that are stored verbatim
(`spec`, the service's KEPT_PROPERTIES) are echoed by one rule, `_echo`.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from shoal import clock
from shoal.api import wire_defaults
from shoal.model.states import AllocationState
from shoal.service import certificates as certificate_service
from shoal.service import jobs as job_service
from shoal.service import pools as pool_service
from shoal.service import tasks as task_service
from shoal.service.nodes import NodeRecord
from shoal.service.pools import PoolRecord
from shoal.service.tasks import TaskRecord

AGENT_VERSION = "shoal-0.1.0"
# Batch returns these write-only secrets of a pool's user accounts never (GET, list, or otherwise).
_SECRET_USER_PROPERTIES = ("password",)
_SECRET_LINUX_USER_PROPERTIES = ("sshPrivateKey",)
DEFAULT_RETENTION = "P7D"


def _echo(out: dict[str, Any], spec: dict[str, Any], names: Iterable[str]) -> None:
    """Show what the client set and Shoal keeps verbatim, where no rule above wrote it already."""
    for name in names:
        if name in spec and name not in out:
            out[name] = spec[name]


def _header(row: Any, url: str) -> dict[str, Any]:
    """What every pool, job and task begins with: identity, version and state."""
    return {"id": row.id, "url": url, "eTag": row.etag, "lastModified": clock.iso(row.last_modified),
            "creationTime": clock.iso(row.creation_time), "state": row.state,
            "stateTransitionTime": clock.iso(row.state_transition_time)}


def pool(base_url: str, record: PoolRecord) -> dict[str, Any]:
    row, current = record.row, record.current
    spec = row.spec
    out: dict[str, Any] = {
        **_header(row, f"{base_url}/pools/{row.id}"),
        "allocationState": row.allocation_state,
        "allocationStateTransitionTime": clock.iso(row.allocation_state_transition_time),
        "vmSize": row.vm_size.lower(),
        "resizeTimeout": clock.format_duration(timedelta(seconds=row.resize_timeout_s)),
        "currentDedicatedNodes": current[0],
        "currentLowPriorityNodes": current[1],
        "targetDedicatedNodes": row.target_dedicated,
        "targetLowPriorityNodes": row.target_low_priority,
        "enableAutoScale": bool(spec.get("enableAutoScale", False)),
        **({"autoScaleRun": row.autoscale_run} if row.autoscale_run and spec.get("enableAutoScale") else {}),
        "enableInterNodeCommunication": bool(spec.get("enableInterNodeCommunication", False)),
        "taskSlotsPerNode": row.slots_per_node,
        "taskSchedulingPolicy": {"nodeFillType": row.fill_type},
    }
    # Azure reports the mode its nodes use only while the pool has nodes; Shoal's agents always
    # talk to the service the simplified way.
    if current[0] + current[1] > 0:
        out["currentNodeCommunicationMode"] = "simplified"
    if row.resize_errors and row.allocation_state == AllocationState.STEADY:
        out["resizeErrors"] = row.resize_errors
    _echo(out, spec, pool_service.KEPT_PROPERTIES)
    if "userAccounts" in out:
        out["userAccounts"] = [_without_secrets(account) for account in out["userAccounts"]]
    if isinstance(out.get("startTask"), dict):
        out["startTask"] = wire_defaults.start_task(out["startTask"])
    vmc = out.get("virtualMachineConfiguration")
    if isinstance(vmc, dict) and isinstance(vmc.get("imageReference"), dict):
        out["virtualMachineConfiguration"] = {**vmc,
                                              "imageReference": wire_defaults.image_reference(vmc["imageReference"])}
    if isinstance(spec.get("certificateReferences"), list):
        out["certificateReferences"] = [certificate_service.shown_reference(ref)
                                        for ref in spec["certificateReferences"]]
    if isinstance(spec.get("applicationPackageReferences"), list):
        out["applicationPackageReferences"] = spec["applicationPackageReferences"]
    # A pool without metadata (or whose metadata was replaced by none) has no `metadata` on Azure.
    wire_defaults.drop_empty(out, "metadata", "userAccounts")
    return out


def _without_secrets(account: dict[str, Any]) -> dict[str, Any]:
    shown = {k: val for k, val in account.items() if k not in _SECRET_USER_PROPERTIES}
    linux = shown.get("linuxUserConfiguration")
    if isinstance(linux, dict):
        shown["linuxUserConfiguration"] = {k: val for k, val in linux.items()
                                           if k not in _SECRET_LINUX_USER_PROPERTIES}
    return shown


def _job_properties(spec: dict[str, Any], priority: int, max_parallel_tasks: int) -> dict[str, Any]:
    """What a job and a schedule's jobSpecification show alike, with Azure's defaults."""
    out: dict[str, Any] = {
        "priority": priority,
        "maxParallelTasks": max_parallel_tasks,
        "allowTaskPreemption": False,
        "usesTaskDependencies": bool(spec.get("usesTaskDependencies", False)),
        "onAllTasksComplete": spec.get("onAllTasksComplete", "noaction"),
        "onTaskFailure": spec.get("onTaskFailure", "noaction"),
        "constraints": {"maxWallClockTime": clock.UNLIMITED, "maxTaskRetryCount": 0,
                        **(spec.get("constraints") or {})},
    }
    _echo(out, spec, job_service.KEPT_PROPERTIES)
    _echo(out, spec, ("jobPreparationTask", "jobReleaseTask"))
    auto = (out.get("poolInfo") or {}).get("autoPoolSpecification")
    if isinstance(auto, dict):
        out["poolInfo"] = {"autoPoolSpecification": wire_defaults.auto_pool_specification(auto)}
    # A job without metadata (or whose metadata was replaced by none) has no `metadata` on Azure.
    wire_defaults.drop_empty(out, "metadata", "commonEnvironmentSettings")
    return out


def job(base_url: str, row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {**_header(row, f"{base_url}/jobs/{row.id}")}
    if row.previous_state:
        out["previousState"] = row.previous_state
        out["previousStateTransitionTime"] = clock.iso(row.previous_state_transition_time)
    out.update(_job_properties(row.spec, row.priority, row.max_parallel_tasks))
    _echo(out, row.spec, ("jobManagerTask",))
    out["executionInfo"] = row.execution_info
    return out


def job_schedule(base_url: str, row: Any) -> dict[str, Any]:
    """A job schedule as Azure shows it (recorded: test_batch.pyTestBatchtest_batch_job_schedules
    [sync].json): the schedule as given (durations and times normalised), the jobSpecification
    with the job defaults, and executionInfo."""
    spec = row.spec
    job_spec = spec.get("jobSpecification") or {}
    out: dict[str, Any] = {**_header(row, f"{base_url}/jobschedules/{row.id}")}
    if row.previous_state:
        out["previousState"] = row.previous_state
        out["previousStateTransitionTime"] = clock.iso(row.previous_state_transition_time)
    _echo(out, spec, ("displayName", "schedule"))
    out["jobSpecification"] = _job_properties(job_spec, job_spec.get("priority", 0),
                                              job_spec.get("maxParallelTasks", -1))
    out["executionInfo"] = row.execution_info
    _echo(out, spec, ("metadata",))
    wire_defaults.drop_empty(out, "metadata")
    return out


def task(base_url: str, record: TaskRecord) -> dict[str, Any]:
    job_row, row = record.job, record.row
    spec = row.spec
    constraints = {"maxWallClockTime": clock.UNLIMITED, "retentionTime": DEFAULT_RETENTION,
                   "maxTaskRetryCount": (job_row.spec.get("constraints") or {}).get("maxTaskRetryCount", 0)}
    constraints.update(spec.get("constraints") or {})
    out: dict[str, Any] = {
        **_header(row, f"{base_url}/jobs/{job_row.id}/tasks/{row.id}"),
        "commandLine": spec["commandLine"],
        "requiredSlots": row.required_slots,
        "constraints": constraints,
        "executionInfo": row.execution_info,
    }
    if row.previous_state:
        out["previousState"] = row.previous_state
        out["previousStateTransitionTime"] = clock.iso(row.previous_state_transition_time)
    if row.node_info:
        out["nodeInfo"] = row.node_info
    _echo(out, spec, task_service.KEPT_PROPERTIES)
    # Azure always shows whom a task runs as: the default is the pool-scope, non-admin auto-user.
    out["userIdentity"] = wire_defaults.user_identity(spec.get("userIdentity"))
    wire_defaults.drop_empty(out, "environmentSettings")
    return out


def node(base_url: str, record: NodeRecord) -> dict[str, Any]:
    pool_row, row, running = record.pool, record.row, record.running
    out: dict[str, Any] = {
        "id": row.id,
        "url": f"{base_url}/pools/{pool_row.id}/nodes/{row.id}",
        "state": row.state,
        "schedulingState": row.scheduling_state,
        "stateTransitionTime": clock.iso(row.state_transition_time),
        "allocationTime": clock.iso(row.allocation_time),
        "ipAddress": row.ip_address or "127.0.0.1",
        "affinityId": f"TVM:{row.id}",
        "vmSize": pool_row.vm_size.lower(),
        "totalTasksRun": row.total_tasks_run,
        "totalTasksSucceeded": row.total_tasks_succeeded,
        "runningTasksCount": len(running),
        "runningTaskSlotsCount": sum(t.required_slots for t in running),
        "isDedicated": bool(row.is_dedicated),
        # Shoal's nodes have no inbound NAT endpoints (no remote login through a load balancer).
        "endpointConfiguration": {"inboundEndpoints": []},
    }
    image = _virtual_machine_info(pool_row.spec)
    if image is not None:
        out["virtualMachineInfo"] = image
    # What the node agent reports appears once it has booted (said hello), as on Azure, where a
    # creating or starting node has no agent info, boot time or installed certificates yet.
    if row.last_boot_time:
        out["lastBootTime"] = clock.iso(row.last_boot_time)
        out["certificateReferences"] = [certificate_service.shown_reference(ref)
                                        for ref in row.certificate_references or [] if isinstance(ref, dict)]
        out["nodeAgentInfo"] = {"version": AGENT_VERSION, "lastUpdateTime": clock.iso(row.last_boot_time)}
    start_task = pool_row.spec.get("startTask")
    if start_task:
        out["startTask"] = wire_defaults.start_task(start_task)
    if row.start_task_info:
        out["startTaskInfo"] = row.start_task_info
    if row.errors:
        out["errors"] = row.errors
    if running or record.recent:
        out["recentTasks"] = [_task_information(base_url, t) for t in (*running, *record.recent)]
    return out


def _virtual_machine_info(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The image a node runs: the pool's reference, with the exact version Batch resolved
    `latest` to. Every Shoal node runs its host's operating system whatever the pool names, so
    an unpinned image reports the host's release (see docs/deviations.md)."""
    reference = (spec.get("virtualMachineConfiguration") or {}).get("imageReference")
    if not isinstance(reference, dict):
        return None
    shown = wire_defaults.image_reference(reference)
    version = shown.get("version")
    shown["exactVersion"] = host_os_version() if version in (None, wire_defaults.IMAGE_VERSION) else version
    return {"imageReference": shown}


@functools.cache
def host_os_version() -> str:
    """`<os id>-<version id>` of the machine Shoal runs on (e.g. `ubuntu-22.04`), read once."""
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        return "unknown"
    return f"{release.get('ID', 'linux')}-{release.get('VERSION_ID', 'unknown')}"


def _task_information(base_url: str, running: Any) -> dict[str, Any]:
    return {"taskUrl": f"{base_url}/jobs/{running.job_id}/tasks/{running.id}", "jobId": running.job_id,
            "taskId": running.id, "taskState": running.state,
            "executionInfo": running.execution_info}


def certificate(base_url: str, row: Any) -> dict[str, Any]:
    """A certificate as Azure shows it (recorded: test_batch.pyTestBatchtest_batch_certificates
    [sync].json): the public certificate only; a pfx and its password are never shown."""
    out: dict[str, Any] = {
        "thumbprint": row.thumbprint, "thumbprintAlgorithm": row.thumbprint_algorithm,
        "url": certificate_url(base_url, row.thumbprint_algorithm, row.thumbprint),
        "state": row.state, "stateTransitionTime": clock.iso(row.state_transition_time),
    }
    if row.previous_state:
        out["previousState"] = row.previous_state
        out["previousStateTransitionTime"] = clock.iso(row.previous_state_transition_time)
    out["publicData"] = row.public_data
    if row.delete_error and row.state == "deletefailed":
        out["deleteCertificateError"] = row.delete_error
    return out


def certificate_url(base_url: str, algorithm: str, thumbprint: str) -> str:
    return f"{base_url}/certificates(thumbprintAlgorithm={algorithm},thumbprint={thumbprint})"

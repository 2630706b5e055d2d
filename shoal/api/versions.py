"""The api-versions Shoal serves, and the one table of how each one's wire differs.

`shoal.service` reads and writes one shape: every property any served version defines, each
under its newest name. A request names its version, and the difference is made here, at the edge:

- in a request body, a property the version does not define is refused as Azure's JSON reader
  refuses it (400 InvalidRequestBody naming the property), and a property the version spells
  differently is renamed to the newest spelling before `service/` sees it;
- in an answer, what the version does not define is left out, and renamed properties take the
  version's spelling again.

`CHANGES` is the whole of that knowledge. It was read off the request and response models of the
azure-batch SDK generated for each version (9.0.0 → 2020-03-01.11.0, 10.0.0 → 2020-09-01.12.0,
11.0.0 → 2021-06-01.14.0, 12.0.0 → 2022-01-01.15.0, 13.0.0 → 2022-10-01.16.0, 14.0.0 →
2023-05-01.17.0, 14.1.0 → 2023-11-01.18.0, 14.2.0 → 2024-02-01.19.0, 15.0.0b1 → 2024-07-01.20.0,
15.1.0 → 2025-06-01), which are generated from the Batch OpenAPI documents of those versions, and
checked against recorded answers of the real service (shared/oracle). It lists the properties
Shoal reads or answers with, and the subtrees a client may send that Shoal refuses anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from starlette.requests import Request

from shoal.api.http import read_json as read_json_body
from shoal.errors import BadRequest, BatchError
from shoal.service import request_body
from shoal.service.request_body import UnknownProperty

# Oldest first: the order is what "before" and "from … on" mean below.
VERSIONS = (
    "2020-03-01.11.0", "2020-09-01.12.0", "2021-06-01.14.0", "2022-01-01.15.0", "2022-10-01.16.0",
    "2023-05-01.17.0", "2023-11-01.18.0", "2024-02-01.19.0", "2024-07-01.20.0", "2025-06-01",
)
NEWEST = VERSIONS[-1]
_INDEX = {version: index for index, version in enumerate(VERSIONS)}

# Subjects: request bodies by their `shoal.model.request_schema` name, answers by resource.
POOL_BODIES = ("pool.create", "pool.patch", "pool.updateproperties")
POOL_CREATE = ("pool.create", "pool")
JOB_CREATE = ("job.create", "job")
TASK_CREATE = ("task.create", "task")
SCHEDULE_SUBJECTS = ("jobschedule.create", "jobschedule.patch", "jobschedule.replace", "jobschedule")


@dataclass(frozen=True)
class Change:
    """One property of some subjects that not every version defines.

    `path` is dotted, in the newest spelling; a step into an array applies to each element. The
    property is defined from `since` (None: from the oldest served version) up to, not including,
    `until` (None: still defined). Before `since`, a change with `old` defines the property under
    that name instead, at the same place; `unwrap` says that before `since` the answer was the
    object at `path` alone, without the envelope around it.
    """

    path: str
    subjects: tuple[str, ...]
    since: str | None = None
    until: str | None = None
    old: str | None = None
    unwrap: bool = False

    def defined_at(self, version: str) -> bool:
        index = _INDEX[version]
        return (self.since is None or index >= _INDEX[self.since]) and (
            self.until is None or index < _INDEX[self.until])


V12, V14, V15, V16, V17, V18, V19, V20, V2025 = VERSIONS[1:]

CHANGES: tuple[Change, ...] = (
    # 2020-09-01.12.0: task slots.
    Change("taskSlotsPerNode", POOL_CREATE, since=V12, old="maxTasksPerNode"),
    Change("requiredSlots", TASK_CREATE, since=V12),
    Change("jobManagerTask.requiredSlots", JOB_CREATE, since=V12),
    Change("runningTaskSlotsCount", ("node",), since=V12),
    Change("taskSlotCounts", ("taskcounts",), since=V12),
    Change("taskCounts", ("taskcounts",), since=V12, unwrap=True),
    # 2021-06-01.14.0: managed identities, VM extensions, OS disks, parallel-task limits.
    Change("maxParallelTasks", ("job.create", "job.patch", "job"), since=V14),
    Change("jobSpecification.maxParallelTasks", SCHEDULE_SUBJECTS, since=V14),
    Change("identity", ("pool",), since=V14),
    Change("virtualMachineConfiguration.extensions", POOL_CREATE, since=V14),
    Change("virtualMachineConfiguration.nodePlacementConfiguration", POOL_CREATE, since=V14),
    Change("virtualMachineConfiguration.osDisk", POOL_CREATE, since=V14),
    Change("virtualMachineConfiguration.imageReference.exactVersion", ("pool",), since=V14),
    Change("virtualMachineConfiguration.containerConfiguration.containerRegistries.identityReference",
           POOL_CREATE, since=V14),
    Change("mountConfiguration.azureBlobFileSystemConfiguration.identityReference", POOL_CREATE, since=V14),
    Change("startTask.resourceFiles.identityReference", (*POOL_BODIES, "pool", "node"), since=V14),
    Change("startTask.containerSettings.registry.identityReference", (*POOL_BODIES, "pool", "node"), since=V14),
    Change("resourceFiles.identityReference", TASK_CREATE, since=V14),
    Change("containerSettings.registry.identityReference", TASK_CREATE, since=V14),
    Change("multiInstanceSettings.commonResourceFiles.identityReference", TASK_CREATE, since=V14),
    Change("outputFiles.destination.container.identityReference", TASK_CREATE, since=V14),
    Change("virtualMachineInfo", ("node",), since=V14),
    # 2022-01-01.15.0: task preemption; PUT job learns maxParallelTasks; upload headers.
    Change("allowTaskPreemption", ("job.create", "job.patch", "job.replace", "job"), since=V15),
    Change("jobSpecification.allowTaskPreemption", SCHEDULE_SUBJECTS, since=V15),
    Change("maxParallelTasks", ("job.replace",), since=V15),
    Change("outputFiles.destination.container.uploadHeaders", TASK_CREATE, since=V15),
    # 2022-10-01.16.0: node communication modes.
    Change("targetNodeCommunicationMode", (*POOL_BODIES, "pool"), since=V16),
    Change("currentNodeCommunicationMode", ("pool",), since=V16),
    # 2023-05-01.17.0: accelerated networking, automatic extension upgrades.
    Change("networkConfiguration.enableAcceleratedNetworking", POOL_CREATE, since=V17),
    Change("virtualMachineConfiguration.extensions.enableAutomaticUpgrade", POOL_CREATE, since=V17),
    # 2023-11-01.18.0: resource tags, trusted launch, managed OS disks.
    Change("resourceTags", POOL_CREATE, since=V18),
    Change("virtualMachineConfiguration.securityProfile", POOL_CREATE, since=V18),
    Change("virtualMachineConfiguration.serviceArtifactReference", POOL_CREATE, since=V18),
    Change("virtualMachineConfiguration.osDisk.caching", POOL_CREATE, since=V18),
    Change("virtualMachineConfiguration.osDisk.diskSizeGB", POOL_CREATE, since=V18),
    Change("virtualMachineConfiguration.osDisk.managedDisk", POOL_CREATE, since=V18),
    Change("virtualMachineConfiguration.osDisk.writeAcceleratorEnabled", POOL_CREATE, since=V18),
    Change("virtualMachineInfo.scaleSetVmResourceId", ("node",), since=V18),
    # 2024-02-01.19.0: OS upgrade policies.
    Change("upgradePolicy", POOL_CREATE, since=V19),
    Change("dedicated.upgradingOS", ("nodecounts",), since=V19),
    Change("lowPriority.upgradingOS", ("nodecounts",), since=V19),
    # 2024-07-01.20.0: certificates, cloud services and application licenses are gone.
    Change("certificateReferences", (*POOL_BODIES, "pool", "node"), until=V20),
    Change("poolInfo.autoPoolSpecification.pool.certificateReferences",
           ("job.create", "job.patch", "job.replace", "job"), until=V20),
    Change("jobSpecification.poolInfo.autoPoolSpecification.pool.certificateReferences", SCHEDULE_SUBJECTS,
           until=V20),
    Change("cloudServiceConfiguration", POOL_CREATE, until=V20),
    Change("applicationLicenses", POOL_CREATE, until=V20),
    # 2025-06-01: PATCH changes most of an empty pool; node deallocation; IPv6.
    *(Change(name, ("pool.patch",), since=V2025) for name in (
        "displayName", "vmSize", "taskSlotsPerNode", "taskSchedulingPolicy", "networkConfiguration",
        "userAccounts", "mountConfiguration", "upgradePolicy", "enableInterNodeCommunication",
        "virtualMachineConfiguration")),
    Change("networkConfiguration", ("job.patch",), since=V2025),
    Change("ipv6Address", ("node",), since=V2025),
    Change("dedicated.deallocated", ("nodecounts",), since=V2025),
    Change("dedicated.deallocating", ("nodecounts",), since=V2025),
    Change("lowPriority.deallocated", ("nodecounts",), since=V2025),
    Change("lowPriority.deallocating", ("nodecounts",), since=V2025),
)

# The request bodies whose elements are other bodies (addtaskcollection's `value`).
_ELEMENT_BODIES = {"task.collection": ("value", "task.create")}


def check_version(version: str | None) -> str:
    """The request's api-version, or Azure's error for a missing or unknown one."""
    if version is None:
        raise BadRequest("The api-version query parameter is required.", code="MissingRequiredQueryParameter",
                         values={"QueryParameterName": "api-version"})
    if version not in _INDEX:
        raise BadRequest("The specified api-version is not supported.",
                         code="InvalidApiVersion" if version else "MissingRequiredQueryParameter",
                         values={"QueryParameterName": "api-version", "QueryParameterValue": version})
    return version


def of(request: Request) -> str:
    """The api-version the request was accepted at (set by the `Api.batch` wrapper)."""
    return getattr(request.state, "api_version", NEWEST)


def require(request: Request, since: str) -> None:
    """An operation the request's api-version does not have is a path Batch does not serve."""
    if _INDEX[of(request)] < _INDEX[since]:
        raise BatchError("The requested URI does not represent any resource on the server.", code="InvalidUri",
                         status=404, values={"RequestUri": request.url.path})


def require_before(request: Request, until: str) -> None:
    """An operation later api-versions dropped (certificates, from 2024-07-01.20.0) is, at those
    versions, a path Batch does not serve."""
    if _INDEX[of(request)] >= _INDEX[until]:
        raise BatchError("The requested URI does not represent any resource on the server.", code="InvalidUri",
                         status=404, values={"RequestUri": request.url.path})


# Until 2024-07-01.20.0 a node could be reimaged only in a pool of cloudServiceConfiguration
# (the 2024-02-01.19.0 OpenAPI document says so, and Azure answered 409 OperationNotValidOnNode for
# a virtual-machine pool at 2023-05-01.17.0: test_batch.pyTestBatchtest_batch_compute_nodes
# [sync].json #009). From then on there are no cloud-service pools, and the operation stays.
REIMAGE_OF_VIRTUAL_MACHINE_POOLS_SINCE = V20


def reimages_virtual_machine_pools(request: Request) -> bool:
    return _INDEX[of(request)] >= _INDEX[REIMAGE_OF_VIRTUAL_MACHINE_POOLS_SINCE]


@cache
def _changes(subject: str, version: str) -> tuple[list[Change], list[Change]]:
    """(undefined at `version`, renamed at `version`) for one subject."""
    undefined, renamed = [], []
    for change in CHANGES:
        if subject not in change.subjects or change.defined_at(version):
            continue
        if change.old is not None or change.unwrap:
            if change.until is None or _INDEX[version] < _INDEX[change.until]:
                renamed.append(change)
                continue
        undefined.append(change)
    return undefined, renamed


def _holders(value: Any, parts: list[str], where: str) -> Iterator[tuple[dict[str, Any], str]]:
    """The objects holding the last step of `parts` within `value`, with their error paths;
    a step into an array goes into each element."""
    stack: list[tuple[Any, int, str]] = [(value, 0, where)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, list):
            stack.extend((element, depth, f"{path}[{index}]") for index, element in enumerate(item))
        elif isinstance(item, dict):
            if depth == len(parts) - 1:
                yield item, path
            elif parts[depth] in item:
                name = parts[depth]
                stack.append((item[name], depth + 1, f"{path}.{name}" if path else name))


def accept(version: str, body_name: str, body: Any) -> Any:
    """A request body as `service/` reads it: refused if it names a property `version` does not
    define, and with the version's spellings renamed to the newest."""
    request_body.fold_names(body, body_name)
    if body_name in _ELEMENT_BODIES and isinstance(body, dict):
        key, element = _ELEMENT_BODIES[body_name]
        items = body.get(key)
        if isinstance(items, list):
            for index, item in enumerate(items):
                _accept(version, element, item, f"{key}[{index}]")
        return body
    _accept(version, body_name, body, "")
    return body


def _accept(version: str, body_name: str, body: Any, where: str) -> None:
    undefined, renamed = _changes(body_name, version)
    label = body_name.replace(".", " ")
    for change in undefined:
        *_, name = change.path.split(".")
        for holder, path in _holders(body, change.path.split("."), where):
            if holder.get(name) is not None:
                raise UnknownProperty(f"{path}.{name}" if path else name, name, label)
    for change in renamed:
        if change.old is None:  # an answer's envelope: nothing a body holds
            continue
        *_, name = change.path.split(".")
        for holder, path in _holders(body, change.path.split("."), where):
            if holder.get(name) is not None:  # the newest spelling is not this version's
                raise UnknownProperty(f"{path}.{name}" if path else name, name, label)
            if change.old in holder:
                holder[name] = holder.pop(change.old)


def render(version: str, subject: str, item: dict[str, Any]) -> dict[str, Any]:
    """An answer as `version` writes it: without what it does not define, in its spellings.
    `item` is not changed (it may be shared); a copy is made only where something differs."""
    undefined, renamed = _changes(subject, version)
    if not undefined and not renamed:
        return item
    out = _copy_along(item, [change.path for change in (*undefined, *renamed)])
    for change in undefined:
        *_, name = change.path.split(".")
        for holder, _path in _holders(out, change.path.split("."), ""):
            holder.pop(name, None)
    for change in renamed:
        *_, name = change.path.split(".")
        if change.unwrap:
            inner = out.get(change.path)
            out = dict(inner) if isinstance(inner, dict) else {}
            continue
        for holder, _path in _holders(out, change.path.split("."), ""):
            if name in holder:
                holder[change.old] = holder.pop(name)  # type: ignore[index]
    return out


def _copy_along(item: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """A copy of `item` in which every object and array on the way to `paths` is new."""
    out = dict(item)
    for path in paths:
        parts = path.split(".")
        stack: list[tuple[Any, int]] = [(out, 0)]
        while stack:
            holder, depth = stack.pop()
            if depth >= len(parts) - 1 or not isinstance(holder, dict):
                continue
            child = holder.get(parts[depth])
            if isinstance(child, dict):
                holder[parts[depth]] = child = dict(child)
                stack.append((child, depth + 1))
            elif isinstance(child, list):
                holder[parts[depth]] = child = [dict(e) if isinstance(e, dict) else e for e in child]
                stack.extend((element, depth + 1) for element in child)
    return out


def rendered(request: Request, subject: str, item: dict[str, Any]) -> dict[str, Any]:
    return render(of(request), subject, item)


async def read_json(request: Request, body_name: str, *, optional: bool = False) -> tuple[Any, int]:
    """A Batch request body (see `shoal.api.http.read_json`) as `service/` reads it at the
    request's api-version."""
    body, size = await read_json_body(request, optional=optional)
    return accept(of(request), body_name, body), size


def served_differences(version: str) -> dict[str, dict[str, list[str]]]:
    """Per subject, what `version` does not define and what it spells otherwise (for the surface
    test and the docs)."""
    out: dict[str, dict[str, list[str]]] = {}
    subjects = sorted({subject for change in CHANGES for subject in change.subjects})
    for subject in subjects:
        undefined, renamed = _changes(subject, version)
        if undefined or renamed:
            out[subject] = {"undefined": sorted(c.path for c in undefined),
                            "renamed": sorted(f"{c.path}<-{c.old or '(unwrapped)'}" for c in renamed)}
    return out

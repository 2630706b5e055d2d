"""What Batch fills in on the wire for what a client left out, and the empty values it leaves out.

Azure answers with the defaults it applied (a task without a `userIdentity` shows the pool-scope,
non-admin auto-user it runs as) and omits optional collections that hold nothing (a pool without
metadata has no `metadata` property, not `[]`). The rules here come from recorded Azure traffic
(see tests/compat/test_wire_shape.py) and are shared by the renderers in `shoal/api/render.py`.
"""

from __future__ import annotations

import copy
from typing import Any

AUTO_USER_SCOPE = "pool"
AUTO_USER_ELEVATION = "nonadmin"
START_TASK_MAX_RETRIES = 0
START_TASK_WAIT_FOR_SUCCESS = True
IMAGE_VERSION = "latest"


def user_identity(identity: Any) -> dict[str, Any]:
    """The identity a task or start task runs as, as Batch shows it: a named user as given, else
    the auto-user with its scope and elevation filled in (pool scope, non-admin by default)."""
    if isinstance(identity, dict) and identity.get("username") is not None:
        return {"username": identity["username"]}
    auto = identity.get("autoUser") if isinstance(identity, dict) else None
    auto = auto if isinstance(auto, dict) else {}
    return {"autoUser": {"scope": auto.get("scope") or AUTO_USER_SCOPE,
                         "elevationLevel": auto.get("elevationLevel") or AUTO_USER_ELEVATION}}


def start_task(spec: dict[str, Any]) -> dict[str, Any]:
    """A pool's start task with the defaults Batch shows (and Shoal's agents apply)."""
    out = copy.deepcopy(spec)
    out["userIdentity"] = user_identity(spec.get("userIdentity"))
    out.setdefault("maxTaskRetryCount", START_TASK_MAX_RETRIES)
    out.setdefault("waitForSuccess", START_TASK_WAIT_FOR_SUCCESS)
    return out


def image_reference(reference: dict[str, Any]) -> dict[str, Any]:
    """A marketplace image reference as Batch echoes it: `version` defaults to `latest`."""
    out = copy.deepcopy(reference)
    if out.get("version") is None and "virtualMachineImageId" not in out:
        out["version"] = IMAGE_VERSION
    return out


def drop_empty(out: dict[str, Any], *names: str) -> None:
    """Remove optional collections that hold nothing: Azure omits them rather than send `[]`."""
    for name in names:
        if name in out and out[name] in (None, [], {}):
            del out[name]


def auto_pool_specification(spec: dict[str, Any]) -> dict[str, Any]:
    """A job's autoPoolSpecification with the defaults Azure shows for it and its pool
    (recorded: test_batch.pyTestBatchtest_batch_jobs[sync].json, GET of an auto-pool job)."""
    out = copy.deepcopy(spec)
    out.setdefault("keepAlive", False)
    pool = out.get("pool")
    if isinstance(pool, dict):
        pool.setdefault("taskSlotsPerNode", 1)
        policy = pool.setdefault("taskSchedulingPolicy", {})
        if isinstance(policy, dict):
            policy.setdefault("nodeFillType", "Spread")
            policy.setdefault("jobDefaultOrder", "none")
        pool.setdefault("resizeTimeout", "PT15M")
        pool.setdefault("targetDedicatedNodes", 0)
        pool.setdefault("targetLowPriorityNodes", 0)
        pool.setdefault("enableAutoScale", False)
        pool.setdefault("enableInterNodeCommunication", False)
        if isinstance(pool.get("startTask"), dict):
            pool["startTask"] = start_task(pool["startTask"])
    return out

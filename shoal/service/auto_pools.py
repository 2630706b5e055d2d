"""Auto pools (semantics §3.8): a pool Batch creates for a job, or for a job schedule, from the
job's `poolInfo.autoPoolSpecification`, and deletes when that lifetime ends unless `keepAlive`.

The pool specification is validated exactly as a pool add is (shoal.service.pools), when the
job or schedule is added, so a pool Batch would refuse is refused then, not when it would run.
Its id is the prefix and a GUID in upper case, as Azure names auto pools (recorded:
test_batch.pyTestBatchtest_batch_jobs[sync].json, executionInfo.poolId of an auto-pool job).
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from sqlalchemy import Connection, select

from shoal.errors import BadRequest, Conflict, InvalidProperty, MissingProperty
from shoal.model.states import JobState, PoolState
from shoal.service import pools as pool_service
from shoal.service import request_body
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import pools

MAX_PREFIX = 20
LIFETIMES = ("job", "jobschedule")
_SPEC = "poolInfo.autoPoolSpecification"
# The id parse_create checks the pool specification under; the real id is made at creation.
_PLACEHOLDER_ID = "autopool"


def parse(pool_info: dict[str, Any]) -> dict[str, Any]:
    """Validate `poolInfo` holding an autoPoolSpecification into what `create_in` needs."""
    if pool_info.get("poolId") is not None:
        raise InvalidProperty("poolInfo", "poolId", "Specify either poolId or autoPoolSpecification, not both.")
    spec = v.obj(pool_info, "autoPoolSpecification", required=True, path=_SPEC)
    assert spec is not None
    prefix = v.string(spec, "autoPoolIdPrefix", max_len=MAX_PREFIX, path=f"{_SPEC}.autoPoolIdPrefix")
    if prefix is not None and not v.ID_PATTERN.fullmatch(prefix):
        raise InvalidProperty(f"{_SPEC}.autoPoolIdPrefix", prefix,
                              "The prefix can contain any combination of alphanumeric characters including "
                              "hyphens and underscores.")
    if spec.get("poolLifetimeOption") is None:
        raise MissingProperty(f"{_SPEC}.poolLifetimeOption")
    lifetime = v.choice(spec, "poolLifetimeOption", LIFETIMES, path=f"{_SPEC}.poolLifetimeOption")
    spec["poolLifetimeOption"] = lifetime
    keep_alive = v.boolean(spec, "keepAlive", default=False, path=f"{_SPEC}.keepAlive")
    pool_body = v.obj(spec, "pool", required=True, path=f"{_SPEC}.pool")
    assert pool_body is not None
    if "id" in pool_body:
        raise InvalidProperty(f"{_SPEC}.pool.id", "…", "An auto pool's id is assigned by the service.")
    try:
        pool = pool_service.parse_create({**pool_body, "id": _PLACEHOLDER_ID})
    except BadRequest as exc:
        raise _under_spec(exc) from None
    return {"prefix": prefix or "", "lifetime": lifetime, "keep_alive": bool(keep_alive), "pool": pool}


def _under_spec(exc: BadRequest) -> BadRequest:
    """The pool's error, naming the property where the client wrote it."""
    name = exc.values.get("PropertyName")
    if name:
        exc.values["PropertyName"] = f"{_SPEC}.pool.{name}"
    return exc


def new_pool_id(prefix: str) -> str:
    guid = str(uuid.uuid4()).upper()
    return f"{prefix}_{guid}" if prefix else guid


def create_in(ctx: Context, conn: Connection, auto_pool: dict[str, Any]) -> str:
    """Create the auto pool within `conn`; returns its id."""
    pool_id = new_pool_id(auto_pool["prefix"])
    pool_service.insert_in(ctx, conn, {**auto_pool["pool"], "id": pool_id})
    return pool_id


def delete_in(ctx: Context, conn: Connection, pool_id: str | None) -> None:
    """Delete an auto pool whose lifetime ended (a pool already going or gone is left alone)."""
    if not pool_id:
        return
    row = conn.execute(select(pools).where(pools.c.account == ctx.account, pools.c.key == pool_id.lower())).first()
    if row is not None and row.state != PoolState.DELETING:
        pool_service.delete_in(conn, row)
        ctx.signals.wake_provider()


def spec_of(job_spec: dict[str, Any]) -> dict[str, Any] | None:
    info = job_spec.get("poolInfo")
    spec = info.get("autoPoolSpecification") if isinstance(info, dict) else None
    return spec if isinstance(spec, dict) else None


def job_ended(ctx: Context, conn: Connection, job_row: Any) -> None:
    """A job completed or is being deleted: its pool of lifetime `job` goes, unless kept alive."""
    spec = spec_of(job_row.spec)
    if spec is None or spec.get("poolLifetimeOption") != "job" or spec.get("keepAlive"):
        return
    delete_in(ctx, conn, (job_row.execution_info or {}).get("poolId"))


def given_in(body: dict[str, Any]) -> dict[str, Any] | None:
    """A job update's poolInfo, when it names an auto pool."""
    info = body.get("poolInfo")
    return info if isinstance(info, dict) and info.get("autoPoolSpecification") is not None else None


def _canonical(pool_info: dict[str, Any]) -> dict[str, Any]:
    """What an auto pool specification asks for, whatever defaults were spelled out (a GET shows
    them all: `keepAlive: false`, `enableAutoScale: false`, image version `latest`, …)."""
    parsed = parse(copy.deepcopy(pool_info))
    pool = dict(parsed["pool"])
    pool.pop("id", None)
    spec = {name: value for name, value in pool.pop("spec").items() if value not in (None, False, [], {})}
    image = (spec.get("virtualMachineConfiguration") or {}).get("imageReference")
    if isinstance(image, dict):
        image = {k.lower(): str(val).lower() for k, val in image.items()}
        image.setdefault("version", "latest")
        spec["virtualMachineConfiguration"] = {**spec["virtualMachineConfiguration"], "imageReference": image}
    return {**parsed, "pool": {**pool, "spec": spec}}


def check_unchanged(job_row: Any, pool_info: dict[str, Any]) -> None:
    """A job update may repeat its auto pool specification; changing it (or giving one to a job
    of an existing pool) is refused: Shoal does not move a job to another pool."""
    stored = job_row.spec.get("poolInfo")
    stored_spec = spec_of(job_row.spec)
    if stored_spec is None or not isinstance(stored, dict):
        raise request_body.not_supported(_SPEC, "A job's existing pool cannot be replaced by an auto pool.")
    if _canonical(pool_info) != _canonical(stored):
        if job_row.state != JobState.DISABLED:
            raise Conflict("The pool of a job can only be changed while the job is disabled.",
                           code="JobNotDisabled")
        raise request_body.not_supported(_SPEC, "Shoal does not change the auto pool of an existing job.")

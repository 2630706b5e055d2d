"""`multiInstanceSettings` of a task add (semantics §3.5): checked as Batch checks it.

A multi-instance task runs on `numberOfInstances` nodes at once, one instance a node; each
instance takes one slot, so `requiredSlots` must be 1. Its pool must allow inter-node
communication for more than one instance. That the pool has enough nodes is not checked: the
task waits (active) until it has them, as on Batch.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from shoal.errors import BatchError, Conflict, InvalidProperty
from shoal.service import task_files
from shoal.service import validation as v
from shoal.store.schema import pools

SETTINGS = "multiInstanceSettings"
# The most nodes a pool with inter-node communication may have on Batch (semantics §9, Batch-
# service mode): a task asking for more could never run, so it is refused at add.
MAX_INSTANCES = 100


def parse(body: dict[str, Any], required_slots: int | None) -> int:
    """numberOfInstances of a valid `multiInstanceSettings`; 0 when the task has none."""
    settings = v.obj(body, SETTINGS)
    if settings is None:
        return 0
    instances = v.integer(settings, "numberOfInstances", default=1, minimum=1, maximum=MAX_INSTANCES,
                          path=f"{SETTINGS}.numberOfInstances")
    assert instances is not None
    v.command_line(settings, "coordinationCommandLine", path=f"{SETTINGS}.coordinationCommandLine")
    task_files.resource_files(settings, "commonResourceFiles", path=f"{SETTINGS}.commonResourceFiles")
    if required_slots not in (None, 1):
        raise InvalidProperty("requiredSlots", required_slots, "A multi-instance task must have requiredSlots 1.")
    return instances


def pool_spec_of(conn: Connection, job: Any, parsed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The spec of the job's pool when one of the tasks needs it checked (None otherwise, and
    when the pool does not exist yet: an auto pool still to come, whose task waits)."""
    if not any(task.get("instances", 0) > 1 for task in parsed):
        return None
    return conn.execute(select(pools.c.spec).where(pools.c.account == job.account,
                                                   pools.c.key == job.pool_key)).scalar()


def refusal_by_pool(job: Any, instances: int, pool_spec: dict[str, Any] | None) -> BatchError | None:
    """More than one instance needs a pool with enableInterNodeCommunication."""
    if instances <= 1 or pool_spec is None or pool_spec.get("enableInterNodeCommunication"):
        return None
    return Conflict(f"The task needs {instances} nodes that communicate with each other, but its job's pool "
                    f"does not enable inter-node communication (enableInterNodeCommunication).",
                    code="InvalidPropertyValue",
                    values={"PropertyName": f"{SETTINGS}.numberOfInstances", "PropertyValue": str(instances)})

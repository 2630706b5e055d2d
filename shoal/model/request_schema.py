"""The shape of every request body Shoal reads, as both api-versions it serves define it.

`request_bodies.json` (beside this file) maps each body to a tree of the properties a client may
send: `{"p": {name: tree}}` for an object, `{"a": tree}` for an array, and a leaf name
(`string`, `integer`, `number`, `boolean`, `object`, `any`) for the rest. It is the union of
the 2024-02-01.19.0 OpenAPI definition and the writable fields of azure-batch 15.1's models
(api-version 2025-06-01, whose OpenAPI document is not kept in the repository), so a property
either version defines is known and anything else is refused as Batch refuses it.

Regenerate after changing the served api-versions:
    python -m shoal.model.request_schema /path/to/batch-data-plane.openapi.json
(needs azure-batch 15.x importable).
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("request_bodies.json")

# Body name -> (OpenAPI 2024-02-01.19.0 definition, azure-batch 15.1 model).
BODIES: dict[str, tuple[str | None, str | None]] = {
    "pool.create": ("PoolAddParameter", "BatchPoolCreateOptions"),
    "pool.patch": ("PoolPatchParameter", "BatchPoolUpdateOptions"),
    "pool.updateproperties": ("PoolUpdatePropertiesParameter", "BatchPoolReplaceOptions"),
    "pool.resize": ("PoolResizeParameter", "BatchPoolResizeOptions"),
    "pool.removenodes": ("NodeRemoveParameter", "BatchNodeRemoveOptions"),
    "job.create": ("JobAddParameter", "BatchJobCreateOptions"),
    "job.patch": ("JobPatchParameter", "BatchJobUpdateOptions"),
    "job.replace": ("JobUpdateParameter", "BatchJob"),
    "job.disable": ("JobDisableParameter", "BatchJobDisableOptions"),
    "job.terminate": ("JobTerminateParameter", "_models.BatchJobTerminateOptions"),
    "jobschedule.create": ("JobScheduleAddParameter", "BatchJobScheduleCreateOptions"),
    "jobschedule.patch": ("JobSchedulePatchParameter", "BatchJobScheduleUpdateOptions"),
    "jobschedule.replace": ("JobScheduleUpdateParameter", "BatchJobSchedule"),
    "task.create": ("TaskAddParameter", "BatchTaskCreateOptions"),
    "task.collection": ("TaskAddCollectionParameter", "BatchTaskGroup"),
    "task.update": ("TaskUpdateParameter", "BatchTask"),
    # Not read through shoal.service.request_body yet (their routes are elsewhere); listed so they can be.
    "pool.enableautoscale": ("PoolEnableAutoScaleParameter", "BatchPoolEnableAutoScaleOptions"),
    "pool.evaluateautoscale": ("PoolEvaluateAutoScaleParameter", "BatchPoolEvaluateAutoScaleOptions"),
    "node.disablescheduling": ("NodeDisableSchedulingParameter", "BatchNodeDisableSchedulingOptions"),
    "node.reboot": ("NodeRebootParameter", "_models.BatchNodeRebootOptions"),
    "node.reimage": ("NodeReimageParameter", "_models.BatchNodeReimageOptions"),
    "node.adduser": ("ComputeNodeUser", "BatchNodeUserCreateOptions"),
    "node.updateuser": ("NodeUpdateUserParameter", "BatchNodeUserReplaceOptions"),
    "node.uploadbatchservicelogs": ("UploadBatchServiceLogsConfiguration", "UploadBatchServiceLogsOptions"),
    # 2025-06-01 only: no definition in the 2024-02-01 document.
    "node.deallocate": (None, "_models.BatchNodeDeallocateOptions"),
    # Up to 2024-02-01.19.0 only: azure-batch 15.x has no model of it.
    "certificate.create": ("CertificateAddParameter", None),
}

Tree = Any


@cache
def bodies() -> dict[str, Tree]:
    return dict(json.loads(TABLE.read_text()))


def _from_openapi(definitions: dict[str, Any], schema: dict[str, Any], seen: tuple[str, ...]) -> Tree:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:  # recursive definitions do not occur in bodies; stop rather than loop
            return "any"
        return _from_openapi(definitions, definitions[name], (*seen, name))
    kind = schema.get("type")
    if kind == "array":
        return {"a": _from_openapi(definitions, schema.get("items") or {}, seen)}
    props: dict[str, Tree] = {}
    for part in schema.get("allOf") or ():
        merged = _from_openapi(definitions, part, seen)
        if isinstance(merged, dict) and "p" in merged:
            props.update(merged["p"])
    for name, sub in (schema.get("properties") or {}).items():
        if sub.get("readOnly"):
            continue
        props[name] = _from_openapi(definitions, sub, seen)
    if props:
        return {"p": props}
    if kind == "object" or "additionalProperties" in schema:
        return "object"
    if kind in ("string", "integer", "number", "boolean"):
        return kind
    return "any"


def _from_annotation(hint: Any, seen: tuple[type, ...]) -> Tree:
    import datetime
    import enum
    import typing

    from azure.batch._utils.model_base import Model

    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Union:
        trees = [_from_annotation(a, seen) for a in args]
        objects = [t for t in trees if isinstance(t, dict)]
        return objects[0] if objects else trees[0]
    if origin in (list, typing.List):  # noqa: UP006 - older SDKs spell it so
        return {"a": _from_annotation(args[0], seen)}
    if origin in (dict, typing.Dict):  # noqa: UP006
        return "object"
    if isinstance(hint, type):
        if issubclass(hint, Model):
            return _from_model(hint, seen)
        if issubclass(hint, bool):
            return "boolean"
        if issubclass(hint, enum.Enum) or issubclass(hint, str):
            return "string"
        if issubclass(hint, int):
            return "integer"
        if issubclass(hint, float):
            return "number"
        if issubclass(hint, (datetime.datetime, datetime.timedelta)):
            return "string"
    return "any"


def _from_model(cls: type, seen: tuple[type, ...]) -> Tree:
    import typing

    from azure.batch import models
    from azure.batch.models import _enums, _models

    if cls in seen:
        return "any"
    cls()  # the SDK builds its field table on first construction
    hints = typing.get_type_hints(cls, globalns={**vars(_models), "_models": models, "_enums": _enums})
    props: dict[str, Tree] = {}
    for attr, field in cls._attr_to_rest_field.items():  # type: ignore[attr-defined]
        if getattr(field, "_visibility", None) == ["read"]:
            continue
        props[field._rest_name] = _from_annotation(hints.get(attr), (*seen, cls))
    return {"p": props}


def union(left: Tree, right: Tree) -> Tree:
    if isinstance(left, dict) and isinstance(right, dict):
        if "p" in left and "p" in right:
            names = list(left["p"]) + [n for n in right["p"] if n not in left["p"]]
            return {"p": {n: union(left["p"].get(n), right["p"].get(n)) if n in left["p"] and n in right["p"]
                          else left["p"].get(n, right["p"].get(n)) for n in names}}
        if "a" in left and "a" in right:
            return {"a": union(left["a"], right["a"])}
    if isinstance(left, dict):
        return left
    if isinstance(right, dict):
        return right
    return left if left not in (None, "any") else right


def generate(openapi_path: str) -> dict[str, Tree]:
    from azure.batch import models

    definitions = json.loads(Path(openapi_path).read_text())["definitions"]
    out = {}
    for body, (definition, model_name) in BODIES.items():
        if model_name is None:
            assert definition is not None
            out[body] = _from_openapi(definitions, definitions[definition], (definition,))
            continue
        model = models
        for part in model_name.split("."):
            model = getattr(model, part)
        new = _from_model(model, ())  # type: ignore[arg-type]
        if definition is None:
            out[body] = new
            continue
        old = _from_openapi(definitions, definitions[definition], (definition,))
        out[body] = union(old, new)
    return out


if __name__ == "__main__":
    TABLE.write_text(json.dumps(generate(sys.argv[1]), indent=1, sort_keys=True) + "\n")

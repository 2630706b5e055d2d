"""The REST operations Shoal serves, locked against the Azure Batch OpenAPI document, and what
each api-version serves of them.

Adding a route means moving it out of NOT_YET_SERVED; serving something the spec does not
define fails here. Every api-version serves the same operations; how their bodies and answers
differ per version is locked in data/api-versions.json (shoal/api/versions.py CHANGES). After a
deliberate change to that table, regenerate the file:
    python -c "import json; from shoal.api.versions import VERSIONS, served_differences as d; \
print(json.dumps({v: d(v) for v in VERSIONS}, indent=1))" > tests/unit/data/api-versions.json
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shoal.api import identity
from shoal.api.agent import AgentHub
from shoal.api.app import Api, build_app
from shoal.api.versions import VERSIONS, served_differences
from shoal.service.context import Context

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "batch-data-plane.openapi.json"
# The spec's operations, kept beside the test so it runs without shared/ (a clone on its own).
OPERATIONS = Path(__file__).with_name("data") / "batch-operations.json"
# Per api-version: per body and resource, the properties it does not define and those it spells
# otherwise.
BY_VERSION = Path(__file__).with_name("data") / "api-versions.json"
# What Azure Batch serves since 2020, oldest first (its REST API reference, "Versions").
SERVED_VERSIONS = ("2020-03-01.11.0", "2020-09-01.12.0", "2021-06-01.14.0", "2022-01-01.15.0", "2022-10-01.16.0",
                   "2023-05-01.17.0", "2023-11-01.18.0", "2024-02-01.19.0", "2024-07-01.20.0", "2025-06-01")

NOT_YET_SERVED = {
    ("GET", "/pools/{}/nodes/{}/extensions"), ("GET", "/pools/{}/nodes/{}/extensions/{}"),
    ("GET", "/pools/{}/nodes/{}/rdp"),
}


def _normalise(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path.replace("{file_path:path}", "{}"))


def spec_operations() -> set[tuple[str, str]]:
    return {(method, path) for method, path in json.loads(OPERATIONS.read_text())["operations"]}


def test_the_kept_operation_list_matches_the_spec():
    if not SPEC.exists():
        pytest.skip(f"{SPEC} is not beside this clone (CI lays shared/ there)")
    doc = json.loads(SPEC.read_text())
    assert spec_operations() == {(method.upper(), _normalise(path)) for path, item in doc["paths"].items()
                                 for method in item if method in ("get", "post", "put", "patch", "delete", "head")}


def served_operations() -> set[tuple[str, str]]:
    app = build_app(Api(Context(engine=None, account="x"), {}), AgentHub(), 1.0)  # type: ignore[arg-type]
    out = set()
    for route in app.routes:
        # The agent protocol, the /shoal/ extensions, health and metrics, the dashboard (/ui) and the
        # token authority are not Batch operations.
        # /subscriptions/: the management API (ARM's, not the Batch spec's: docs/management-api.md).
        if route.path.startswith(("/agent/", "/shoal/", "/health", "/ready", "/metrics", "/ui", "/subscriptions/")) \
                or route.path in identity.AUTHORITY_PATHS:
            continue
        for method in route.methods or ():
            # Starlette adds HEAD to every GET route; Batch defines HEAD only where the spec says.
            if method == "HEAD" and ("HEAD", _normalise(route.path)) not in spec_operations():
                continue
            out.add((method, _normalise(route.path)))
    return out


# Operations of api-version 2025-06-01, which the 2024-02-01 document here does not hold
# (wire.md lists them); served from that version on only.
NEWER_THAN_THE_SPEC = {("POST", "/pools/{}/nodes/{}/deallocate"), ("POST", "/pools/{}/nodes/{}/start")}
# Operations api-version 2023-05-01.17.0 took away, which the document here no longer holds
# (the recordings show them); served before that version only (shoal/api/lifetime.py).
OLDER_THAN_THE_SPEC = {("GET", "/lifetimepoolstats"), ("GET", "/lifetimejobstats")}


def test_every_served_operation_is_in_the_spec():
    assert served_operations() - spec_operations() == NEWER_THAN_THE_SPEC | OLDER_THAN_THE_SPEC


def test_not_yet_served_is_exactly_what_is_missing():
    assert spec_operations() - served_operations() == NOT_YET_SERVED


def test_every_api_version_since_2020_is_served():
    assert VERSIONS == SERVED_VERSIONS


def test_each_api_version_lists_what_it_does_not_define():
    locked = json.loads(BY_VERSION.read_text())
    assert list(locked) == list(VERSIONS)
    assert {version: served_differences(version) for version in VERSIONS} == locked
    # The newest version defines everything Shoal reads and writes but what Azure took away.
    newest = locked[VERSIONS[-1]]
    assert {path for diff in newest.values() for path in diff["undefined"]} == {
        "certificateReferences", "cloudServiceConfiguration", "applicationLicenses",
        "poolInfo.autoPoolSpecification.pool.certificateReferences",
        "jobSpecification.poolInfo.autoPoolSpecification.pool.certificateReferences"}
    assert not any(diff["renamed"] for diff in newest.values())

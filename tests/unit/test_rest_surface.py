"""The REST operations Shoal serves, locked against the Azure Batch OpenAPI document.

Adding a route means moving it out of NOT_YET_SERVED; serving something the spec does not
define fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shoal.api.agent import AgentHub
from shoal.api.app import Api, build_app
from shoal.service.context import Context

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "batch-data-plane.openapi.json"
# The spec's operations, kept beside the test so it runs without shared/ (a clone on its own).
OPERATIONS = Path(__file__).with_name("data") / "batch-operations.json"

NOT_YET_SERVED = {
    ("GET", "/applications"), ("GET", "/applications/{}"),
    ("POST", "/certificates"), ("GET", "/certificates"),
    ("DELETE", "/certificates(thumbprintAlgorithm={},thumbprint={})"),
    ("GET", "/certificates(thumbprintAlgorithm={},thumbprint={})"),
    ("POST", "/certificates(thumbprintAlgorithm={},thumbprint={})/canceldelete"),
    ("GET", "/jobs/{}/jobpreparationandreleasetaskstatus"),
    ("POST", "/jobschedules"), ("GET", "/jobschedules"), ("HEAD", "/jobschedules/{}"),
    ("DELETE", "/jobschedules/{}"), ("GET", "/jobschedules/{}"), ("PATCH", "/jobschedules/{}"),
    ("PUT", "/jobschedules/{}"), ("POST", "/jobschedules/{}/disable"), ("POST", "/jobschedules/{}/enable"),
    ("GET", "/jobschedules/{}/jobs"), ("POST", "/jobschedules/{}/terminate"),
    ("GET", "/pools/{}/nodes/{}/extensions"), ("GET", "/pools/{}/nodes/{}/extensions/{}"),
    ("GET", "/pools/{}/nodes/{}/rdp"),
    ("GET", "/pools/{}/nodes/{}/remoteloginsettings"), ("POST", "/pools/{}/nodes/{}/uploadbatchservicelogs"),
    ("POST", "/pools/{}/nodes/{}/users"), ("DELETE", "/pools/{}/nodes/{}/users/{}"),
    ("PUT", "/pools/{}/nodes/{}/users/{}"), ("GET", "/poolusagemetrics"),
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
        if route.path.startswith(("/agent/", "/shoal/")):
            continue
        for method in route.methods or ():
            # Starlette adds HEAD to every GET route; Batch defines HEAD only where the spec says.
            if method == "HEAD" and ("HEAD", _normalise(route.path)) not in spec_operations():
                continue
            out.add((method, _normalise(route.path)))
    return out


def test_every_served_operation_is_in_the_spec():
    assert served_operations() - spec_operations() == set()


def test_not_yet_served_is_exactly_what_is_missing():
    assert spec_operations() - served_operations() == NOT_YET_SERVED

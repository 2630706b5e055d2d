"""Azure RBAC's evaluation from plain data (service/permissions.py), the operation every route
needs (api/authorization.py), and what each built-in role allows of them."""

from __future__ import annotations

import pytest

from shoal.api import authorization
from shoal.api.agent import AgentHub
from shoal.api.app import Api, build_app
from shoal.errors import InvalidProperty
from shoal.service import roles
from shoal.service.builtin_roles import BUILTIN_ROLES
from shoal.service.context import Context
from shoal.service.permissions import (
    ACTION,
    DATA_ACTION,
    EffectivePermissions,
    Grant,
    Operation,
    effective,
    matches,
    within,
)

B = "Microsoft.Batch/batchAccounts/"
ACCOUNT = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Batch/batchAccounts/shoal"

# pattern, operation, matches?
PATTERNS = [
    ("*", B + "pools/write", True),
    ("*/read", B + "pools/read", True),
    ("*/read", B + "pools/write", False),
    ("Microsoft.Batch/*", B + "jobs/delete", True),
    ("Microsoft.Batch/*/read", B + "jobs/read", True),
    ("microsoft.batch/BATCHACCOUNTS/jobs/*", B + "jobs/write", True),
    (B + "jobs/*", B + "jobSchedules/write", False),
    (B + "job*", B + "jobSchedules/write", True),
    (B + "jobs/read", B + "jobs/read/extra", False),
    (B + "jobs/read", B + "jobs/rea", False),
    ("Microsoft.Authorization/*/Write", "Microsoft.Authorization/roleAssignments/write", True),
    ("Microsoft.Storage/*", B + "pools/read", False),
    ("Microsoft.Batch/batchAccounts/pools/w.ite", B + "pools/write", False),  # `.` is no wildcard
]


@pytest.mark.parametrize(("pattern", "operation", "expected"), PATTERNS)
def test_wildcards_match_as_azure_rbac_does(pattern: str, operation: str, expected: bool) -> None:
    assert matches(pattern, operation) is expected


def test_not_actions_narrow_their_own_role_only() -> None:
    submitter = Grant(data_actions=(B + "jobs/*",), not_data_actions=(B + "jobs/delete",))
    alone = EffectivePermissions((submitter,))
    assert alone.allows(Operation(DATA_ACTION, B + "jobs/write"))
    assert not alone.allows(Operation(DATA_ACTION, B + "jobs/delete"))
    # Another role that grants it is not overruled: notDataActions are no deny.
    deleter = Grant(data_actions=(B + "jobs/delete",))
    assert EffectivePermissions((submitter, deleter)).allows(Operation(DATA_ACTION, B + "jobs/delete"))


def test_actions_and_data_actions_are_separate() -> None:
    grant = EffectivePermissions((Grant(actions=(B + "jobs/*",)),))
    assert not grant.allows(Operation(DATA_ACTION, B + "jobs/read"))
    assert grant.allows(Operation(ACTION, B + "jobs/read"))


def test_batch_catch_alls_read_and_list_keys() -> None:
    reader = EffectivePermissions((Grant(actions=(B + "read",)),))
    assert reader.allows(Operation(DATA_ACTION, B + "jobs/read"))
    assert reader.allows(Operation(ACTION, B + "pools/read"))
    assert not reader.allows(Operation(ACTION, B + "pools/write"))
    keys = EffectivePermissions((Grant(actions=(B + "listKeys/action",)),))
    assert keys.allows(Operation(DATA_ACTION, B + "jobs/delete"))
    # The catch-alls are Batch's: they open no other provider's operations.
    assert not keys.allows(Operation(ACTION, "Microsoft.Authorization/roleAssignments/write"))


def test_scopes_apply_to_themselves_and_beneath() -> None:
    assert within(ACCOUNT, "/subscriptions/s1")
    assert within(ACCOUNT, "/SUBSCRIPTIONS/s1/resourcegroups/RG")
    assert within(ACCOUNT, ACCOUNT + "/")
    assert within(ACCOUNT, "/")
    assert not within(ACCOUNT, "/subscriptions/s")  # a prefix of a name is not a parent
    assert not within(ACCOUNT, "/subscriptions/s2")
    assert not within("/subscriptions/s1", ACCOUNT)
    everything = Grant(actions=("*",))
    assert effective([("/subscriptions/s1", everything)], ACCOUNT).grants
    assert not effective([("/subscriptions/s2", everything), (ACCOUNT + "/x", everything)], ACCOUNT).grants


def test_decisions_are_remembered() -> None:
    permissions = EffectivePermissions((Grant(actions=("*",)),))
    operation = Operation(ACTION, B + "pools/write")
    assert permissions.allows(operation)
    object.__setattr__(permissions, "grants", ())  # a second decision would now say no
    assert permissions.allows(operation)


def _routes() -> list[tuple[str, str]]:
    app = build_app(Api(Context(engine=None, account="x"), {}), AgentHub(), 1.0)  # type: ignore[arg-type]
    out = []
    for route in app.routes:
        path = getattr(route, "path", "")
        if path.startswith("/agent/") or path in ("/health", "/ready", "/metrics", "/ui") or not getattr(
                route, "methods", None):
            continue
        if path.startswith(("/{tenant}", "/common/")):
            continue  # the token authority: unauthenticated, as on Entra
        if path.startswith("/subscriptions/"):
            continue  # the management API: one RBAC action per route (test below)
        out.extend((method, path) for method in sorted(route.methods))
    return out


def test_every_route_names_the_operation_it_needs() -> None:
    routes = _routes()
    assert len(routes) > 70
    unknown = [(method, path) for method, path in routes if authorization.required(method, path) is None]
    assert unknown == []
    from shoal.api import unserved

    for method, _path, name in unserved.OPERATIONS:
        assert authorization.required(method, unserved.template_of(name)) is not None


def test_every_management_route_names_its_one_action() -> None:
    from shoal.api import management

    app = build_app(Api(Context(engine=None, account="x"), {}), AgentHub(), 1.0)  # type: ignore[arg-type]
    served = {(method, route.path) for route in app.routes if getattr(route, "path", "").startswith("/subscriptions/")
              for method in route.methods or () if method != "HEAD"}
    assert served == {(method, path) for path, method, _handler, _action in management.ROUTES}
    assert all(action.startswith(("Microsoft.Batch/batchAccounts/", "Microsoft.Resources/subscriptions/resourceGroups/"))
               for *_rest, action in management.ROUTES)


ROLE = {role.name: role for role in BUILTIN_ROLES}
POOL_WRITE = ("POST", "/pools")
POOL_DELETE = ("DELETE", "/pools/{pool_id}")
POOL_READ = ("GET", "/pools")
NODE_REBOOT = ("POST", "/pools/{pool_id}/nodes/{node_id}/reboot")
JOB_ADD = ("POST", "/jobs")
TASK_ADD = ("POST", "/jobs/{job_id}/tasks")
TASK_DELETE = ("DELETE", "/jobs/{job_id}/tasks/{task_id}")
TASK_READ = ("GET", "/jobs/{job_id}/tasks/{task_id}")
SCHEDULE_ADD = ("POST", "/jobschedules")
CERT_ADD = ("POST", "/certificates")
IMAGES = ("GET", "/supportedimages")
ASSIGN = ("POST", "/shoal/v1/roleassignments")
ASSIGNMENTS = ("GET", "/shoal/v1/roleassignments")
PRINCIPALS = ("POST", "/shoal/v1/principals")
ALL = [POOL_WRITE, POOL_DELETE, POOL_READ, NODE_REBOOT, JOB_ADD, TASK_ADD, TASK_DELETE, TASK_READ, SCHEDULE_ADD,
       CERT_ADD, IMAGES, ASSIGN, ASSIGNMENTS, PRINCIPALS]
# role → the calls it allows (all others refused)
MATRIX = {
    "Owner": set(ALL) - {PRINCIPALS},
    "Contributor": set(ALL) - {PRINCIPALS, ASSIGN},
    "Reader": {POOL_READ, TASK_READ, IMAGES, ASSIGNMENTS},
    "Azure Batch Account Contributor": set(ALL) - {PRINCIPALS, ASSIGN},
    "Azure Batch Account Reader": {POOL_READ, TASK_READ, IMAGES},
    "Azure Batch Data Contributor": set(ALL) - {PRINCIPALS, ASSIGN},
    "Azure Batch Job Submitter": {POOL_READ, JOB_ADD, TASK_ADD, TASK_DELETE, TASK_READ, SCHEDULE_ADD},
}


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_builtin_role_matrix(name: str) -> None:
    role = ROLE[name]
    granted = EffectivePermissions((Grant(role.actions, role.not_actions, role.data_actions, role.not_data_actions),))
    for call in ALL:
        operation = authorization.required(*call)
        assert operation is not None
        allowed = operation is not authorization.SHARED_KEY_ONLY and granted.allows(operation)
        assert allowed is (call in MATRIX[name]), (name, call, operation)


@pytest.mark.parametrize("pattern", [
    "", "Microsoft", "Microsoft.Batch/", "/pools/read", "Microsoft.Batch//read", "Microsoft.Batch/pools/re ad",
    "Microsoft.Batch/pools/\x00", "Microsoft.Batch/../read", "Microsoft..Batch/x", "Micro$oft.Batch/x",
    "Microsoft.Batch/" + "a" * 600, 7, None, ["*"],
])
def test_bad_operation_patterns_are_refused(pattern: object) -> None:
    with pytest.raises(InvalidProperty):
        roles.check_pattern("actions", pattern)


@pytest.mark.parametrize("pattern", ["*", "*/read", "Microsoft.Batch/*", B + "jobs/tasks/read",
                                     "Microsoft.Authorization/*/Write", "Microsoft.Web/sites/config/list/Action"])
def test_good_operation_patterns_pass(pattern: str) -> None:
    assert roles.check_pattern("actions", pattern) == pattern


@pytest.mark.parametrize("scope", ["", "/", "/subscriptions", "/subscriptions/", "/subscriptions/a/resourceGroups",
                                   "/subscriptions/a/b/c", "/subscriptions/..", "/subscriptions/a b",
                                   "/subscriptions/a\x00", "subscriptions/a", ACCOUNT + "/pools/p",
                                   "/subscriptions/a/resourceGroups/b/providers/Microsoft.Storage/batchAccounts/c",
                                   "/subscriptions/" + "a" * 600])
def test_bad_scopes_are_refused(scope: str) -> None:
    with pytest.raises(InvalidProperty):
        roles.scope_parts(scope)

"""Role-based access against a real `shoal up --tls`: service principals signed in with
azure-identity drive the real azure-batch SDK, and what they may do is what their roles say."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.batch import models
from azure.batch.models._models import BatchNodeRebootOptions

from shoal.testing.server import RunningShoal, running_shoal
from tests.acceptance.rest import assert_batch_error, call, verifier
from tests.helpers import error_of, pool_options, wait_tasks_done
from tests.identity import access_token, assign_role, cli, client_with_pool, create_principal, token_client

POOL = "rbacpool"
DENIED = (403, "AuthorizationFailure")
SUBSCRIPTION = "/subscriptions/00000000-0000-0000-0000-000000000000"


@pytest.fixture(scope="module")
def tls_shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningShoal]:
    with running_shoal(tmp_path_factory.mktemp("rbac"), extra_args=["--tls"]) as running:
        yield running


@pytest.fixture(scope="module")
def key_client(tls_shoal: RunningShoal) -> Any:
    return client_with_pool(tls_shoal, POOL)


def _principal(tls_shoal: RunningShoal, role: str | None = None, *extra: str) -> dict[str, Any]:
    made = create_principal(tls_shoal, f"p-{uuid.uuid4().hex[:8]}")
    if role is not None:
        assign_role(tls_shoal, made, role, *extra)
    return made


def _job(job_id: str) -> Any:
    return models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id=POOL))


def test_a_new_principal_holds_no_role_and_is_refused(tls_shoal: RunningShoal) -> None:
    client = token_client(tls_shoal, _principal(tls_shoal))
    assert error_of(lambda: list(client.list_pools())) == DENIED
    body = assert_batch_error(call(tls_shoal, "GET", "/pools", token=access_token(tls_shoal, _principal(tls_shoal))),
                              403, "AuthorizationFailure")
    detail = {v["key"]: v["value"] for v in body["values"]}["AuthorizationErrorDetail"]
    assert "Microsoft.Batch/batchAccounts/pools/read" in detail and "batchAccounts/shoal" in detail


def test_reader_lists_but_cannot_create_a_pool(tls_shoal: RunningShoal, key_client: Any) -> None:
    client = token_client(tls_shoal, _principal(tls_shoal, "Reader"))
    assert POOL in [pool.id for pool in client.list_pools()]
    assert client.get_pool(POOL).id == POOL
    assert error_of(lambda: client.create_pool(pool_options("by-reader", target_dedicated_nodes=0))) == DENIED
    assert error_of(lambda: client.create_job(_job("by-reader"))) == DENIED
    assert "by-reader" not in [pool.id for pool in key_client.list_pools()]


def test_job_submitter_adds_jobs_and_tasks_but_cannot_touch_pools(tls_shoal: RunningShoal, key_client: Any) -> None:
    submitter = _principal(tls_shoal, "Azure Batch Job Submitter")
    client = token_client(tls_shoal, submitter)
    client.create_job(_job("submitted"))
    client.create_tasks("submitted", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true")
                                      for i in range(3)])
    wait_tasks_done(client, "submitted")
    assert {task.id for task in client.list_tasks("submitted")} == {"t0", "t1", "t2"}
    client.delete_task("submitted", "t0")
    assert POOL in [pool.id for pool in client.list_pools()]
    assert error_of(lambda: client.begin_delete_pool(POOL, polling_interval=0.2)) == DENIED
    assert error_of(lambda: client.begin_resize_pool(
        POOL, models.BatchPoolResizeOptions(target_dedicated_nodes=3), polling_interval=0.2)) == DENIED
    node = next(iter(client.list_nodes(POOL)))
    assert error_of(lambda: client.begin_reboot_node(
        POOL, node.id, BatchNodeRebootOptions(node_reboot_kind="requeue"), polling_interval=0.2)) == DENIED
    # An auto pool is a pool: a job that asks for one needs pool rights too, as on Batch.
    auto = models.BatchJobCreateOptions(id="auto", pool_info=models.BatchPoolInfo(
        auto_pool_specification=models.BatchAutoPoolSpecification(
            pool_lifetime_option="job", pool=models.BatchPoolSpecification(
                vm_size="standard_d2s_v3", virtual_machine_configuration=pool_options("x").virtual_machine_configuration,
                target_dedicated_nodes=0))))
    assert error_of(lambda: client.create_job(auto)) == DENIED
    # Batch reads names without regard to case: so does the check.
    shouted = json.dumps({"id": "auto", "POOLINFO": {"AUTOPOOLSPECIFICATION": {
        "poolLifetimeOption": "job", "pool": {"vmSize": "standard_d2s_v3", "targetDedicatedNodes": 0}}}}).encode()
    token = access_token(tls_shoal, submitter)
    assert_batch_error(call(tls_shoal, "POST", "/jobs", body=shouted, token=token), 403, "AuthorizationFailure")
    schedule = json.dumps({"id": "auto", "schedule": {"recurrenceInterval": "PT1H"}, "jobSpecification": {
        "poolInfo": {"autoPoolSpecification": {"poolLifetimeOption": "job", "pool": {"vmSize": "standard_d2s_v3"}}}}})
    assert_batch_error(call(tls_shoal, "POST", "/jobschedules", body=schedule.encode(), token=token),
                       403, "AuthorizationFailure")
    moved = json.dumps({"poolInfo": {"autoPoolSpecification": {"poolLifetimeOption": "job",
                                                               "pool": {"vmSize": "standard_d2s_v3"}}}}).encode()
    assert_batch_error(call(tls_shoal, "PATCH", "/jobs/submitted", body=moved, token=token),
                       403, "AuthorizationFailure")
    assert "auto" not in [job.id for job in key_client.list_jobs()]
    assert key_client.get_pool(POOL).state == "active"


def test_custom_role_with_a_not_data_action(tls_shoal: RunningShoal, key_client: Any) -> None:
    out = cli(tls_shoal, "role", "create", "no-deletes", "--action", "Microsoft.Batch/batchAccounts/pools/read",
              "--data-action", "Microsoft.Batch/batchAccounts/jobs/*",
              "--not-data-action", "Microsoft.Batch/batchAccounts/jobs/delete", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    created = json.loads(out.stdout)
    assert created["properties"]["type"] == "CustomRole"
    assert created["properties"]["assignableScopes"] == [
        f"{SUBSCRIPTION}/resourceGroups/shoal/providers/Microsoft.Batch/batchAccounts/shoal"]
    client = token_client(tls_shoal, _principal(tls_shoal, "no-deletes"))
    client.create_job(_job("kept"))
    client.create_task("kept", models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    wait_tasks_done(client, "kept")
    assert error_of(lambda: client.delete_task("kept", "t")) == DENIED
    assert error_of(lambda: client.begin_delete_job("kept", polling_interval=0.2)) == DENIED
    assert error_of(lambda: client.create_job_schedule(models.BatchJobScheduleCreateOptions(
        id="s", schedule=models.BatchJobScheduleConfiguration(recurrence_interval="PT1H"),
        job_specification=models.BatchJobSpecification(pool_info=models.BatchPoolInfo(pool_id=POOL))))) == DENIED
    assert [task.id for task in key_client.list_tasks("kept")] == ["t"]


@pytest.mark.parametrize("scope", ["subscription", "resource-group", f"{SUBSCRIPTION}/resourceGroups/SHOAL"])
def test_an_assignment_at_a_broader_scope_applies(tls_shoal: RunningShoal, key_client: Any, scope: str) -> None:
    principal = _principal(tls_shoal, "Contributor", "--scope", scope)
    listed = json.loads(cli(tls_shoal, "role", "assignments", "--principal", principal["clientId"], "--json").stdout)
    assert [row["properties"]["roleName"] for row in listed] == ["Contributor"]
    assert listed[0]["properties"]["scope"].count("/") == (2 if scope == "subscription" else 4)
    client = token_client(tls_shoal, principal)
    pool_id = f"wide{uuid.uuid4().hex[:6]}"
    client.create_pool(pool_options(pool_id, target_dedicated_nodes=0))
    client.begin_delete_pool(pool_id, polling_interval=0.2).result()


def test_assignments_elsewhere_are_refused(tls_shoal: RunningShoal) -> None:
    principal = _principal(tls_shoal)
    for scope in ("/subscriptions/11111111-1111-1111-1111-111111111111",
                  f"{SUBSCRIPTION}/resourceGroups/other",
                  f"{SUBSCRIPTION}/resourceGroups/shoal/providers/Microsoft.Batch/batchAccounts/another",
                  f"{SUBSCRIPTION}/resourceGroups/shoal/providers/Microsoft.Batch/batchAccounts/shoal/pools/p",
                  "/", "nonsense"):
        out = cli(tls_shoal, "role", "assign", principal["clientId"], "Reader", "--scope", scope)
        assert out.returncode == 1 and "InvalidPropertyValue" in out.stdout, (scope, out.stdout)
    assert json.loads(cli(tls_shoal, "role", "assignments", "--principal", principal["clientId"], "--json").stdout) \
        == []


def test_a_removed_assignment_takes_effect_at_once(tls_shoal: RunningShoal, key_client: Any) -> None:
    principal = _principal(tls_shoal, "Azure Batch Account Reader")
    client = token_client(tls_shoal, principal)
    assert POOL in [pool.id for pool in client.list_pools()]
    out = cli(tls_shoal, "role", "unassign", principal["displayName"], "azure batch account reader")
    assert out.returncode == 0, out.stdout + out.stderr
    assert error_of(lambda: list(client.list_pools())) == DENIED
    # And a new one at once too.
    assign_role(tls_shoal, principal, "Azure Batch Account Reader")
    assert POOL in [pool.id for pool in client.list_pools()]
    # Deleting the principal takes its assignments with it.
    assert cli(tls_shoal, "principal", "delete", principal["clientId"]).returncode == 0
    everyone = cli(tls_shoal, "role", "assignments", "--json").stdout
    assert principal["objectId"] not in everyone


def test_owner_manages_assignments_and_contributor_may_not(tls_shoal: RunningShoal) -> None:
    owner = access_token(tls_shoal, _principal(tls_shoal, "Owner"))
    contributor = access_token(tls_shoal, _principal(tls_shoal, "Contributor"))
    target = _principal(tls_shoal)
    body = json.dumps({"properties": {"principalId": target["objectId"], "roleDefinitionId": "Reader"}}).encode()
    assert_batch_error(call(tls_shoal, "POST", "/shoal/v1/roleassignments", body=body, token=contributor),
                       403, "AuthorizationFailure")
    assert call(tls_shoal, "GET", "/shoal/v1/roleassignments", token=contributor).status_code == 200
    made = call(tls_shoal, "POST", "/shoal/v1/roleassignments", body=body, token=owner)
    assert made.status_code == 201, made.text
    assert call(tls_shoal, "GET", "/pools", token=access_token(tls_shoal, target)).status_code == 200
    # Neither manages the tenant's principals: only the account's keys do.
    principal_body = json.dumps({"displayName": "made-by-owner"}).encode()
    assert_batch_error(call(tls_shoal, "POST", "/shoal/v1/principals", body=principal_body, token=owner),
                       403, "AuthorizationFailure")


def _data_plane_routes() -> list[tuple[str, str]]:
    from tests.security.test_bearer_tokens import _data_plane_routes as routes

    return routes()


def test_every_route_refuses_a_principal_without_roles(tls_shoal: RunningShoal, key_client: Any) -> None:
    from shoal.api import management, unserved
    from tests.acceptance.test_management_api import management_token

    principal = _principal(tls_shoal)
    token = access_token(tls_shoal, principal)
    # The management API takes only management-audience tokens, and answers in ARM's shape.
    arm_token = management_token(tls_shoal, principal)
    # /metrics takes its own scrape token as its only bearer token (401 for any other).
    routes = [route for route in _data_plane_routes() if route[1] != "/metrics"]
    routes += [(method, path.replace("{}", "x")) for method, path, _ in unserved.OPERATIONS]
    assert len(routes) > 70
    with httpx.Client(verify=verifier(tls_shoal), timeout=30) as http:
        for method, path in routes:
            # Real ids where a route has them: the refusal must not depend on a 404 first.
            real = path.replace("/pools/x", f"/pools/{POOL}")
            arm = management.is_management_path(path)
            response = http.request(method, f"{tls_shoal.endpoint}{real}?api-version=2025-06-01",
                                    headers={"Authorization": f"Bearer {arm_token if arm else token}",
                                             "Content-Length": "2",
                                             "Content-Type": "application/json; odata=minimalmetadata"},
                                    content=b"{}")
            assert response.status_code == 403, (method, real, response.text)
            if arm:
                assert response.json()["error"]["code"] == "AuthorizationFailed"
            else:
                assert response.json()["code"] == "AuthorizationFailure"
    assert [pool.id for pool in key_client.list_pools()].count(POOL) == 1


def _family(method: str, path: str) -> tuple[str, bool]:
    """What a route touches and whether it only reads: the matrix's own reading of Azure Batch's
    rules, written apart from shoal/api/authorization.py so that the two check each other."""
    lowered, reads = path.lower(), method == "GET"
    if lowered.startswith(("/shoal/v1/principals", "/shoal/v1/tenants", "/shoal/v1/account/regenerate-key")):
        return "keys", reads
    if lowered == "/shoal/v1/account/authentication-modes":
        return ("account", True) if reads else ("keys", False)
    if lowered.startswith("/shoal/v1/role"):
        return "roles", reads
    if lowered in ("/shoal/v1/usage", "/supportedimages"):
        return "account", reads
    if lowered.startswith(("/pools", "/nodecounts", "/poolusagemetrics", "/shoal/v1/pools")):
        return "pools", reads and not lowered.endswith("/join-token")  # a join token admits a node
    if lowered.startswith("/certificates"):
        return "certificates", reads
    if lowered.startswith(("/applications", "/shoal/v1/applications")):
        return "applications", reads
    return "jobs", reads  # jobs, their tasks and files, job schedules, `task why`


MATRIX = {
    "Owner": lambda family, reads: family != "keys",
    "Contributor": lambda family, reads: family != "keys" and (family != "roles" or reads),
    "Reader": lambda family, reads: reads and family != "keys",
    "Azure Batch Account Contributor": lambda family, reads: family != "keys" and (family != "roles" or reads),
    "Azure Batch Account Reader": lambda family, reads: reads and family not in ("keys", "roles"),
    "Azure Batch Data Contributor": lambda family, reads: family != "keys" and (family != "roles" or reads),
    "Azure Batch Job Submitter": lambda family, reads: family == "jobs" or (reads and family in ("pools",
                                                                                                 "applications")),
}


@pytest.mark.parametrize("role", sorted(MATRIX))
def test_permission_matrix_of_the_builtin_roles(tls_shoal: RunningShoal, role: str) -> None:
    """Every route, for each built-in role: refused with 403 exactly where the role says; allowed
    calls (on ids that do not exist, with empty bodies) get the handler's own answer."""
    from shoal.api import management, unserved

    token = access_token(tls_shoal, _principal(tls_shoal, role))
    # The management API's own matrix: tests/acceptance/test_management_api.py.
    routes = [route for route in _data_plane_routes()
              if route[1] != "/metrics" and not management.is_management_path(route[1])]
    routes += [(method, path.replace("{}", "x")) for method, path, _ in unserved.OPERATIONS]
    wrong = []
    with httpx.Client(verify=verifier(tls_shoal), timeout=30) as http:
        for method, path in routes:
            response = http.request(method, f"{tls_shoal.endpoint}{path}?api-version=2025-06-01",
                                    headers={"Authorization": f"Bearer {token}", "Content-Length": "2",
                                             "Content-Type": "application/json; odata=minimalmetadata"},
                                    content=b"{}")
            refused = response.status_code == 403 and response.json()["code"] == "AuthorizationFailure"
            if refused == MATRIX[role](*_family(method, path)) or response.status_code >= 500:
                wrong.append((method, path, response.status_code, response.text[:200]))
    assert wrong == []


@pytest.mark.parametrize(("args", "code"), [
    (["role", "assign", "{principal}", "No Such Role"], "RoleDefinitionDoesNotExist"),
    (["role", "assign", "nobody-" + "x" * 20, "Reader"], "PrincipalNotFound"),
    (["role", "assign", "{principal}", "Reader\x01"], "RoleDefinitionDoesNotExist"),
    (["role", "create", "bad", "--action", "Microsoft.Batch/../read"], "InvalidPropertyValue"),
    (["role", "create", "bad", "--data-action", "jobs read"], "InvalidPropertyValue"),
    (["role", "create", "bad", "--action", "Microsoft.Batch/pools\x7f/read"], "InvalidPropertyValue"),
    (["role", "create", "bad\x01name", "--action", "*"], "InvalidPropertyValue"),
    (["role", "create", "empty"], "InvalidPropertyValue"),
    (["role", "create", "a/b", "--action", "*"], "InvalidPropertyValue"),
    (["role", "create", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "--action", "*"], "InvalidPropertyValue"),
    (["role", "create", "Reader", "--action", "*"], "RoleDefinitionWithSameNameExists"),
    (["role", "create", "far", "--action", "*", "--scope", "/subscriptions/.."], "InvalidPropertyValue"),
    (["role", "delete", "Owner"], "CannotModifyBuiltInRole"),
    (["role", "delete", "never-made"], "RoleDefinitionDoesNotExist"),
    (["role", "unassign", str(uuid.uuid4())], "RoleAssignmentNotFound"),
    (["role", "unassign", "{principal}", "Owner"], "RoleAssignmentNotFound"),
])
def test_bad_cli_input_gets_clean_errors(tls_shoal: RunningShoal, args: list[str], code: str) -> None:
    principal = _principal(tls_shoal)
    out = cli(tls_shoal, *[arg.replace("{principal}", principal["clientId"]) for arg in args])
    assert out.returncode == 1, out.stdout + out.stderr
    assert code in out.stdout and "Traceback" not in out.stdout + out.stderr


def test_huge_lists_duplicates_and_assigned_roles_are_refused(tls_shoal: RunningShoal, tmp_path: Path) -> None:
    many = ["--action", "Microsoft.Batch/batchAccounts/pools/read"] * 501
    out = cli(tls_shoal, "role", "create", "huge", *many)
    assert out.returncode == 1 and "InvalidPropertyValue" in out.stdout and "500" in out.stdout
    # az's flat role JSON is read as it is.
    flat = tmp_path / "role.json"
    flat.write_text(json.dumps({"Name": "From File", "Description": "flat", "Actions": ["Microsoft.Batch/*/read"],
                                "NotActions": [], "DataActions": [], "NotDataActions": []}))
    assert cli(tls_shoal, "role", "create", "--file", str(flat)).returncode == 0
    shown = json.loads(cli(tls_shoal, "role", "show", "from file").stdout)
    assert shown["properties"]["permissions"][0]["actions"] == ["Microsoft.Batch/*/read"]
    principal = _principal(tls_shoal, "From File")
    again = cli(tls_shoal, "role", "assign", principal["clientId"], "From File")
    assert again.returncode == 1 and "RoleAssignmentExists" in again.stdout
    held = cli(tls_shoal, "role", "delete", "From File")
    assert held.returncode == 1 and "RoleDefinitionHasAssignments" in held.stdout
    assert cli(tls_shoal, "role", "unassign", principal["clientId"], "From File").returncode == 0
    assert cli(tls_shoal, "role", "delete", "From File").returncode == 0
    bad_file = tmp_path / "bad.json"
    bad_file.write_bytes(b"{\x00")
    broken = cli(tls_shoal, "role", "create", "--file", str(bad_file))
    assert broken.returncode == 2 and "Traceback" not in broken.stderr


@pytest.mark.parametrize("body", [
    b"[]", b"{}", b'{"properties": []}', b'{"properties": {"roleName": "x", "permissions": {}}}',
    b'{"properties": {"roleName": "x", "permissions": [{"actions": "*"}]}}',
    b'{"properties": {"roleName": "x", "permissions": [{"actions": ["*"], "extra": []}]}}',
    b'{"properties": {"roleName": "x", "permissions": [{"actions": [7]}]}}',
    b'{"properties": {"roleName": "x\\u0000", "permissions": [{"actions": ["*"]}]}}',
    b'{"properties": {"roleName": "x", "permissions": [{"actions": ["*"]}], "assignableScopes": "/subscriptions/a"}}',
    b'{"properties": {"roleName": "x", "permissions": [{"actions": ["*"]}, {"actions": ["*"]}]}}',
    b'{"properties": {"roleName": 5, "permissions": [{"actions": ["*"]}]}}',
])
def test_bad_role_definitions_over_rest_are_refused(tls_shoal: RunningShoal, body: bytes) -> None:
    response = call(tls_shoal, "POST", "/shoal/v1/roledefinitions", body=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] in ("InvalidRequestBody", "InvalidPropertyValue", "MissingRequiredProperty")


@pytest.mark.parametrize("body", [
    b"{}", b'{"properties": {"principalId": "x"}}', b'{"properties": {"principalId": 7, "roleDefinitionId": "Reader"}}',
    b'{"properties": {"principalId": "x", "roleDefinitionId": ["Reader"]}}',
    b'{"properties": {"principalId": "\\u0000", "roleDefinitionId": "Reader"}}',
])
def test_bad_assignments_over_rest_are_refused(tls_shoal: RunningShoal, body: bytes) -> None:
    response = call(tls_shoal, "POST", "/shoal/v1/roleassignments", body=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["code"]

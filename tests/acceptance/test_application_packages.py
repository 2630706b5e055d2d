"""Application packages (semantics §5.4) through the official SDK against a real `shoal up` with
local nodes and a real Azurite as the account's linked storage: packages managed through
`/shoal/v1/applications` (and `shoal app`), read through Application_List/Get, deployed by pool
and task references into `AZ_BATCH_APP_PACKAGE_*` folders before the start task and the task;
and what Batch answers to references that cannot be satisfied and packages that cannot be
unpacked (a corrupt zip, zip-slip entries, links, bombs), without ever stopping the agent."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models
from azure.batch.models._models import BatchNodeRebootOptions

from tests.acceptance.rest import assert_batch_error, call
from tests.helpers import error_of, pool_options, wait_for, wait_pool_idle
from tests.storage import fixtures

azurite, blobs, shoal = fixtures.azurite, fixtures.blobs, fixtures.shoal

POOL = "apps-pool"
JOB = "apps-job"
SLIP_MARKER = f"slipped-{uuid.uuid4().hex}.txt"


def make_zip(entries: dict[str, bytes], executable: tuple[str, ...] = ()) -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | (0o755 if name in executable else 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return raw.getvalue()


def script_zip(word: str) -> bytes:
    return make_zip({"bin/hello.sh": f"#!/bin/sh\necho {word}\n".encode(), "README": b"package"},
                    executable=("bin/hello.sh",))


def put_application(shoal: Any, app_id: str, **settings: Any) -> Any:
    return call(shoal, "PUT", f"/shoal/v1/applications/{app_id}", body=json.dumps(settings).encode())


def put_package(shoal: Any, app_id: str, version: str, data: bytes) -> Any:
    return call(shoal, "PUT", f"/shoal/v1/applications/{app_id}/versions/{version}", body=data,
                headers={"Content-Type": "application/zip"})


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code in (status, 201), (response.status_code, response.text)
    return response.json() if response.content else None


@pytest.fixture(scope="module")
def client(shoal: Any) -> Any:
    return shoal.client()


@pytest.fixture(scope="module")
def apps(shoal: Any) -> None:
    """tools 1.0 (the pool's), other 1.0 and 2.0-beta with 2.0-beta the default, nodefault (no
    default version), and the packages no node can unpack."""
    ok(put_application(shoal, "tools", displayName="Tools", allowUpdates=False))
    ok(put_package(shoal, "tools", "1.0", script_zip("tools-one")))
    ok(put_application(shoal, "other"))
    ok(put_package(shoal, "other", "1.0", script_zip("other-one")))
    ok(put_package(shoal, "other", "2.0-beta", script_zip("other-two")))
    ok(call(shoal, "PATCH", "/shoal/v1/applications/other", body=b'{"defaultVersion": "2.0-beta"}'))
    ok(put_application(shoal, "nodefault"))
    ok(put_package(shoal, "nodefault", "1", script_zip("x")))
    ok(put_application(shoal, "broken"))
    # A zip whose directory reads but whose data does not (CRC flipped).
    good = bytearray(make_zip({"a.txt": b"hello world" * 1000}))
    good[good.find(b"PK\x03\x04") + 14] ^= 0xFF
    good[good.rfind(b"PK\x01\x02") + 16] ^= 0xFF
    ok(put_package(shoal, "broken", "crc", bytes(good)))
    ok(put_package(shoal, "broken", "slip", make_zip({"ok.txt": b"fine", f"../../../{SLIP_MARKER}": b"pwned"})))
    link = io.BytesIO()
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("etc")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc")
        archive.writestr("etc/planted", b"x")
    ok(put_package(shoal, "broken", "link", link.getvalue()))
    # A bomb by its headers: two entries that each claim to inflate to 4 GiB.
    bomb = bytearray(make_zip({"a.bin": b"\0" * 1000, "b.bin": b"\0" * 1000}))
    at = 0
    while (at := bomb.find(b"PK\x01\x02", at)) != -1:
        bomb[at + 24:at + 28] = (0xFFFFFFF0).to_bytes(4, "little")
        at += 4
    ok(put_package(shoal, "broken", "bomb", bytes(bomb)))


@pytest.fixture(scope="module")
def job(client: Any, apps: None) -> str:
    start = models.BatchStartTask(
        command_line="/bin/sh -c '$AZ_BATCH_APP_PACKAGE_tools_1_0/bin/hello.sh > $AZ_BATCH_NODE_SHARED_DIR/start.txt'",
        wait_for_success=True)
    client.create_pool(pool_options(POOL, target_dedicated_nodes=1, task_slots_per_node=4, start_task=start,
                                    application_package_references=[
                                        models.BatchApplicationPackageReference(application_id="tools",
                                                                                version="1.0")]))
    wait_pool_idle(client, POOL, 1, timeout=60)
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    return JOB


def run_task(client: Any, task_id: str, command: str, refs: list[Any] | None = None) -> Any:
    client.create_task(JOB, models.BatchTaskCreateOptions(id=task_id, command_line=command,
                                                          application_package_references=refs))
    return wait_for(lambda: (t := client.get_task(JOB, task_id)).state == "completed" and t, 60,
                    interval=0.1, message=task_id)


def stdout(client: Any, task_id: str) -> str:
    return b"".join(client.download_task_file(JOB, task_id, "stdout.txt")).decode()


# ---- the data plane's reads ----------------------------------------------------------------------

def test_list_and_get_applications_answer_as_azure(client: Any, apps: None, shoal: Any) -> None:
    listed = {app.id: app for app in client.list_applications()}
    assert set(listed) == {"tools", "other", "nodefault", "broken"}
    assert listed["tools"].versions == ["1.0"] and listed["tools"].display_name == "Tools"
    assert sorted(listed["other"].versions) == ["1.0", "2.0-beta"]
    got = client.get_application("OTHER")  # ids are case-insensitive
    assert got.id == "other" and sorted(got.versions) == ["1.0", "2.0-beta"]
    # As recorded: no displayName when the application has none, and Azure's metadata names.
    raw = call(shoal, "GET", "/applications/other").json()
    assert "displayName" not in raw and raw["odata.metadata"].endswith("#getapplicationsummaryresponse/@Element")
    assert call(shoal, "GET", "/applications").json()["odata.metadata"].endswith("#listapplicationsummariesresponses")
    assert error_of(lambda: client.get_application("missing")) == (404, "ApplicationNotFound")


def test_lists_page(client: Any, apps: None, shoal: Any) -> None:
    first = call(shoal, "GET", "/applications", params={"maxresults": "2"}).json()
    assert len(first["value"]) == 2 and "odata.nextLink" in first
    assert len(list(client.list_applications(max_results=1))) == 4


def test_a_pending_version_is_not_listed(client: Any, apps: None, shoal: Any) -> None:
    """A refused upload leaves the version pending, which nodes cannot use and lists do not show."""
    assert_batch_error(put_package(shoal, "other", "3.0", b"not a zip at all"), 400, "InvalidApplicationPackage")
    assert "3.0" not in client.get_application("other").versions
    shown = call(shoal, "GET", "/shoal/v1/applications/other/versions").json()["value"]
    assert {p["version"]: p["state"] for p in shown}["3.0"] == "pending"


# ---- management --------------------------------------------------------------------------------

def test_allow_updates_false_refuses_replacing_an_active_version(client: Any, apps: None, shoal: Any) -> None:
    before = call(shoal, "GET", "/shoal/v1/applications/tools").json()
    assert_batch_error(put_package(shoal, "tools", "1.0", script_zip("replaced")), 409,
                       "ApplicationPackageUpdateNotAllowed")
    after = call(shoal, "GET", "/shoal/v1/applications/tools").json()
    assert after["packages"] == before["packages"] and after["eTag"] == before["eTag"]


def test_management_errors(shoal: Any, apps: None) -> None:
    assert_batch_error(put_package(shoal, "nosuchapp", "1.0", script_zip("x")), 404, "ApplicationNotFound")
    assert_batch_error(put_application(shoal, "bad.id"), 400, "InvalidPropertyValue")
    assert_batch_error(put_package(shoal, "other", ".hidden", script_zip("x")), 400, "InvalidPropertyValue")
    assert_batch_error(put_application(shoal, "other", allowUpdates="yes"), 400, "InvalidPropertyValue")
    assert_batch_error(call(shoal, "PATCH", "/shoal/v1/applications/other", body=b'{"defaultVersion": "9.9"}'),
                       400, "InvalidPropertyValue")
    assert_batch_error(call(shoal, "DELETE", "/shoal/v1/applications/other/versions/9.9"), 404,
                       "ApplicationPackageNotFound")
    assert call(shoal, "PUT", "/shoal/v1/applications/other", body=b"[1, 2]").status_code == 400
    assert call(shoal, "PUT", "/shoal/v1/applications/other", body=b"{not json").status_code == 400
    assert_batch_error(put_application(shoal, "other", colour="red"), 400, "InvalidPropertyValue")
    assert_batch_error(put_package(shoal, "other", "4.0", b""), 400, "InvalidApplicationPackage")
    assert call(shoal, "GET", "/shoal/v1/applications/other").json()["allowUpdates"] is True  # unchanged


def test_the_cli_manages_applications(shoal: Any, client: Any, apps: None, tmp_path: Path) -> None:
    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "shoal.cli", "app", *args, "--data-dir", str(shoal.data_dir)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    archive = tmp_path / "cli.zip"
    archive.write_bytes(script_zip("cli"))
    cli("create", "cli-app", "--display-name", "From the CLI")
    cli("package", "add", "cli-app", "1.0", str(archive))
    cli("set-default", "cli-app", "1.0")
    assert json.loads(cli("show", "cli-app"))["defaultVersion"] == "1.0"
    assert client.get_application("cli-app").versions == ["1.0"]
    assert "1.0" in cli("package", "list", "cli-app")
    cli("package", "delete", "cli-app", "1.0")
    # The data plane shows only what nodes can use: an application without an active version
    # is neither listed nor found.
    assert error_of(lambda: client.get_application("cli-app")) == (404, "ApplicationNotFound")
    assert "cli-app" not in {app.id for app in client.list_applications()}
    assert json.loads(cli("show", "cli-app"))["packages"] == []
    cli("delete", "cli-app")
    assert error_of(lambda: client.get_application("cli-app")) == (404, "ApplicationNotFound")


# ---- deployment --------------------------------------------------------------------------------

def test_the_start_task_finds_the_pools_package(client: Any, job: str) -> None:
    node = next(iter(client.list_nodes(POOL)))
    assert node.start_task_info.exit_code == 0
    shared = b"".join(client.download_node_file(POOL, node.id, "shared/start.txt")).decode()
    assert shared.strip() == "tools-one"
    pool = client.get_pool(POOL)
    assert [(r.application_id, r.version) for r in pool.application_package_references] == [("tools", "1.0")]


def test_a_task_finds_the_pools_package_and_its_own(client: Any, job: str) -> None:
    command = ("/bin/sh -c '$AZ_BATCH_APP_PACKAGE_tools_1_0/bin/hello.sh; $AZ_BATCH_APP_PACKAGE_other_1_0/bin/hello.sh;"
               " echo $AZ_BATCH_APP_PACKAGE_other_1_0; touch $AZ_BATCH_APP_PACKAGE_other_1_0/mine 2>/dev/null "
               "|| echo read-only'")
    task = run_task(client, "both", command, [models.BatchApplicationPackageReference(application_id="other",
                                                                                      version="1.0")])
    assert task.execution_info.result == "success", task.execution_info.failure_info
    lines = stdout(client, "both").splitlines()
    assert lines[:2] == ["tools-one", "other-one"]
    assert lines[2].endswith("/applications/other#1.0")
    assert lines[3] == "read-only"
    assert [(r.application_id, r.version) for r in task.application_package_references] == [("other", "1.0")]


def test_a_package_already_on_the_node_is_not_unpacked_again(client: Any, job: str) -> None:
    """Batch: 'if a referenced package is already on the Node, and is up to date, then it is not
    re-downloaded'. A fresh unpack would be a new folder (renamed into place): a new inode."""
    refs = [models.BatchApplicationPackageReference(application_id="other", version="1.0")]
    inode = "/bin/sh -c 'stat -c %i $AZ_BATCH_APP_PACKAGE_other_1_0'"
    first = run_task(client, "inode-1", inode, refs)
    second = run_task(client, "inode-2", inode, refs)
    assert first.execution_info.result == second.execution_info.result == "success"
    assert stdout(client, "inode-1") == stdout(client, "inode-2")


def test_a_replaced_package_is_unpacked_again(client: Any, job: str, shoal: Any) -> None:
    """allowUpdates (the default): a new upload of a version reaches nodes at their next task."""
    ok(put_application(shoal, "updatable"))
    ok(put_package(shoal, "updatable", "1", script_zip("first")))
    refs = [models.BatchApplicationPackageReference(application_id="updatable", version="1")]
    hello = "/bin/sh -c '$AZ_BATCH_APP_PACKAGE_updatable_1/bin/hello.sh'"
    assert run_task(client, "update-1", hello, refs).execution_info.result == "success"
    ok(put_package(shoal, "updatable", "1", script_zip("second")))
    assert run_task(client, "update-2", hello, refs).execution_info.result == "success"
    assert (stdout(client, "update-1").strip(), stdout(client, "update-2").strip()) == ("first", "second")
    ok(call(shoal, "DELETE", "/shoal/v1/applications/updatable"))


def test_a_reference_without_version_gets_the_default(client: Any, job: str) -> None:
    command = "/bin/sh -c '$AZ_BATCH_APP_PACKAGE_other/bin/hello.sh; $AZ_BATCH_APP_PACKAGE_other_2_0_beta/bin/hello.sh'"
    task = run_task(client, "default", command, [models.BatchApplicationPackageReference(application_id="other")])
    assert task.execution_info.result == "success", task.execution_info.failure_info
    assert stdout(client, "default").splitlines() == ["other-two", "other-two"]


# ---- references that cannot be satisfied ---------------------------------------------------------

@pytest.mark.parametrize(("refs", "status", "code"), [
    ([{"applicationId": "missing"}], 409, "InvalidApplicationPackageReferences"),
    ([{"applicationId": "tools", "version": "9.9"}], 409, "InvalidApplicationPackageReferences"),
    ([{"applicationId": "nodefault"}], 409, "InvalidApplicationPackageReferences"),
    ([{"applicationId": f"a{i}"} for i in range(11)], 400, "InvalidPropertyValue"),
    ([{"applicationId": 5}], 400, "InvalidPropertyValue"),
    ({"applicationId": "tools"}, 400, "InvalidPropertyValue"),
    ([{"version": "1.0"}], 400, "MissingRequiredProperty"),
    ([{"applicationId": "tools"}, {"applicationId": "TOOLS"}], 400, "InvalidPropertyValue"),
])
def test_a_pool_with_bad_references_is_refused(shoal: Any, client: Any, apps: None, refs: Any, status: int,
                                               code: str) -> None:
    body = {"id": "bad-refs", "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 0,
            "virtualMachineConfiguration": {"imageReference": {"publisher": "canonical",
                                                               "offer": "0001-com-ubuntu-server-jammy",
                                                               "sku": "22_04-lts", "version": "latest"},
                                            "nodeAgentSKUId": "batch.node.ubuntu 22.04"},
            "applicationPackageReferences": refs}
    response = call(shoal, "POST", "/pools", body=json.dumps(body).encode())
    assert response.status_code == status, response.text
    assert response.json()["code"] in (code, "InvalidRequestBody") if code == "InvalidPropertyValue" \
        else response.json()["code"] == code
    assert error_of(lambda: client.get_pool("bad-refs")) == (404, "PoolNotFound")


def test_a_pool_accepts_the_arm_id_of_an_application(client: Any, apps: None) -> None:
    arm = ("/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Batch/batchAccounts/acct/applications/tools")
    client.create_pool(pool_options("arm-refs", target_dedicated_nodes=0, application_package_references=[
        models.BatchApplicationPackageReference(application_id=arm, version="1.0")]))
    assert client.get_pool("arm-refs").application_package_references[0].application_id == arm
    # PATCH replaces the references (reaching nodes at their next boot, as on Azure).
    client.update_pool("arm-refs", models.BatchPoolUpdateOptions(application_package_references=[
        models.BatchApplicationPackageReference(application_id="other")]))
    assert [r.application_id for r in client.get_pool("arm-refs").application_package_references] == ["other"]
    # updateproperties replaces them all: an empty list removes them.
    client.replace_pool_properties("arm-refs", models.BatchPoolReplaceOptions(
        metadata=[], application_package_references=[models.BatchApplicationPackageReference(
            application_id="tools", version="1.0")]))
    assert [r.version for r in client.get_pool("arm-refs").application_package_references] == ["1.0"]
    client.replace_pool_properties("arm-refs", models.BatchPoolReplaceOptions(metadata=[],
                                                                              application_package_references=[]))
    assert not client.get_pool("arm-refs").application_package_references
    assert error_of(lambda: client.update_pool("arm-refs", models.BatchPoolUpdateOptions(
        application_package_references=[models.BatchApplicationPackageReference(application_id="missing")]))) \
        == (409, "InvalidApplicationPackageReferences")
    client.begin_delete_pool("arm-refs")


def test_a_task_naming_a_missing_package_is_refused(client: Any, job: str) -> None:
    for refs in ([models.BatchApplicationPackageReference(application_id="missing")],
                 [models.BatchApplicationPackageReference(application_id="other", version="9.9")]):
        assert error_of(lambda refs=refs: client.create_task(JOB, models.BatchTaskCreateOptions(
            id="missing-ref", command_line="/bin/true", application_package_references=refs))) \
            == (409, "InvalidApplicationPackageReferences")
    assert error_of(lambda: client.get_task(JOB, "missing-ref")) == (404, "TaskNotFound")
    result = client.create_task_collection(JOB, models.BatchTaskGroup(task_values=[
        models.BatchTaskCreateOptions(id="in-collection", command_line="/bin/true",
                                      application_package_references=[
                                          models.BatchApplicationPackageReference(application_id="missing")])]))
    assert result.result_values[0].error.code == "InvalidApplicationPackageReferences"


def _failed_with_package_error(task: Any) -> str:
    info = task.execution_info
    assert info.result == "failure" and info.exit_code is None and info.retry_count == 0
    assert info.failure_info.category == "usererror" and info.failure_info.code == "ApplicationPackageError"
    return str(info.failure_info.message)


def test_a_task_reference_without_a_default_fails_the_task(client: Any, job: str) -> None:
    """The spec: 'If this is omitted on a Task, and no default version is specified for this
    application, the Task fails with a pre-processing error.'"""
    task = run_task(client, "no-default", "/bin/sh -c 'touch ran'",
                    [models.BatchApplicationPackageReference(application_id="nodefault")])
    assert "no default version" in _failed_with_package_error(task)


@pytest.mark.parametrize(("version", "said"), [
    ("crc", "not a valid zip file"), ("slip", "leaves the package folder"), ("link", "symbolic link"),
    ("bomb", "unpacks to more than"),
])
def test_a_package_that_cannot_be_unpacked_fails_the_task(client: Any, job: str, shoal: Any, version: str,
                                                          said: str) -> None:
    task = run_task(client, f"broken-{version}", "/bin/sh -c 'touch ran'",
                    [models.BatchApplicationPackageReference(application_id="broken", version=version)])
    assert said in _failed_with_package_error(task)
    assert error_of(lambda: client.get_task_file_properties(JOB, f"broken-{version}", "wd/ran")) == (404, "")
    everywhere = shoal.data_dir.parent
    assert not list(everywhere.rglob(SLIP_MARKER)) and not Path("/etc/planted").exists()
    assert not list(shoal.nodes_dir.rglob("broken#*"))  # nothing half-unpacked is left


def test_the_node_lives_on_after_bad_packages(client: Any, job: str) -> None:
    task = run_task(client, "after", "/bin/sh -c '$AZ_BATCH_APP_PACKAGE_tools_1_0/bin/hello.sh'")
    assert task.execution_info.result == "success"
    assert stdout(client, "after").strip() == "tools-one"
    assert {n.state for n in client.list_nodes(POOL)} <= {"idle", "running"}


def test_a_pool_package_that_cannot_be_unpacked_makes_the_node_unusable(client: Any, apps: None) -> None:
    """Semantics §5.4: a pool package that fails to install makes the node unusable; its start
    task never runs and no task is placed on it."""
    client.create_pool(pool_options("broken-pool", target_dedicated_nodes=1, start_task=models.BatchStartTask(
        command_line="/bin/true"), application_package_references=[
            models.BatchApplicationPackageReference(application_id="broken", version="slip")]))
    try:
        node = wait_for(lambda: next((n for n in client.list_nodes("broken-pool") if n.state == "unusable"), None),
                        60, interval=0.2, message="an unusable node")
        errors = {e.code: e.message for e in node.errors or []}
        assert "leaves the package folder" in errors["ApplicationPackageError"]
        assert node.start_task_info is None
    finally:
        client.begin_delete_pool("broken-pool")


def test_a_job_manager_gets_its_packages(client: Any, shoal: Any, job: str) -> None:
    """JobManagerTask carries applicationPackageReferences like any task (semantics §3.3)."""
    body = {"id": "jm-missing", "poolInfo": {"poolId": POOL}, "jobManagerTask": {
        "id": "m", "commandLine": "/bin/true", "applicationPackageReferences": [{"applicationId": "missing"}]}}
    assert_batch_error(call(shoal, "POST", "/jobs", body=json.dumps(body).encode()), 409,
                       "InvalidApplicationPackageReferences")
    assert "jm-missing" not in {j.id for j in client.list_jobs()}
    client.create_job(models.BatchJobCreateOptions(
        id="jm-apps", pool_info=models.BatchPoolInfo(pool_id=POOL), job_manager_task=models.BatchJobManagerTask(
            id="manager", command_line="/bin/sh -c '$AZ_BATCH_APP_PACKAGE_other_1_0/bin/hello.sh'",
            application_package_references=[models.BatchApplicationPackageReference(application_id="other",
                                                                                    version="1.0")])))
    task = wait_for(lambda: (t := client.get_task("jm-apps", "manager")).state == "completed" and t, 60,
                    interval=0.1, message="the job manager")
    assert task.execution_info.result == "success", task.execution_info.failure_info
    assert b"".join(client.download_task_file("jm-apps", "manager", "stdout.txt")).decode().strip() == "other-one"


def test_simulated_nodes_of_a_pool_with_packages_go_idle(tmp_path_factory: pytest.TempPathFactory,
                                                          azurite: Any) -> None:
    """Simulated nodes have no disk: they say the pool's packages are installed at once, so the
    node leaves `starting` as a real one does."""
    from shoal.testing.server import running_shoal

    with running_shoal(tmp_path_factory.mktemp("shoal-sim-apps"),
                       extra_args=["--provider", "sim", "--auto-storage", azurite.connection_string]) as sim:
        ok(put_application(sim, "simapp"))
        ok(put_package(sim, "simapp", "1", script_zip("sim")))
        sim_client = sim.client()
        sim_client.create_pool(pool_options("sim-apps", target_dedicated_nodes=3, application_package_references=[
            models.BatchApplicationPackageReference(application_id="simapp", version="1")]))
        wait_pool_idle(sim_client, "sim-apps", 3, timeout=60)


def test_quotas_bound_applications_and_packages(shoal: Any, apps: None) -> None:
    """Azure's defaults: 200 applications per account, 40 packages per application."""
    existing = len(call(shoal, "GET", "/shoal/v1/applications").json()["value"])
    made = [f"quota-{i}" for i in range(200 - existing)]
    try:
        for app_id in made:
            ok(put_application(shoal, app_id))
        assert_batch_error(put_application(shoal, "one-too-many"), 409, "ApplicationQuotaReached")
        for version in range(40):
            ok(put_package(shoal, made[0], str(version), make_zip({"a": b"a"})))
        assert_batch_error(put_package(shoal, made[0], "40", make_zip({"a": b"a"})), 409, "ApplicationQuotaReached")
        ok(put_package(shoal, made[0], "0", make_zip({"b": b"b"})))  # replacing is no new package
    finally:
        for app_id in made:
            call(shoal, "DELETE", f"/shoal/v1/applications/{app_id}")


def test_changed_pool_references_reach_a_node_at_its_reboot(client: Any, job: str) -> None:
    """Semantics §5.4: changing a pool's references affects new, rebooted and reimaged nodes only."""
    client.update_pool(POOL, models.BatchPoolUpdateOptions(application_package_references=[
        models.BatchApplicationPackageReference(application_id="tools", version="1.0"),
        models.BatchApplicationPackageReference(application_id="other")]))
    probe = "/bin/sh -c 'echo ${AZ_BATCH_APP_PACKAGE_other:-none}'"
    assert run_task(client, "before-reboot", probe).execution_info.result == "success"
    assert stdout(client, "before-reboot").strip() == "none"
    node = next(iter(client.list_nodes(POOL)))
    client.begin_reboot_node(POOL, node.id, BatchNodeRebootOptions(node_reboot_kind="requeue"),
                             polling_interval=0.2).result()
    wait_for(lambda: client.get_node(POOL, node.id).state == "idle", 60, interval=0.2, message="the rebooted node")
    task = run_task(client, "after-reboot", "/bin/sh -c '$AZ_BATCH_APP_PACKAGE_other/bin/hello.sh; "
                                            "$AZ_BATCH_APP_PACKAGE_tools_1_0/bin/hello.sh'")
    assert task.execution_info.result == "success", task.execution_info.failure_info
    assert stdout(client, "after-reboot").splitlines() == ["other-two", "tools-one"]


def test_a_package_deleted_before_its_task_runs_fails_the_task(client: Any, job: str, shoal: Any) -> None:
    """'If a referenced Package cannot be installed, for example because the package has been
    deleted […], the Task fails' (TaskAddParameter.ApplicationPackageReferences)."""
    ok(put_application(shoal, "ephemeral"))
    ok(put_package(shoal, "ephemeral", "1", script_zip("gone")))
    client.create_job(models.BatchJobCreateOptions(id="late", pool_info=models.BatchPoolInfo(pool_id=POOL),
                                                   uses_task_dependencies=True))
    client.create_task("late", models.BatchTaskCreateOptions(id="first", command_line="/bin/sleep 2"))
    client.create_task("late", models.BatchTaskCreateOptions(
        id="second", command_line="/bin/sh -c 'touch ran'", depends_on=models.BatchTaskDependencies(task_ids=["first"]),
        application_package_references=[models.BatchApplicationPackageReference(application_id="ephemeral",
                                                                                version="1")]))
    ok(call(shoal, "DELETE", "/shoal/v1/applications/ephemeral/versions/1"))
    task = wait_for(lambda: (t := client.get_task("late", "second")).state == "completed" and t, 60, interval=0.1,
                    message="the dependent task")
    assert "no active version 1" in _failed_with_package_error(task)


def test_a_package_whose_blob_is_gone_fails_the_task_without_its_sas(client: Any, job: str, shoal: Any,
                                                                     blobs: Any) -> None:
    ok(put_application(shoal, "vanishing"))
    ok(put_package(shoal, "vanishing", "1", script_zip("x")))
    container = blobs.get_container_client("shoal-application-packages")
    for blob in container.list_blobs(name_starts_with=f"{shoal.account}/vanishing/"):
        container.delete_blob(blob.name)
    task = run_task(client, "vanishing", "/bin/sh -c 'touch ran'",
                    [models.BatchApplicationPackageReference(application_id="vanishing", version="1")])
    message = _failed_with_package_error(task)
    assert "could not be downloaded" in message and "HTTP 404" in message and "sig=" not in message

"""Certificates (issue 11 item 5) against a real `shoal up`: Certificate_Add/List/Get/Delete/
CancelDeletion with azure-batch 14.2.0 and raw signed REST at api-version 2024-02-01.19.0, bad
input, pools' certificateReferences, and the files a node's tasks see, by visibility."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.acceptance import rest
from tests.acceptance.rest import assert_batch_error
from tests.compat.test_msrest_sdks import sdk_python
from tests.helpers import wait_for

V19 = "2024-02-01.19.0"
FLOW = Path(__file__).resolve().parents[1] / "compat" / "msrest_certificates_flow.py"
IMAGE = {"imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts",
                            "version": "latest"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}


def make_certificate(name: str, password: str | None = None) -> dict[str, Any]:
    """A self-signed certificate: its cer (DER) and pfx forms, base64, and its SHA-1 thumbprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    pfx = pkcs12.serialize_key_and_certificates(name.encode(), key, cert, None, encryption)
    return {"thumbprint": hashlib.sha1(der).hexdigest(), "publicData": base64.b64encode(der).decode(),  # noqa: S324
            "cer": base64.b64encode(der).decode(), "pfx": base64.b64encode(pfx).decode(), "password": password,
            "der": der, "pfxBytes": pfx}


def add_body(cert: dict[str, Any], certificate_format: str = "pfx", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"thumbprint": cert["thumbprint"], "thumbprintAlgorithm": "sha1",
                            "data": cert[certificate_format], "certificateFormat": certificate_format}
    if certificate_format == "pfx" and cert["password"]:
        body["password"] = cert["password"]
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def send(shoal: Any, method: str, path: str, body: Any = None, version: str = V19) -> Any:
    raw = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    return rest.call(shoal, method, path, body=raw, api_version=version)


def key_path(thumbprint: str, algorithm: str = "sha1") -> str:
    return f"/certificates(thumbprintAlgorithm={algorithm},thumbprint={thumbprint})"


def listed(shoal: Any) -> list[dict[str, Any]]:
    response = send(shoal, "GET", "/certificates")
    assert response.status_code == 200, response.text
    return response.json()["value"]


def pool_body(pool_id: str, refs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": pool_id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 0,
            "virtualMachineConfiguration": IMAGE, "certificateReferences": refs, **extra}


def state_of(shoal: Any, thumbprint: str) -> str | None:
    response = send(shoal, "GET", key_path(thumbprint))
    return None if response.status_code == 404 else response.json()["state"]


def test_sdk_14_adds_lists_gets_references_and_deletes_certificates(shoal: Any) -> None:
    pfx, cer = make_certificate("sdk-pfx", "pfx-pass-1"), make_certificate("sdk-cer")
    certs = {"pfx": {"data": pfx["pfx"], "password": pfx["password"], "thumbprint": pfx["thumbprint"],
                     "publicData": pfx["publicData"]},
             "cer": {"data": cer["cer"], "thumbprint": cer["thumbprint"]}}
    result = subprocess.run([sdk_python(14), str(FLOW), shoal.endpoint, shoal.account, shoal.primary_key],
                            input=json.dumps(certs), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "certificates flow ok" in result.stdout


def test_answers_show_the_public_certificate_and_nothing_private(shoal: Any) -> None:
    cert = make_certificate("private-check", "s3cret-Pfx-Pass")
    response = send(shoal, "POST", "/certificates", add_body(cert))
    assert response.status_code == 201, response.text
    # As recorded: the OData key in Azure's own spelling, no ETag.
    location = response.headers["Location"]
    assert location.endswith(f"/certificates(ThumbprintAlgorithm=sha1,Thumbprint={cert['thumbprint']})")
    assert response.headers["DataServiceId"] == location and "ETag" not in response.headers
    one = send(shoal, "GET", key_path(cert["thumbprint"]))
    assert one.status_code == 200
    assert one.json()["odata.metadata"].endswith("$metadata#certificates/@Element")
    shown = {k: v for k, v in one.json().items() if k != "odata.metadata"}
    assert shown == {"thumbprint": cert["thumbprint"], "thumbprintAlgorithm": "sha1",
                     "url": f"{shoal.endpoint}{key_path(cert['thumbprint'])}", "state": "active",
                     "stateTransitionTime": shown["stateTransitionTime"], "publicData": cert["publicData"]}
    # The key's names in any case (Azure's Location spelling), the thumbprint in upper case.
    upper = send(shoal, "GET", f"/certificates(ThumbprintAlgorithm=SHA1,Thumbprint={cert['thumbprint'].upper()})")
    assert upper.status_code == 200 and upper.json()["thumbprint"] == cert["thumbprint"]
    everything = send(shoal, "GET", "/certificates").text + one.text + upper.text
    pfx_piece = cert["pfx"][-200:-20]  # the pfx's tail: its encrypted key, not the certificate
    assert cert["password"] not in everything and pfx_piece not in everything
    assert cert["password"] not in shoal.log() and pfx_piece not in shoal.log()
    filtered = rest.call(shoal, "GET", "/certificates", api_version=V19,
                         params={"$filter": f"thumbprint eq '{cert['thumbprint']}'", "$select": "thumbprint,state"})
    assert filtered.json()["value"] == [{"thumbprint": cert["thumbprint"], "state": "active"}]


def _bad_cases() -> list[tuple[str, Any, str, str]]:
    cert = make_certificate("bad-input", "right-password")
    other = make_certificate("other")
    junk = base64.b64encode(os.urandom(600)).decode()
    huge = make_certificate("huge")
    huge_data = base64.b64encode(huge["der"] + os.urandom(11 * 1024)).decode()
    return [
        ("malformed base64", add_body(cert, data="not base64 !!"), "InvalidPropertyValue", "data"),
        ("not a certificate (cer)", add_body(cert, "cer", data=junk), "InvalidPropertyValue", "data"),
        ("not a pfx", add_body(cert, data=junk), "InvalidPropertyValue", "password"),
        ("wrong pfx password", add_body(cert, password="wrong-password"), "InvalidPropertyValue", "password"),
        ("no pfx password", add_body(cert, password=None), "InvalidPropertyValue", "password"),
        ("thumbprint of another certificate", add_body(cert, thumbprint=other["thumbprint"]),
         "InvalidPropertyValue", "thumbprint"),
        ("cer given a password", add_body(cert, "cer", password="x"), "InvalidPropertyValue", "password"),
        ("huge data", add_body(huge, "cer", data=huge_data), "InvalidPropertyValue", "data"),
        ("NUL in the password", add_body(cert, password="right-pass\x00word"), "InvalidPropertyValue", "password"),
        ("NUL in the data", add_body(cert, data=cert["pfx"][:40] + "\x00" + cert["pfx"][40:]),
         "InvalidPropertyValue", "data"),
        ("NUL in the thumbprint", add_body(cert, thumbprint="ab\x00cd"), "InvalidPropertyValue", "thumbprint"),
        ("not hex", add_body(cert, thumbprint="z" * 40), "InvalidPropertyValue", "thumbprint"),
        ("md5", add_body(cert, thumbprintAlgorithm="md5"), "InvalidPropertyValue", "thumbprintAlgorithm"),
        ("unknown format", add_body(cert, certificateFormat="pem"), "InvalidPropertyValue", "certificateFormat"),
        ("no data", add_body(cert, data=None), "MissingRequiredProperty", "data"),
        ("data not a string", add_body(cert, data=12), "InvalidPropertyValue", "data"),
        ("unknown property", add_body(cert, privateKey="x"), "InvalidRequestBody", "privateKey"),
    ]


def test_bad_certificates_are_refused_with_batch_codes_and_change_nothing(shoal: Any) -> None:
    before = listed(shoal)
    for label, body, code, name in _bad_cases():
        response = send(shoal, "POST", "/certificates", body)
        error = assert_batch_error(response, 400, code)
        assert any(v["value"] == name or v["value"].startswith(name) for v in error.get("values", [])), (label, error)
        if isinstance(body.get("password"), str) and len(body["password"]) > 3:
            assert body["password"] not in response.text, label
    assert send(shoal, "POST", "/certificates", b"{not json").status_code == 400
    assert listed(shoal) == before


def test_a_pfx_too_costly_to_open_is_refused_without_holding_up_the_server(shoal: Any) -> None:
    import threading
    import time

    from shoal.service.pfx import OPEN_TIMEOUT_S

    cert = make_certificate("costly", "costly-pass")
    answer: list[Any] = []
    started = time.monotonic()
    adding = threading.Thread(target=lambda: answer.append(
        send(shoal, "POST", "/certificates", add_body(cert, data=_costly_pfx(cert)))))
    adding.start()
    time.sleep(0.3)
    # Meanwhile the server answers reads and writes at once.
    quick = time.monotonic()
    assert send(shoal, "GET", "/certificates").status_code == 200
    other = make_certificate("meanwhile")
    assert send(shoal, "POST", "/certificates", add_body(other, "cer")).status_code == 201
    assert time.monotonic() - quick < 2
    adding.join(30)
    error = assert_batch_error(answer[0], 400, "InvalidPropertyValue")
    reason = next(v["value"] for v in error["values"] if v["key"] == "Reason")
    assert "too costly" in reason or "limits" in reason, reason
    assert time.monotonic() - started < OPEN_TIMEOUT_S + 3
    assert state_of(shoal, cert["thumbprint"]) is None


def test_duplicates_unknown_ones_and_later_api_versions(shoal: Any) -> None:
    cert = make_certificate("dup")
    assert send(shoal, "POST", "/certificates", add_body(cert, "cer")).status_code == 201
    assert_batch_error(send(shoal, "POST", "/certificates", add_body(cert, "cer")), 409, "CertificateExists")
    assert_batch_error(send(shoal, "GET", key_path("ab" * 20)), 404, "CertificateNotFound")
    assert_batch_error(send(shoal, "DELETE", key_path("ab" * 20)), 404, "CertificateNotFound")
    # Certificates left the API with 2024-07-01.20.0: there they are paths Batch does not have.
    for version in ("2024-07-01.20.0", "2025-06-01"):
        assert_batch_error(send(shoal, "GET", "/certificates", version=version), 404, "InvalidUri")
        assert_batch_error(send(shoal, "POST", "/certificates", add_body(cert, "cer"), version), 404, "InvalidUri")
    unsigned = rest.call(shoal, "GET", "/certificates", api_version=V19, sign=False)
    assert_batch_error(unsigned, 401, "AuthenticationFailed")


def test_a_referenced_certificate_fails_to_delete_until_the_pool_lets_go(shoal: Any) -> None:
    cert = make_certificate("held", "held-pass")
    assert send(shoal, "POST", "/certificates", add_body(cert)).status_code == 201
    refs = [{"thumbprint": cert["thumbprint"].upper(), "thumbprintAlgorithm": "sha1", "visibility": ["task"]}]
    assert send(shoal, "POST", "/pools", pool_body("held-pool", refs)).status_code == 201
    pool = send(shoal, "GET", "/pools/held-pool").json()
    assert pool["certificateReferences"] == [{"thumbprint": cert["thumbprint"], "thumbprintAlgorithm": "sha1",
                                              "storeLocation": "CurrentUser", "storeName": "My",
                                              "visibility": ["task"]}]
    assert_batch_error(send(shoal, "POST", f"{key_path(cert['thumbprint'])}/canceldelete"), 409,
                       "CertificateStateActive")
    assert send(shoal, "DELETE", key_path(cert["thumbprint"])).status_code == 202
    wait_for(lambda: state_of(shoal, cert["thumbprint"]) == "deletefailed", timeout=10)
    failed = send(shoal, "GET", key_path(cert["thumbprint"])).json()
    assert failed["previousState"] == "deleting"
    assert failed["deleteCertificateError"]["code"] == "CertificateDeleteFailed"
    assert failed["deleteCertificateError"]["values"] == [{"name": "Pools", "value": "held-pool"}]
    assert send(shoal, "POST", f"{key_path(cert['thumbprint'])}/canceldelete").status_code == 204
    again = send(shoal, "GET", key_path(cert["thumbprint"])).json()
    assert again["state"] == "active" and "deleteCertificateError" not in again
    # PATCH replaces the references when given, and refuses unknown ones, changing nothing.
    unknown = [{"thumbprint": "ef" * 20, "thumbprintAlgorithm": "sha1"}]
    assert_batch_error(send(shoal, "PATCH", "/pools/held-pool", {"certificateReferences": unknown}), 409,
                       "InvalidCertificateReferences")
    assert send(shoal, "PATCH", "/pools/held-pool", {"metadata": [{"name": "a", "value": "b"}]}).status_code == 200
    assert [r["thumbprint"] for r in send(shoal, "GET", "/pools/held-pool").json()["certificateReferences"]] == [
        cert["thumbprint"]]
    # Once no pool references it, the deletion goes through.
    update = {"metadata": [], "applicationPackageReferences": [], "certificateReferences": []}
    assert send(shoal, "POST", "/pools/held-pool/updateproperties", update).status_code == 204
    assert send(shoal, "GET", "/pools/held-pool").json()["certificateReferences"] == []
    assert send(shoal, "DELETE", key_path(cert["thumbprint"])).status_code == 202
    gone_or_deleting = state_of(shoal, cert["thumbprint"])
    assert gone_or_deleting in ("deleting", None)
    if gone_or_deleting == "deleting":
        # As recorded (batchservice-tests.json): cancel and delete refused while it is deleted.
        for method, path in (("POST", f"{key_path(cert['thumbprint'])}/canceldelete"),
                             ("DELETE", key_path(cert["thumbprint"]))):
            status = send(shoal, method, path)
            assert status.status_code in (409, 404), status.text
    wait_for(lambda: state_of(shoal, cert["thumbprint"]) is None, timeout=10)


def test_pools_refuse_unknown_or_malformed_certificate_references(shoal: Any) -> None:
    unknown = [{"thumbprint": "cd" * 20, "thumbprintAlgorithm": "sha1"}]
    assert_batch_error(send(shoal, "POST", "/pools", pool_body("p-unknown-cert", unknown)), 409,
                       "InvalidCertificateReferences")
    assert send(shoal, "GET", "/pools/p-unknown-cert").status_code == 404
    cert = make_certificate("ref-checks")
    assert send(shoal, "POST", "/certificates", add_body(cert, "cer")).status_code == 201
    good = {"thumbprint": cert["thumbprint"], "thumbprintAlgorithm": "sha1"}
    for bad, name in ((dict(good, visibility=["everyone"]), "certificateReferences[0].visibility[0]"),
                      (dict(good, storeLocation="nowhere"), "certificateReferences[0].storeLocation"),
                      (dict(good, thumbprintAlgorithm="md5"), "certificateReferences[0].thumbprintAlgorithm"),
                      (dict(good, thumbprint="xyz"), "certificateReferences[0].thumbprint")):
        error = assert_batch_error(send(shoal, "POST", "/pools", pool_body("p-bad-ref", [bad])), 400,
                                   "InvalidPropertyValue")
        assert {"key": "PropertyName", "value": name} in error["values"], error
    too_many = [dict(good, thumbprint=f"{i:040x}") for i in range(13)]
    assert_batch_error(send(shoal, "POST", "/pools", pool_body("p-bad-ref", too_many)), 400, "InvalidPropertyValue")
    assert send(shoal, "GET", "/pools/p-bad-ref").status_code == 404
    # Unknown to later api-versions.
    later = rest.call(shoal, "POST", "/pools", body=json.dumps(pool_body("p-bad-ref", [good])).encode())
    assert_batch_error(later, 400, "InvalidRequestBody")
    # A job's auto pool is checked the same way.
    auto = {"vmSize": "standard_d2s_v3", "virtualMachineConfiguration": IMAGE}

    def job(job_id: str, refs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": job_id, "poolInfo": {"autoPoolSpecification": {
            "poolLifetimeOption": "job", "pool": {**auto, "certificateReferences": refs}}}}

    assert_batch_error(send(shoal, "POST", "/jobs", job("j-unknown-cert", unknown)), 409,
                       "InvalidCertificateReferences")
    assert send(shoal, "GET", "/jobs/j-unknown-cert").status_code == 404
    assert send(shoal, "POST", "/jobs", job("j-cert", [good])).status_code == 201
    shown = send(shoal, "GET", "/jobs/j-cert").json()["poolInfo"]["autoPoolSpecification"]["pool"]
    assert [r["thumbprint"] for r in shown["certificateReferences"]] == [cert["thumbprint"]]
    assert "certificateReferences" not in rest.call(shoal, "GET", "/jobs/j-cert").json()["poolInfo"][
        "autoPoolSpecification"]["pool"]
    assert_batch_error(rest.call(shoal, "POST", "/jobs", body=json.dumps(job("j-later", [good])).encode()), 400,
                       "InvalidRequestBody")


def _ssh(host: str, port: int, user: str, password: str, command: str) -> str:
    import asyncssh

    async def go() -> str:
        async with asyncssh.connect(host, port, username=user, password=password, known_hosts=None, client_keys=[],
                                    agent_path=None, preferred_auth="password", login_timeout=10) as conn:
            return str((await conn.run(command, timeout=20)).stdout)

    return asyncio.run(go())


def _der_children(content: bytes) -> list[bytes]:
    """The TLVs of a DER SEQUENCE's content, each whole."""
    out, i = [], 0
    while i < len(content):
        start, size = i, content[i + 1]
        i += 2
        if size & 0x80:
            count = size & 0x7F
            size, i = int.from_bytes(content[i:i + count], "big"), i + count
        out.append(content[start:i + size])
        i += size
    return out


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    head = bytes([size]) if size < 0x80 else bytes([0x80 | 2]) + size.to_bytes(2, "big")
    return bytes([tag]) + head + content


def _content(tlv: bytes) -> bytes:
    return tlv[2 + (tlv[1] & 0x7F if tlv[1] & 0x80 else 0):]


def _costly_pfx(cert: dict[str, Any]) -> str:
    """The pfx with its MAC's iteration count set to 2^31 - 1: hours of key derivation to open."""
    version, auth_safe, mac_data = _der_children(_content(cert["pfxBytes"]))
    digest, salt, _iterations = _der_children(_content(mac_data))
    patched = _der(0x30, digest + salt + _der(0x02, (2**31 - 1).to_bytes(4, "big")))
    return base64.b64encode(_der(0x30, version + auth_safe + patched)).decode()


def _script(*lines: str) -> str:
    return "/bin/sh -c '" + "; ".join(lines) + "'"


def _readable(path: str, label: str) -> str:
    return f"if cat {path} >/dev/null 2>&1; then echo {label}-readable; else echo {label}-denied; fi"


@pytest.mark.skipif(os.geteuid() != 0, reason="per-user certificate folders need the agent to run as root")
def test_nodes_install_certificates_for_the_tasks_their_visibility_names(shoal: Any, client: Any) -> None:
    """A cer for tasks, a pfx for the start task only and a pfx for tasks: each task's
    AZ_BATCH_CERTIFICATES_DIR holds what it may see, readable by its own user alone; a task reads
    neither the start task's private key nor another task's."""
    from azure.batch import models

    public = make_certificate("for-tasks")
    boot = make_certificate("for-start-task", "boot-pass")
    private = make_certificate("for-tasks-private", "task-pass")
    for cert, certificate_format in ((public, "cer"), (boot, "pfx"), (private, "pfx")):
        assert send(shoal, "POST", "/certificates", add_body(cert, certificate_format)).status_code == 201
    tp_public, tp_boot, tp_private = public["thumbprint"], boot["thumbprint"], private["thumbprint"]
    refs = [{"thumbprint": tp_public, "thumbprintAlgorithm": "sha1", "visibility": ["task"]},
            {"thumbprint": tp_boot, "thumbprintAlgorithm": "sha1", "visibility": ["starttask"]},
            {"thumbprint": tp_private, "thumbprintAlgorithm": "sha1", "visibility": ["task", "remoteuser"]}]
    start = {"commandLine": _script("ls $AZ_BATCH_CERTIFICATES_DIR", "cat $AZ_BATCH_CERTIFICATES_DIR/*.pw"),
             "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}, "waitForSuccess": True}
    created = send(shoal, "POST", "/pools", pool_body("cert-nodes", refs, targetDedicatedNodes=1, startTask=start))
    assert created.status_code == 201, created.text
    node = wait_for(lambda: next((n for n in send(shoal, "GET", "/pools/cert-nodes/nodes").json()["value"]
                                  if n["state"] == "idle"), None), timeout=30, message="an idle node")
    assert {r["thumbprint"] for r in node["certificateReferences"]} == {tp_public, tp_boot, tp_private}
    start_out = b"".join(client.download_node_file("cert-nodes", node["id"], "startup/stdout.txt")).decode()
    assert start_out.split() == [f"sha1-{tp_boot}.pfx", f"sha1-{tp_boot}.pfx.pw", "boot-pass"]

    client.create_job(models.BatchJobCreateOptions(id="cert-job", pool_info=models.BatchPoolInfo(pool_id="cert-nodes")))
    task_user = models.UserIdentity(auto_user=models.AutoUserSpecification(
        scope=models.AutoUserScope.TASK, elevation_level=models.ElevationLevel.NON_ADMIN))
    boot_key = f"$AZ_BATCH_NODE_STARTUP_DIR/certs/sha1-{tp_boot}.pfx"
    client.create_task("cert-job", models.BatchTaskCreateOptions(id="first", user_identity=task_user, command_line=_script(
        "ls -l $AZ_BATCH_CERTIFICATES_DIR | tail -n +2 | cut -c1-10", "ls $AZ_BATCH_CERTIFICATES_DIR",
        f"sha1sum < $AZ_BATCH_CERTIFICATES_DIR/sha1-{tp_public}.cer",
        _readable(f"$AZ_BATCH_CERTIFICATES_DIR/sha1-{tp_private}.pfx", "own-key"),
        _readable(boot_key, "start-task-key"))))
    wait_for(lambda: client.get_task("cert-job", "first").state == "completed", timeout=30)
    first = b"".join(client.download_task_file("cert-job", "first", "stdout.txt")).decode().split("\n")
    assert first[:3] == ["-rw-------"] * 3, first
    assert first[3:6] == sorted([f"sha1-{tp_private}.pfx", f"sha1-{tp_private}.pfx.pw", f"sha1-{tp_public}.cer"])
    assert first[6].split()[0] == hashlib.sha1(public["der"]).hexdigest()  # noqa: S324
    assert first[7:9] == ["own-key-readable", "start-task-key-denied"]
    # Another task's user cannot read the first task's private key either.
    others_key = f"$AZ_BATCH_NODE_ROOT_DIR/workitems/cert-job/job-1/first/certs/sha1-{tp_private}.pfx"
    client.create_task("cert-job", models.BatchTaskCreateOptions(id="second", user_identity=task_user,
                                                                  command_line=_script(_readable(others_key, "other"))))
    wait_for(lambda: client.get_task("cert-job", "second").state == "completed", timeout=30)
    assert b"".join(client.download_task_file("cert-job", "second", "stdout.txt")) == b"other-denied\n"

    # A remote user gets the certificates for remote users in ~/certs, its own alone.
    client.create_node_user("cert-nodes", node["id"], models.BatchNodeUserCreateOptions(name="carol",
                                                                                         password="carol-pw"))
    settings = client.get_node_remote_login_settings("cert-nodes", node["id"])
    session = _ssh(settings.remote_login_ip_address, settings.remote_login_port, "carol", "carol-pw",
                   "ls -l ~/certs | tail -n +2 | cut -c1-10; ls ~/certs; " + _readable(boot_key, "start-task-key"))
    assert session.split("\n")[:5] == ["-rw-------"] * 2 + sorted(
        [f"sha1-{tp_private}.pfx", f"sha1-{tp_private}.pfx.pw"]) + ["start-task-key-denied"], session

    # Changed references reach the node when it boots again, as on Azure; until then the node
    # keeps what it installed, and a certificate it holds cannot be deleted.
    later = make_certificate("added-later")
    assert send(shoal, "POST", "/certificates", add_body(later, "cer")).status_code == 201
    new_refs = [{"thumbprint": later["thumbprint"], "thumbprintAlgorithm": "sha1"}]
    update = {"startTask": start, "metadata": [], "applicationPackageReferences": [], "certificateReferences": new_refs}
    assert send(shoal, "POST", "/pools/cert-nodes/updateproperties", update).status_code == 204
    node_path = f"/pools/cert-nodes/nodes/{node['id']}"
    assert {r["thumbprint"] for r in send(shoal, "GET", node_path).json()["certificateReferences"]} == {
        tp_public, tp_boot, tp_private}
    assert send(shoal, "DELETE", key_path(tp_boot)).status_code == 202
    wait_for(lambda: state_of(shoal, tp_boot) == "deletefailed", timeout=10)
    holders = send(shoal, "GET", key_path(tp_boot)).json()["deleteCertificateError"]["values"]
    assert holders == [{"name": "ComputeNodes", "value": node["id"]}]
    assert send(shoal, "POST", f"{node_path}/reboot", {}).status_code == 202
    wait_for(lambda: send(shoal, "GET", node_path).json()["state"] == "idle"
             and [r["thumbprint"] for r in send(shoal, "GET", node_path).json()["certificateReferences"]]
             == [later["thumbprint"]], timeout=30, message="the rebooted node with the new certificate")
    assert send(shoal, "DELETE", key_path(tp_boot)).status_code == 202
    wait_for(lambda: state_of(shoal, tp_boot) is None, timeout=10)
    client.create_task("cert-job", models.BatchTaskCreateOptions(id="third", user_identity=task_user,
                                                                  command_line=_script("ls $AZ_BATCH_CERTIFICATES_DIR")))
    wait_for(lambda: client.get_task("cert-job", "third").state == "completed", timeout=30)
    assert b"".join(client.download_task_file("cert-job", "third", "stdout.txt")).decode().split() == [
        f"sha1-{later['thumbprint']}.cer"]

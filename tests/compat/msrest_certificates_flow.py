"""Certificates with azure-batch 14.2.0 (api-version 2024-02-01.19.0, the last SDK that has them).

Runs in the SDK's own virtual environment: `python msrest_certificates_flow.py ENDPOINT ACCOUNT KEY`
with a JSON object on stdin holding the test certificates (made by the test with `cryptography`,
which this venv need not have): {"pfx": {data, password, thumbprint}, "cer": {data, thumbprint}}.
Prints one line per step that passed; exits non-zero at the first that does not.
"""

import json
import sys
import time

import azure.batch.models as m
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials

endpoint, account, key = sys.argv[1:4]
certs = json.load(sys.stdin)
client = BatchServiceClient(SharedKeyCredentials(account, key), batch_url=endpoint)
pfx, cer = certs["pfx"], certs["cer"]


def error_code(call, *args):
    try:
        call(*args)
    except m.BatchErrorException as exc:
        return exc.error.code
    raise AssertionError(f"{call.__name__} did not fail")


def wait_state(thumbprint, state):
    deadline = time.time() + 20
    while True:
        current = client.certificate.get("sha1", thumbprint)
        if current.state == state:
            return current
        assert time.time() < deadline, (current.state, state)
        time.sleep(0.1)


client.certificate.add(m.CertificateAddParameter(
    thumbprint=pfx["thumbprint"].upper(), thumbprint_algorithm="sha1", data=pfx["data"],
    certificate_format=m.CertificateFormat.pfx, password=pfx["password"]))
client.certificate.add(m.CertificateAddParameter(
    thumbprint=cer["thumbprint"], thumbprint_algorithm="sha1", data=cer["data"],
    certificate_format=m.CertificateFormat.cer))
print("added")

listed = {c.thumbprint: c for c in client.certificate.list()}
assert set(listed) >= {pfx["thumbprint"], cer["thumbprint"]}, listed
got = client.certificate.get("sha1", pfx["thumbprint"])
assert got.state == m.CertificateState.active and got.public_data == pfx["publicData"], got
assert got.delete_certificate_error is None and got.previous_state is None
assert not hasattr(got, "password") and not hasattr(got, "data")
selected = list(client.certificate.list(m.CertificateListOptions(
    filter=f"thumbprint eq '{cer['thumbprint']}'", select="thumbprint,state")))
assert [(c.thumbprint, c.state, c.public_data) for c in selected] == [(cer["thumbprint"], "active", None)]
print("listed")

assert error_code(client.certificate.add, m.CertificateAddParameter(
    thumbprint=pfx["thumbprint"], thumbprint_algorithm="sha1", data=pfx["data"], password=pfx["password"],
    certificate_format="pfx")) == "CertificateExists"
assert error_code(client.certificate.get, "sha1", "0" * 40) == "CertificateNotFound"
assert error_code(client.certificate.cancel_deletion, "sha1", pfx["thumbprint"]) == "CertificateStateActive"
print("refused")

image = m.ImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts",
                         version="latest")
client.pool.add(m.PoolAddParameter(
    id="sdk14-certs", vm_size="STANDARD_D2S_V3", target_dedicated_nodes=0,
    virtual_machine_configuration=m.VirtualMachineConfiguration(image_reference=image,
                                                                node_agent_sku_id="batch.node.ubuntu 22.04"),
    certificate_references=[m.CertificateReference(thumbprint=pfx["thumbprint"], thumbprint_algorithm="sha1",
                                                   visibility=[m.CertificateVisibility.task])]))
refs = client.pool.get("sdk14-certs").certificate_references
assert [(r.thumbprint, r.visibility, r.store_location) for r in refs] == [
    (pfx["thumbprint"], ["task"], "currentuser")], refs
print("referenced")

client.certificate.delete("sha1", pfx["thumbprint"])
failed = wait_state(pfx["thumbprint"], m.CertificateState.delete_failed)
assert failed.delete_certificate_error.code == "CertificateDeleteFailed", failed.delete_certificate_error
assert {(v.name, v.value) for v in failed.delete_certificate_error.values} == {("Pools", "sdk14-certs")}
assert failed.previous_state == m.CertificateState.deleting
client.certificate.cancel_deletion("sha1", pfx["thumbprint"])
assert client.certificate.get("sha1", pfx["thumbprint"]).state == m.CertificateState.active
client.certificate.delete("sha1", cer["thumbprint"])
deadline = time.time() + 20
while cer["thumbprint"] in {c.thumbprint for c in client.certificate.list()}:
    assert time.time() < deadline, "the unreferenced certificate was not deleted"
    time.sleep(0.1)
print("deleted")
print("certificates flow ok")

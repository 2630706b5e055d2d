"""Certificates (semantics §2.8, §5.6): the account's certificates, the pools that reference them
and what their nodes are sent.

A certificate is `active` once added. Delete makes it `deleting`; the lifecycle duty
(`finish_deletions`) then removes it, or, while a pool references it or a node has it installed
(nodes install certificates only when they boot), puts it in `deletefailed` with a
`deleteCertificateError` naming them; cancel-delete takes it from `deletefailed` back to `active`
(recorded: test_batch.pyTestBatchtest_batch_certificates[sync].json, batchservice-tests.json).

What is secret: a pfx and its password. They are kept as given, sent only to the agents of nodes
whose pool references the certificate (the agent protocol, node token), and never returned,
logged or put in an error: answers show only `publicData`, the certificate itself (DER, base64).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, select, update

from shoal import clock
from shoal.errors import BatchError, Conflict, InvalidProperty, MissingProperty, NotFound
from shoal.service import pfx, request_body
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import certificates, nodes, pools
from shoal.store.sealing import Sealer, purpose

ACTIVE, DELETING, DELETE_FAILED = "active", "deleting", "deletefailed"
ALGORITHM = "sha1"
FORMATS = ("pfx", "cer")
VISIBILITIES = ("starttask", "task", "remoteuser")
STORE_LOCATIONS = ("currentuser", "localmachine")
# "The maximum size is 10KB" (Certificate_Add): of the certificate, not of its base64 text.
MAX_DATA_BYTES = 10 * 1024
MAX_PASSWORD_CHARS = 1024
MAX_REFERENCES_PER_POOL = 12
_SECRET = ("data", "password")
_HEX = frozenset("0123456789abcdef")
# deleteCertificateError lists "about the first hundred" resources that hold the certificate.
_MAX_LISTED_HOLDERS = 100


class CertificateNotFound(NotFound):
    code = "CertificateNotFound"


def _being_deleted() -> Conflict:
    return Conflict("The specified certificate has been marked for deletion and is being deleted.",
                    code="CertificateBeingDeleted")


def normal_thumbprint(value: str) -> str:
    """A thumbprint as stored and shown: spaces removed (Batch allows them), lower case."""
    return value.replace(" ", "").lower()


def _thumbprint(body: dict[str, Any], path: str = "thumbprint") -> str:
    raw = v.string(body, "thumbprint", required=True, max_len=128, path=path)
    assert raw is not None
    thumbprint = normal_thumbprint(raw)
    if not thumbprint or len(thumbprint) > 40 or not set(thumbprint) <= _HEX:
        raise InvalidProperty(path, raw[:64], "The thumbprint must be a sequence of up to 40 hex digits.")
    return thumbprint


def _algorithm(body: dict[str, Any], path: str = "thumbprintAlgorithm") -> str:
    raw = v.string(body, "thumbprintAlgorithm", required=True, max_len=16, path=path)
    assert raw is not None
    if raw.lower() != ALGORITHM:
        raise InvalidProperty(path, raw, "The thumbprint algorithm must be sha1.")
    return ALGORITHM


def _decoded(data: str) -> bytes:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidProperty("data", "…", "The certificate data is not valid base64.") from exc
    if not raw:
        raise InvalidProperty("data", "…", "The certificate data is empty.")
    if len(raw) > MAX_DATA_BYTES:
        raise InvalidProperty("data", f"{len(raw)} bytes",
                              f"The certificate data must be at most {MAX_DATA_BYTES} bytes.")
    return raw


def _certificate_der(raw: bytes, certificate_format: str, password: str | None) -> bytes:
    """The certificate (DER) within `raw`, or Batch's 400 naming what is wrong. A pfx is opened
    with its password (in a child process, `pfx.py`), which is checked there and nowhere quoted."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    if certificate_format == "cer":
        for load in (x509.load_der_x509_certificate, x509.load_pem_x509_certificate):
            try:
                return load(raw).public_bytes(Encoding.DER)
            except ValueError:
                continue
        raise InvalidProperty("data", "…", "The certificate data is not an X.509 certificate (cer).")
    try:
        return pfx.certificate_der(raw, password or None)
    except pfx.PfxRefused as exc:
        raise InvalidProperty("password" if exc.password_wrong else "data", "…", exc.reason) from exc


def parse_add(body: Any) -> dict[str, Any]:
    """Validate a Certificate_Add body into what `add` stores. It touches no store, but may take
    seconds (a pfx is opened in a child process): the API runs it in a worker thread."""
    body = v.require_object(body)
    # The secrets are checked here, so that no error (a NUL, a wrong type) ever quotes them.
    request_body.check({k: value for k, value in body.items() if k not in _SECRET}, "certificate.create")
    for name in _SECRET:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidProperty(name, "…", "The value must be a string.")
        if value is not None and "\x00" in value:
            raise InvalidProperty(name, "…", "The value must not contain NUL characters.")
    thumbprint = _thumbprint(body)
    algorithm = _algorithm(body)
    certificate_format = v.choice(body, "certificateFormat", FORMATS, default="pfx")
    data = body.get("data")
    if not data:
        raise MissingProperty("data")
    password = body.get("password")
    if certificate_format == "cer" and password:
        raise InvalidProperty("password", "…", "A password must not be given for a certificate in cer format.")
    if password is not None and len(password) > MAX_PASSWORD_CHARS:
        raise InvalidProperty("password", "…", f"The password must be at most {MAX_PASSWORD_CHARS} characters.")
    raw = _decoded(data)
    der = _certificate_der(raw, certificate_format or "pfx", password)
    actual = hashlib.sha1(der).hexdigest()  # noqa: S324 - Batch names certificates by their SHA-1
    if actual != thumbprint:
        raise InvalidProperty("thumbprint", thumbprint, "The thumbprint does not match the certificate's SHA-1 "
                                                        f"thumbprint ({actual}).")
    is_pfx = certificate_format == "pfx"
    return {"thumbprint": thumbprint, "thumbprint_algorithm": algorithm, "format": certificate_format,
            "public_data": base64.b64encode(der).decode(), "private_data": data if is_pfx else None,
            "password": password if is_pfx else None}


def add(ctx: Context, certificate: dict[str, Any]) -> None:
    now = clock.now()
    with ctx.engine.begin() as conn:
        existing = _find(conn, ctx.account, certificate["thumbprint_algorithm"], certificate["thumbprint"])
        if existing is not None and existing.state == DELETING:
            raise _being_deleted()
        if existing is not None:
            raise Conflict("The specified certificate already exists.", code="CertificateExists")
        sealed = {column: ctx.sealer.seal(certificate[column], purpose(certificates, column))
                   for column in ("private_data", "password")}
        conn.execute(insert(certificates).values(account=ctx.account, state=ACTIVE, state_transition_time=now,
                                                 **{**certificate, **sealed}))


def _named(account: str, algorithm: str, thumbprint: str) -> Any:
    return and_(certificates.c.account == account, certificates.c.thumbprint_algorithm == algorithm.lower(),
                certificates.c.thumbprint == normal_thumbprint(thumbprint))


def _find(conn: Connection, account: str, algorithm: str, thumbprint: str) -> Any:
    return conn.execute(select(certificates).where(_named(account, algorithm, thumbprint))).first()


def _load(conn: Connection, ctx: Context, algorithm: str, thumbprint: str) -> Any:
    row = _find(conn, ctx.account, algorithm, thumbprint)
    if row is None:
        raise CertificateNotFound("The specified certificate does not exist.")
    return row


# What reads for answers select: never the pfx or its password.
_SHOWN = [column for column in certificates.c if column.name not in ("private_data", "password")]


def get(ctx: Context, algorithm: str, thumbprint: str) -> Any:
    with ctx.engine.connect() as conn:
        row = conn.execute(select(*_SHOWN).where(_named(ctx.account, algorithm, thumbprint))).first()
    if row is None:
        raise CertificateNotFound("The specified certificate does not exist.")
    return row


def list_all(ctx: Context) -> list[Any]:
    with ctx.engine.connect() as conn:
        return list(conn.execute(select(*_SHOWN).where(certificates.c.account == ctx.account)
                                 .order_by(certificates.c.thumbprint_algorithm, certificates.c.thumbprint)).all())


def _move(conn: Connection, row: Any, state: str, **values: Any) -> None:
    conn.execute(update(certificates).where(certificates.c.seq == row.seq).values(
        state=state, state_transition_time=clock.now(), previous_state=row.state,
        previous_state_transition_time=row.state_transition_time, **values))


def delete_certificate(ctx: Context, algorithm: str, thumbprint: str) -> None:
    """Certificate_Delete: `deleting` now; gone or `deletefailed` when the duty has looked."""
    with ctx.engine.begin() as conn:
        row = _load(conn, ctx, algorithm, thumbprint)
        if row.state == DELETING:
            raise _being_deleted()
        _move(conn, row, DELETING, delete_error=None)


def cancel_deletion(ctx: Context, algorithm: str, thumbprint: str) -> None:
    with ctx.engine.begin() as conn:
        row = _load(conn, ctx, algorithm, thumbprint)
        if row.state == DELETING:
            raise _being_deleted()
        if row.state == ACTIVE:
            raise Conflict("The specified certificate is in active state.", code="CertificateStateActive")
        _move(conn, row, ACTIVE, delete_error=None)


def _references(refs: Any) -> list[dict[str, Any]]:
    return [ref for ref in refs or [] if isinstance(ref, dict)]


def _holds(refs: Any, row: Any) -> bool:
    return any(normal_thumbprint(str(ref.get("thumbprint", ""))) == row.thumbprint
               and str(ref.get("thumbprintAlgorithm", "")).lower() == row.thumbprint_algorithm
               for ref in _references(refs))


def finish_deletions(ctx: Context) -> None:
    """The lifecycle duty: each `deleting` certificate goes, or fails to while it is in use."""
    with ctx.engine.begin() as conn:
        pending = conn.execute(select(certificates).where(certificates.c.state == DELETING)).all()
        for row in pending:
            account_pools = conn.execute(select(pools.c.seq, pools.c.id, pools.c.spec).where(
                pools.c.account == row.account)).all()
            holding_pools = [p.id for p in account_pools if _holds((p.spec or {}).get("certificateReferences"), row)]
            seqs = [p.seq for p in account_pools]
            holding_nodes = [n.id for n in conn.execute(select(nodes.c.id, nodes.c.certificate_references).where(
                nodes.c.pool_seq.in_(seqs), nodes.c.certificate_references.is_not(None))).all()
                if _holds(n.certificate_references, row)] if seqs else []
            if not holding_pools and not holding_nodes:
                conn.execute(delete(certificates).where(certificates.c.seq == row.seq))
                continue
            values = [{"name": "Pools", "value": pool_id} for pool_id in holding_pools[:_MAX_LISTED_HOLDERS]]
            values += [{"name": "ComputeNodes", "value": node_id}
                       for node_id in holding_nodes[:max(0, _MAX_LISTED_HOLDERS - len(values))]]
            _move(conn, row, DELETE_FAILED, delete_error={
                "code": "CertificateDeleteFailed",
                "message": "The certificate could not be deleted because it is still in use: pools reference "
                           "it or compute nodes have it installed (a node keeps it until it reboots).",
                "values": values})


# Pools' certificate references.

def parse_references(body: dict[str, Any], name: str = "certificateReferences") -> list[dict[str, Any]] | None:
    """A pool body's `certificateReferences`, validated and normalised (None when not given)."""
    if body.get(name) is None:
        return None
    refs = v.array(body, name)
    if len(refs) > MAX_REFERENCES_PER_POOL:
        raise InvalidProperty(name, len(refs), f"A pool can reference at most {MAX_REFERENCES_PER_POOL} "
                                               f"certificates.")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, ref in enumerate(refs):
        path = f"{name}[{index}]"
        if not isinstance(ref, dict):
            raise InvalidProperty(path, ref, "Each certificate reference must be a JSON object.")
        thumbprint = _thumbprint(ref, f"{path}.thumbprint")
        algorithm = _algorithm(ref, f"{path}.thumbprintAlgorithm")
        if thumbprint in seen:
            raise InvalidProperty(f"{path}.thumbprint", thumbprint, "A pool cannot reference a certificate twice.")
        seen.add(thumbprint)
        location = v.choice(ref, "storeLocation", STORE_LOCATIONS, path=f"{path}.storeLocation")
        store = v.string(ref, "storeName", max_len=256, path=f"{path}.storeName")
        visibility = [item.lower() if isinstance(item, str) else item
                      for item in v.array(ref, "visibility", path=f"{path}.visibility")]
        for position, item in enumerate(visibility):
            if item not in VISIBILITIES:
                raise InvalidProperty(f"{path}.visibility[{position}]", item,
                                      "The visibility must be one of starttask, task, remoteuser.")
        shown: dict[str, Any] = {"thumbprint": thumbprint, "thumbprintAlgorithm": algorithm}
        if location is not None:
            shown["storeLocation"] = location
        if store is not None:
            shown["storeName"] = store
        if ref.get("visibility") is not None:
            shown["visibility"] = list(dict.fromkeys(visibility))
        out.append(shown)
    return out


def check_references(conn: Connection, account: str, refs: list[dict[str, Any]] | None) -> None:
    """Every referenced certificate must be in the account and not being deleted."""
    missing = []
    for ref in refs or []:
        row = _find(conn, account, ref["thumbprintAlgorithm"], ref["thumbprint"])
        if row is None:
            missing.append(ref["thumbprint"])
        elif row.state == DELETING:
            raise _being_deleted()
    if missing:
        raise BatchError("One or more certificate references are not valid: the certificates are not present in "
                         "the Batch account.", code="InvalidCertificateReferences", status=409,
                         values={"thumbprint": ",".join(missing)})


def shown_reference(ref: dict[str, Any]) -> dict[str, Any]:
    """A reference with Batch's defaults (recorded: batchservice-tests.json, ComputeNode_List)."""
    return {"thumbprint": ref.get("thumbprint"), "thumbprintAlgorithm": ref.get("thumbprintAlgorithm"),
            "storeLocation": {"localmachine": "LocalMachine"}.get(str(ref.get("storeLocation")), "CurrentUser"),
            "storeName": ref.get("storeName") or "My",
            "visibility": list(ref.get("visibility") or VISIBILITIES)}


def for_node(conn: Connection, account: str, refs: Any, sealer: Sealer) -> list[dict[str, Any]]:
    """What a booting node installs: each referenced certificate's files and who may see them.
    A pfx travels with its password (opened here when the store keeps them sealed); the agent
    writes both only where the visibility allows."""
    out = []
    for ref in _references(refs):
        row = _find(conn, account, str(ref.get("thumbprintAlgorithm", ALGORITHM)), str(ref.get("thumbprint", "")))
        if row is None:
            continue
        out.append({"thumbprint": row.thumbprint, "thumbprintAlgorithm": row.thumbprint_algorithm,
                    "format": row.format, "publicData": row.public_data,
                    "pfxData": sealer.unseal(row.private_data, purpose(certificates, "private_data")),
                    "password": sealer.unseal(row.password, purpose(certificates, "password")),
                    "visibility": shown_reference(ref)["visibility"]})
    return out

"""Application packages (semantics §5.4): the account's applications and their versioned zips,
the `applicationPackageReferences` of pools and tasks, and what a node is sent to install them.

Applications are managed the way Azure's management plane manages them (create, update with
`displayName`/`allowUpdates`/`defaultVersion`, delete; a package per version, `pending` until
its zip is in the account's linked storage, then `active`), through Shoal's extension routes
(shoal/api/applications.py); the data plane only reads them (Application_List/Get list active
versions). A package's zip lives in the linked storage account; a node downloads it through a
short-lived read-only SAS of that one blob, so no storage key ever reaches a node.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, NamedTuple

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from shoal import clock, config, storage
from shoal.errors import BadRequest, BatchError, Conflict, InvalidProperty, MissingProperty, NotFound
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import application_packages, applications

# Azure's management-plane rules (Application_Create, ApplicationPackage_Create): names of at
# most 64 characters; an id of letters, digits, `_` and `-`; a version adds `.`.
MAX_NAME = 64
_APPLICATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VERSION = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
# An ARM id of an application, as Batch wants it on pools from 2024 (the spec's
# ApplicationPackageReference.applicationId); the last segment is the application's name.
_ARM_APPLICATION_ID = re.compile(r"/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.batch/"
                                 r"batchaccounts/[^/]+/applications/([^/]+)/?", re.IGNORECASE)
MAX_REFERENCES = 10
"""Batch's limit on the packages one pool or one task references (semantics §5.4)."""
MAX_PACKAGE_BYTES = 512 * 1024 * 1024
"""The largest zip Shoal stores for one version (Azure's own quota is of the same order)."""
MAX_APPLICATIONS = 200
MAX_PACKAGES_PER_APPLICATION = 40
"""Azure's default quotas (its "Batch service quotas and limits", other limits): they also bound
every read of an account's applications."""
PACKAGE_CONTAINER = "shoal-application-packages"
"""The linked storage container that holds every package's zip."""
PENDING = "pending"
ACTIVE = "active"
ZIP = "zip"


def not_found() -> NotFound:
    return NotFound("The specified application does not exist.", code="ApplicationNotFound")


def package_not_found() -> NotFound:
    return NotFound("The specified application package does not exist.", code="ApplicationPackageNotFound")


def no_linked_storage() -> Conflict:
    # Azure refuses packages on an account without a linked storage account (its docs: "To use
    # application packages, you need to link an Azure Storage account"); the code is Shoal's guess.
    return Conflict("The Batch account has no linked (auto) storage account: application packages cannot be "
                    "stored (start Shoal with --auto-storage).", code="AutoStorageNotConfigured")


def _quota_reached(what: str, limit: int) -> Conflict:
    # Named after Batch's own quota codes (PoolQuotaReached); the management plane's is not recorded.
    return Conflict(f"The {what} quota has been reached.", code="ApplicationQuotaReached",
                    values={"Quota": str(limit)})


def invalid_references(detail: str, application_id: str) -> BatchError:
    """BatchErrorCodeStrings.InvalidApplicationPackageReferences: 'This occurs if the application
    id or version does not exist or is not active, or if the reference did not specify a version
    and there is no default version configured.' 409 per the spec (ApplicationPackageReference)."""
    return BatchError(f"One or more application package references could not be satisfied: {detail}",
                      code="InvalidApplicationPackageReferences", status=409,
                      values={"ApplicationId": application_id[:MAX_NAME]})


def check_application_id(application_id: str) -> str:
    if not _APPLICATION_ID.fullmatch(application_id):
        raise InvalidProperty("applicationId", application_id[:256], "An application id has 1 to 64 letters, "
                              "digits, underscores and hyphens.")
    return application_id


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise InvalidProperty("version", version[:256], "A version has 1 to 64 letters, digits, underscores, "
                              "hyphens and periods, and does not start with a period.")
    return version


# ---- records ---------------------------------------------------------------------------------

class Application(NamedTuple):
    """An application with its packages (all states), oldest first."""

    row: Any
    packages: list[Any]

    @property
    def active_versions(self) -> list[str]:
        return [p.version for p in self.packages if p.state == ACTIVE]


def _find(conn: Connection, account: str, application_id: str) -> Any:
    return conn.execute(select(applications).where(applications.c.account == account,
                                                   applications.c.key == application_id.lower())).first()


def _version_of(application_seq: int, version: str) -> Any:
    """The condition naming one version of one application (versions compare without case)."""
    return and_(application_packages.c.application_seq == application_seq,
                application_packages.c.version_key == version.lower())


def _load(conn: Connection, account: str, application_id: str) -> Any:
    row = _find(conn, account, application_id)
    if row is None:
        raise not_found()
    return row


def _packages_of(conn: Connection, seqs: list[int]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {seq: [] for seq in seqs}
    if seqs:
        for package in conn.execute(select(application_packages).where(
                application_packages.c.application_seq.in_(seqs)).order_by(application_packages.c.seq)):
            out[package.application_seq].append(package)
    return out


def get(ctx: Context, application_id: str) -> Application:
    with ctx.engine.connect() as conn:
        row = _load(conn, ctx.account, application_id)
        return Application(row, _packages_of(conn, [row.seq])[row.seq])


def list_all(ctx: Context) -> list[Application]:
    """Every application of the account, by id (an account holds few: Azure's quota is 200)."""
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(applications).where(applications.c.account == ctx.account)
                            .order_by(applications.c.key)).all()
        packages = _packages_of(conn, [row.seq for row in rows])
        return [Application(row, packages[row.seq]) for row in rows]


# ---- management -------------------------------------------------------------------------------

def _settings(body: Any, *, creating: bool) -> dict[str, Any]:
    body = v.require_object(body if body is not None else {})
    values: dict[str, Any] = {}
    if "displayName" in body:
        values["display_name"] = v.string(body, "displayName", max_len=v.MAX_DISPLAY_NAME)
    allow = v.boolean(body, "allowUpdates", default=True if creating else None)
    if allow is not None:
        values["allow_updates"] = allow
    if "defaultVersion" in body:
        version = v.string(body, "defaultVersion", max_len=MAX_NAME)
        values["default_version"] = check_version(version) if version else None
    unknown = sorted(set(body) - {"displayName", "allowUpdates", "defaultVersion"})
    if unknown:
        raise InvalidProperty(unknown[0], "…", "The property is not an application setting.")
    return values


def _check_default(conn: Connection, seq: int, version: str | None) -> str | None:
    """The default version as stored (the package's own spelling); it must be an active package."""
    if version is None:
        return None
    package = conn.execute(select(application_packages).where(_version_of(seq, version))).first()
    if package is None or package.state != ACTIVE:
        raise InvalidProperty("defaultVersion", version, "The default version must be an active package of "
                              "the application.")
    return str(package.version)


def create(ctx: Context, application_id: str, body: Any) -> bool:
    """PUT: create the application, or replace the settings given; True when it is new."""
    check_application_id(application_id)
    with ctx.engine.begin() as conn:
        row = _find(conn, ctx.account, application_id)
        values = _settings(body, creating=row is None)
        if row is None:
            if values.get("default_version"):
                raise InvalidProperty("defaultVersion", values["default_version"],
                                      "A new application has no packages yet.")
            count = conn.execute(select(func.count()).select_from(applications).where(
                applications.c.account == ctx.account)).scalar_one()
            if count >= MAX_APPLICATIONS:
                raise _quota_reached("account's application", MAX_APPLICATIONS)
            conn.execute(insert(applications).values(
                account=ctx.account, id=application_id, key=application_id.lower(),
                display_name=values.get("display_name"), allow_updates=values["allow_updates"],
                default_version=None, etag=clock.new_etag(), last_modified=clock.now()))
            return True
        _apply(conn, row, values)
        return False


def update_settings(ctx: Context, application_id: str, body: Any) -> None:
    """PATCH: change the settings given."""
    with ctx.engine.begin() as conn:
        row = _load(conn, ctx.account, application_id)
        _apply(conn, row, _settings(body, creating=False))


def _apply(conn: Connection, row: Any, values: dict[str, Any]) -> None:
    if "default_version" in values:
        values["default_version"] = _check_default(conn, row.seq, values["default_version"])
    if values:
        conn.execute(update(applications).where(applications.c.seq == row.seq).values(
            etag=clock.new_etag(), last_modified=clock.now(), **values))


def delete_application(ctx: Context, application_id: str) -> list[tuple[str, str]]:
    """Delete the application and its packages; the blobs to remove once that is committed."""
    with ctx.engine.begin() as conn:
        row = _load(conn, ctx.account, application_id)
        blobs = [(p.blob_container, p.blob_name) for p in _packages_of(conn, [row.seq])[row.seq]]
        conn.execute(delete(application_packages).where(application_packages.c.application_seq == row.seq))
        conn.execute(delete(applications).where(applications.c.seq == row.seq))
    return blobs


class Upload(NamedTuple):
    """Where a package's zip is to be written, and the blob it replaces (removed once active)."""

    container: str
    blob: str
    replaced: tuple[str, str] | None


def begin_package(ctx: Context, application_id: str, version: str) -> Upload:
    """Record `version` as pending and name a fresh blob for its zip. An active version may be
    replaced only when the application allows updates (Azure's `allowUpdates`)."""
    check_version(version)
    if config.auto_storage_connection_string() is None:
        raise no_linked_storage()
    # Each upload gets a blob of its own: a node still downloading the zip it was sent keeps
    # reading the old one, and its installed copy knows it is out of date by the name.
    blob = f"{ctx.account}/{application_id.lower()}/{version.lower()}/{uuid.uuid4().hex}.zip"
    with ctx.engine.begin() as conn:
        row = _load(conn, ctx.account, application_id)
        package = conn.execute(select(application_packages).where(_version_of(row.seq, version))).first()
        if package is None:
            count = conn.execute(select(func.count()).select_from(application_packages).where(
                application_packages.c.application_seq == row.seq)).scalar_one()
            if count >= MAX_PACKAGES_PER_APPLICATION:
                raise _quota_reached("application's package", MAX_PACKAGES_PER_APPLICATION)
            conn.execute(insert(application_packages).values(
                application_seq=row.seq, version=version, version_key=version.lower(), state=PENDING,
                format=ZIP, blob_container=PACKAGE_CONTAINER, blob_name=blob, creation_time=clock.now()))
            return Upload(PACKAGE_CONTAINER, blob, None)
        if package.state == ACTIVE and not row.allow_updates:
            # Shoal's guess at the management plane's code: the records we hold do not show one.
            raise Conflict(f"The application does not allow updates: version {package.version} is already "
                           f"active and cannot be replaced.", code="ApplicationPackageUpdateNotAllowed")
    return Upload(PACKAGE_CONTAINER, blob, (package.blob_container, package.blob_name))


def activate_package(ctx: Context, application_id: str, version: str, upload: Upload, size: int) -> None:
    """The zip is in storage: the version is active, from its new blob."""
    with ctx.engine.begin() as conn:
        row = _load(conn, ctx.account, application_id)
        conn.execute(update(application_packages).where(_version_of(row.seq, version)).values(
            state=ACTIVE, blob_container=upload.container, blob_name=upload.blob, size_bytes=size,
            last_activation_time=clock.now()))
        conn.execute(update(applications).where(applications.c.seq == row.seq).values(
            etag=clock.new_etag(), last_modified=clock.now()))


def delete_package(ctx: Context, application_id: str, version: str) -> tuple[str, str]:
    """Delete one version (clearing the default if it was); its blob, to remove once committed."""
    with ctx.engine.begin() as conn:
        row = _load(conn, ctx.account, application_id)
        package = conn.execute(select(application_packages).where(_version_of(row.seq, version))).first()
        if package is None:
            raise package_not_found()
        conn.execute(delete(application_packages).where(application_packages.c.seq == package.seq))
        values: dict[str, Any] = {"etag": clock.new_etag(), "last_modified": clock.now()}
        if (row.default_version or "").lower() == version.lower():
            values["default_version"] = None
        conn.execute(update(applications).where(applications.c.seq == row.seq).values(**values))
        return package.blob_container, package.blob_name


# ---- references ------------------------------------------------------------------------------

def _reference_id(value: str) -> str:
    """A reference's application id: a bare id, or the ARM id Batch asks for on pools."""
    match = _ARM_APPLICATION_ID.fullmatch(value)
    return match.group(1) if match else value


def parse_references(body: dict[str, Any], name: str = "applicationPackageReferences") -> list[dict[str, Any]] | None:
    """A pool's or task's `applicationPackageReferences`, checked for shape (None when not given)."""
    if body.get(name) is None:
        return None
    refs = v.array(body, name)
    if len(refs) > MAX_REFERENCES:
        raise InvalidProperty(name, len(refs), f"At most {MAX_REFERENCES} application packages may be referenced.")
    seen: set[str] = set()
    out = []
    for index, ref in enumerate(refs):
        path = f"{name}[{index}]"
        if not isinstance(ref, dict):
            raise InvalidProperty(path, ref, "Each application package reference must be a JSON object.")
        application = v.string(ref, "applicationId", max_len=1024, path=f"{path}.applicationId")
        if not application:
            raise MissingProperty(f"{path}.applicationId")
        version = v.string(ref, "version", max_len=MAX_NAME, path=f"{path}.version")
        unknown = sorted(set(ref) - {"applicationId", "version"})
        if unknown:
            raise InvalidProperty(f"{path}.{unknown[0]}", "…", "The property is not part of a package reference.")
        if not _APPLICATION_ID.fullmatch(_reference_id(application)):
            raise InvalidProperty(f"{path}.applicationId", application[:256], "The value is not an application id.")
        if version is not None and not _VERSION.fullmatch(version):
            raise InvalidProperty(f"{path}.version", version, "The value is not an application package version.")
        key = _reference_id(application).lower()
        if key in seen:
            raise InvalidProperty(f"{path}.applicationId", application[:256],
                                  "An application can be referenced only once.")
        seen.add(key)
        out.append({"applicationId": application, **({"version": version} if version is not None else {})})
    return out


class Resolved(NamedTuple):
    """A reference as it stands now: the package it names, or why it names none."""

    application_id: str
    version: str | None
    by_default: bool
    package: Any
    problem: str | None


def resolve(conn: Connection, account: str, refs: list[dict[str, Any]] | None) -> list[Resolved]:
    out = []
    for ref in refs or []:
        wanted = _reference_id(ref["applicationId"])
        version = ref.get("version")
        row = _find(conn, account, wanted)
        if row is None:
            out.append(Resolved(wanted, version, version is None, None, f"application {wanted} does not exist"))
            continue
        by_default = version is None
        version = version if version is not None else row.default_version
        if version is None:
            out.append(Resolved(row.id, None, True, None,
                                f"application {row.id} has no default version and the reference names none"))
            continue
        package = conn.execute(select(application_packages).where(_version_of(row.seq, version))).first()
        if package is None or package.state != ACTIVE:
            out.append(Resolved(row.id, version, by_default, None,
                                f"application {row.id} has no active version {version}"))
            continue
        out.append(Resolved(row.id, package.version, by_default, package, None))
    return out


def check_references(conn: Connection, account: str, refs: list[dict[str, Any]] | None, *,
                     for_pool: bool) -> None:
    """A pool's references must all resolve (409 InvalidApplicationPackageReferences). A task's
    may lack a default version: per the spec that is a pre-processing failure when it runs, and
    so is a package deleted before then; a missing application or version is refused at once,
    as for a pool (Shoal's reading of InvalidApplicationPackageReferences)."""
    for item in resolve(conn, account, refs):
        if item.problem is None:
            continue
        if not for_pool and item.by_default and item.version is None and _find(conn, account, item.application_id):
            continue
        raise invalid_references(item.problem + ".", item.application_id)


def for_node(conn: Connection, account: str, refs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """What a node installs for these references: each package's id, version, whether it was
    asked for as the default, and a read-only SAS URL of its zip; or, for a reference that no
    longer resolves, the reason (the node fails the task or the boot with it)."""
    connection = config.auto_storage_connection_string()
    out: list[dict[str, Any]] = []
    for item in resolve(conn, account, refs):
        entry: dict[str, Any] = {"applicationId": item.application_id, "version": item.version,
                                 "isDefault": item.by_default}
        if item.problem is not None:
            entry["problem"] = item.problem
        elif connection is None:
            entry["problem"] = "the account has no linked storage account to download the package from"
        else:
            entry["packageId"] = item.package.blob_name.rsplit("/", 1)[-1].removesuffix(".zip")
            entry["url"] = storage.auto_storage_blob_url(connection, item.package.blob_container,
                                                         item.package.blob_name)
        out.append(entry)
    return out


def bad_upload(detail: str) -> BadRequest:
    return BadRequest(f"The application package is not a valid zip file: {detail}", code="InvalidApplicationPackage")

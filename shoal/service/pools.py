"""Pools: the Batch rules for creating, changing, resizing and deleting pools."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, insert, select, update

from shoal import clock
from shoal.errors import Conflict, InvalidProperty, MissingProperty, NotFound
from shoal.model import catalog, images
from shoal.model.states import AllocationState, NodeState, PoolState
from shoal.service import applications as application_service
from shoal.service import autoscale as autoscale_service
from shoal.service import certificates as certificate_service
from shoal.service import ids, quotas, request_body, task_files
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.service.pool_records import guard_not_deleting, load, pool_being_deleted
from shoal.store.schema import nodes, pool_node_counts, pools

MIN_RESIZE_TIMEOUT = timedelta(minutes=5)
DEFAULT_RESIZE_TIMEOUT = timedelta(minutes=15)
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
# Properties a client may set at creation that Shoal keeps verbatim in `spec` (and shows again).
KEPT_PROPERTIES = (
    "displayName", "virtualMachineConfiguration", "startTask", "userAccounts", "metadata",
    "targetNodeCommunicationMode", "upgradePolicy", "enableAutoScale", "autoScaleFormula", "autoScaleEvaluationInterval",
    # Multi-instance tasks of more than one instance run only on such a pool (service/multi_instance.py).
    "enableInterNodeCommunication",
)
# What Shoal's nodes do not carry out yet: refused when given (a non-empty value, or true), never
# stored and ignored. Empty lists pass, since some clients send them for "none".
UNSUPPORTED_ON_CREATE = (
    "cloudServiceConfiguration", "applicationLicenses",
    "mountConfiguration", "networkConfiguration", "resourceTags",
    "virtualMachineConfiguration.containerConfiguration", "virtualMachineConfiguration.dataDisks",
    "virtualMachineConfiguration.diskEncryptionConfiguration", "virtualMachineConfiguration.extensions",
    "virtualMachineConfiguration.licenseType", "virtualMachineConfiguration.nodePlacementConfiguration",
    "virtualMachineConfiguration.osDisk", "virtualMachineConfiguration.securityProfile",
    "virtualMachineConfiguration.serviceArtifactReference", "virtualMachineConfiguration.windowsConfiguration",
    "virtualMachineConfiguration.imageReference.virtualMachineImageId",
    "virtualMachineConfiguration.imageReference.sharedGalleryImageId",
    "virtualMachineConfiguration.imageReference.communityGalleryImageId",
)
_UNSUPPORTED_IN_START_TASK = ("containerSettings",)
# The ARM ids Batch accepts for a custom image: a managed image, or a Compute Gallery image
# (latest version) or image version. Anything else is malformed, whatever Shoal supports.
_IMAGE_ID_FORMATS = (
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Compute/images/{imageName}",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Compute/galleries/"
    "{galleryName}/images/{galleryImageName}/versions/{galleryImageVersionName}",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Compute/galleries/"
    "{galleryName}/images/{galleryImageName}",
)
_IMAGE_ID = re.compile(r"/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.compute/"
                       r"(images/[^/]+|galleries/[^/]+/images/[^/]+(/versions/[^/]+)?)/?", re.IGNORECASE)
# Pool properties the 2025-06-01 PATCH may change on an empty pool; Shoal does not change them.
_NOT_UPDATABLE = ("vmSize", "virtualMachineConfiguration", "taskSlotsPerNode", "taskSchedulingPolicy",
                  "networkConfiguration", "userAccounts", "mountConfiguration", "upgradePolicy",
                  "enableInterNodeCommunication")
_UNSUPPORTED_ON_UPDATE = ("resourceTags",)
# Node communication modes. Shoal's agents always talk to the service the "simplified" way
# (`currentNodeCommunicationMode`), but every target Batch knows is accepted and kept, as Azure
# accepts `classic` and shows it back (recorded: test_batch.pyTestBatchtest_batch_update_pools
# [sync].json #001/#004, test_batch.pyTestBatchtest_batch_create_pools[sync].json #001).
_COMMUNICATION_MODES = ("default", "simplified", "classic")
# Longer than any Marketplace publisher, offer, SKU or version name, and any node agent SKU id.
_MAX_IMAGE_FIELD = 256


def _validate_start_task(body: dict[str, Any], path: str = "startTask") -> dict[str, Any] | None:
    start = v.obj(body, "startTask", path=path)
    if start is None:
        return None
    v.command_line(start, path=f"{path}.commandLine")
    v.environment_settings(start, "environmentSettings", path=f"{path}.environmentSettings")
    v.integer(start, "maxTaskRetryCount", minimum=-1, path=f"{path}.maxTaskRetryCount")
    v.boolean(start, "waitForSuccess", path=f"{path}.waitForSuccess")
    v.user_identity(start, path=f"{path}.userIdentity")
    task_files.resource_files(start, path=f"{path}.resourceFiles")
    request_body.refuse_unsupported(start, _UNSUPPORTED_IN_START_TASK, root=path)
    return start


def _validate_vm_configuration(body: dict[str, Any]) -> None:
    """The image and node agent SKU must be a pair `/supportedimages` lists; anything else is
    Azure's 400 InvalidPropertyValue for an unsupported image or agent SKU (Azure refuses a
    mismatched pair the same way, hashicorp/terraform#36698)."""
    vmc = v.obj(body, "virtualMachineConfiguration")
    if vmc is None:
        raise MissingProperty("virtualMachineConfiguration")
    sku_path = "virtualMachineConfiguration.nodeAgentSKUId"
    sku = v.string(vmc, "nodeAgentSKUId", required=True, max_len=_MAX_IMAGE_FIELD, path=sku_path)
    image = v.obj(vmc, "imageReference", required=True, path="virtualMachineConfiguration.imageReference")
    assert image is not None and sku is not None
    for key in ("publisher", "offer", "sku", "version"):
        v.string(image, key, max_len=_MAX_IMAGE_FIELD, path=f"virtualMachineConfiguration.imageReference.{key}")
    if images.is_windows(sku, image):
        raise InvalidProperty(sku_path, sku, "Windows images and the Windows node agent are not supported: "
                                             "Shoal's nodes run the Linux host's operating system.")
    if not images.is_supported_node_agent(sku):
        raise InvalidProperty(sku_path, sku, "The specified node agent SKU is not supported.")
    listed = images.find_image(image)
    if listed is None:
        raise InvalidProperty("virtualMachineConfiguration.imageReference", image.get("sku"),
                              "The specified image reference is not supported.")
    if listed.node_agent.casefold() != sku.strip().casefold():
        raise InvalidProperty(sku_path, sku, f"The specified image is supported only with node agent SKU "
                                             f"'{listed.node_agent}'.")


def _validate_image_id(body: dict[str, Any]) -> None:
    """A custom image id is refused as Azure refuses one it cannot use, InvalidPropertyValue
    naming the format when it is malformed (recorded: test_batch.pyTestBatchtest_batch_create_pools
    [sync].json and azure-sdk-for-node/batchservice-tests.json, Pool_Add of an image pool)."""
    vmc = body.get("virtualMachineConfiguration")
    image = vmc.get("imageReference") if isinstance(vmc, dict) else None
    image_id = image.get("virtualMachineImageId") if isinstance(image, dict) else None
    if image_id is None:
        return
    if not (isinstance(image_id, str) and _IMAGE_ID.fullmatch(image_id)):
        raise InvalidProperty("virtualMachineImageId", image_id,
                              "The specified resource id must be of the format " + ", ".join(_IMAGE_ID_FORMATS[:-1])
                              + ", or " + _IMAGE_ID_FORMATS[-1])
    # Azure refuses a well-formed id of an image its account cannot use just the same (the
    # recorded managed-image id of batchservice-tests.json); a Shoal account can use none.
    raise InvalidProperty("virtualMachineImageId", image_id,
                          "The specified image cannot be used with this Batch account: Shoal's accounts belong "
                          "to no Azure subscription and have no custom images.")


def _validate_subnet(body: dict[str, Any]) -> None:
    """A subnet is refused as Azure refuses one its account cannot join, InvalidPropertyValue
    naming `subnetId` (recorded: test_batch.pyTestBatchtest_batch_create_pools[sync].json, a subnet
    of another subscription, at 2023-05-01.17.0 and 2025-06-01). A Shoal account has no virtual
    networks, so no subnet id names one it can join."""
    network = body.get("networkConfiguration")
    subnet_id = network.get("subnetId") if isinstance(network, dict) else None
    if subnet_id is not None:
        raise InvalidProperty("subnetId", subnet_id,
                              "The specified subnet cannot be used with this Batch account: Shoal's accounts belong "
                              "to no Azure subscription and have no virtual networks.")


def _validate_metadata(body: dict[str, Any]) -> None:
    v.name_value_pairs(body, "metadata")


def _validate_user_accounts(body: dict[str, Any]) -> None:
    seen: set[str] = set()
    for index, account in enumerate(v.array(body, "userAccounts")):
        path = f"userAccounts[{index}]"
        if not isinstance(account, dict):
            raise InvalidProperty(path, account, "Each user account must be a JSON object.")
        name = v.string(account, "name", required=True, max_len=v.MAX_USER_NAME, path=f"{path}.name")
        v.string(account, "password", required=True, path=f"{path}.password")
        v.choice(account, "elevationLevel", ("nonadmin", "admin"), path=f"{path}.elevationLevel")
        assert name is not None
        if name.lower() in seen:
            raise InvalidProperty(f"{path}.name", name, "Two user accounts of a pool cannot have the same name.")
        seen.add(name.lower())
        linux = v.obj(account, "linuxUserConfiguration", path=f"{path}.linuxUserConfiguration")
        if linux is not None:
            for key in ("uid", "gid"):
                v.integer(linux, key, minimum=0, path=f"{path}.linuxUserConfiguration.{key}")
        request_body.refuse_unsupported(account, ("windowsUserConfiguration",), root=path)


def _validate_communication_mode(body: dict[str, Any]) -> None:
    request_body.supported_choice(body, "targetNodeCommunicationMode", _COMMUNICATION_MODES,
                                  _COMMUNICATION_MODES, path="targetNodeCommunicationMode")


def resize_deadline(now: datetime, timeout: timedelta) -> datetime:
    """now + timeout, or the latest time there is for a timeout beyond it (Batch allows up to
    TimeSpan.MaxValue, which no calendar reaches)."""
    try:
        return now + timeout
    except OverflowError:
        return datetime.max.replace(tzinfo=now.tzinfo)


def create(ctx: Context, body: Any) -> None:
    add(ctx, parse_create(body))


def parse_create(body: Any) -> dict[str, Any]:
    """Validate a pool-create body into what `add` stores (pure: the API may run it off the loop)."""
    body = v.require_object(body)
    request_body.check(body, "pool.create")
    pool_id = v.resource_id(body)
    _validate_image_id(body)
    _validate_subnet(body)
    request_body.refuse_unsupported(body, UNSUPPORTED_ON_CREATE)
    vm_size_name = v.string(body, "vmSize", required=True)
    assert vm_size_name is not None
    size = catalog.find_vm_size(vm_size_name)
    if size is None:
        raise InvalidProperty("vmSize", vm_size_name, "The specified VM size is not supported.")
    _validate_vm_configuration(body)
    v.boolean(body, "enableInterNodeCommunication")
    v.string(body, "displayName", max_len=v.MAX_DISPLAY_NAME)
    slots = v.integer(body, "taskSlotsPerNode", default=1, minimum=1,
                      maximum=catalog.max_task_slots(size))
    assert slots is not None
    policy = v.obj(body, "taskSchedulingPolicy") or {}
    fill = v.choice(policy, "nodeFillType", ("spread", "pack"), default="spread",
                    path="taskSchedulingPolicy.nodeFillType")
    # Batch's "none" is the default order (by job priority); ordering by creation time is not done.
    request_body.supported_choice(policy, "jobDefaultOrder", ("none", "creationtime"), ("none",),
                                  path="taskSchedulingPolicy.jobDefaultOrder")
    upgrade = v.obj(body, "upgradePolicy")
    if upgrade is not None:
        # Nodes never get OS upgrades here, which is what the "manual" mode promises.
        request_body.supported_choice(upgrade, "mode", ("manual", "automatic", "rolling"), ("manual",),
                                      path="upgradePolicy.mode")
        request_body.refuse_unsupported(upgrade, ("automaticOSUpgradePolicy", "rollingUpgradePolicy"),
                                        root="upgradePolicy")
    autoscale = v.boolean(body, "enableAutoScale", default=False)
    target_dedicated = v.integer(body, "targetDedicatedNodes", minimum=0)
    target_spot = v.integer(body, "targetLowPriorityNodes", minimum=0)
    if autoscale:
        # Name the target actually given, so the client sees which property to drop.
        for name, value in (("targetDedicatedNodes", target_dedicated), ("targetLowPriorityNodes", target_spot)):
            if value is not None:
                raise InvalidProperty(name, value, "targetDedicatedNodes and targetLowPriorityNodes cannot be "
                                                   "specified when enableAutoScale is true.")
        autoscale_service.parse(body.get("autoScaleFormula"))
        autoscale_service.interval(body)
    if body.get("autoScaleFormula") is not None and not autoscale:
        raise InvalidProperty("autoScaleFormula", "…", "autoScaleFormula requires enableAutoScale to be true.")
    resize_timeout = v.duration(body, "resizeTimeout", minimum=MIN_RESIZE_TIMEOUT) or DEFAULT_RESIZE_TIMEOUT
    _validate_start_task(body)
    _validate_metadata(body)
    _validate_user_accounts(body)
    _validate_communication_mode(body)

    spec = {name: body[name] for name in KEPT_PROPERTIES if body.get(name) is not None}
    references = certificate_service.parse_references(body)
    if references:
        spec["certificateReferences"] = references
    packages = application_service.parse_references(body)
    if packages:
        spec["applicationPackageReferences"] = packages
    if autoscale:
        spec.setdefault("autoScaleEvaluationInterval",
                        clock.format_duration(autoscale_service.DEFAULT_INTERVAL))
    return {"id": pool_id, "vm_size": size.name, "slots": slots, "fill": fill,
            "targets": (target_dedicated or 0, target_spot or 0), "resize_timeout": resize_timeout, "spec": spec}


def add(ctx: Context, pool: dict[str, Any]) -> None:
    """Store a pool `parse_create` accepted, within the account's pool quota."""
    with ctx.engine.begin() as conn:
        insert_in(ctx, conn, pool)
    ctx.signals.wake_provider()


def insert_in(ctx: Context, conn: Connection, pool: dict[str, Any]) -> None:
    """Store a pool within `conn` (a job's auto pool is created in the job's transaction)."""
    pool_id, spec, targets, resize_timeout = pool["id"], pool["spec"], pool["targets"], pool["resize_timeout"]
    now = clock.now()
    exists = conn.execute(select(pools.c.state).where(
        pools.c.account == ctx.account, pools.c.key == pool_id.lower())).first()
    # Until a deleted pool is gone its id stays taken, and Batch says why (clients such as
    # doAzureParallel wait for the deletion on PoolBeingDeleted and then add the pool again).
    if exists and exists.state == PoolState.DELETING:
        raise pool_being_deleted()
    if exists:
        raise Conflict("The specified pool already exists.", code="PoolExists")
    quotas.check_pool_count(ctx, conn)
    certificate_service.check_references(conn, ctx.account, spec.get("certificateReferences"))
    application_service.check_references(conn, ctx.account, spec.get("applicationPackageReferences"), for_pool=True)
    conn.execute(insert(pools).values(
        account=ctx.account, id=pool_id, key=pool_id.lower(), state=PoolState.ACTIVE,
        allocation_state=AllocationState.RESIZING, vm_size=pool["vm_size"], slots_per_node=pool["slots"],
        fill_type=pool["fill"],
        target_dedicated=targets[0], target_low_priority=targets[1],
        resize_timeout_s=resize_timeout.total_seconds(), resize_deadline=resize_deadline(now, resize_timeout),
        deallocation_option="requeue", resize_errors=None, spec=spec, etag=clock.new_etag(),
        last_modified=now, creation_time=now, state_transition_time=now,
        allocation_state_transition_time=now, join_token=ids.token()))
    seq = conn.execute(select(pools.c.seq).where(pools.c.account == ctx.account,
                                                 pools.c.key == pool_id.lower())).scalar_one()
    autoscale_service.start_on_create(ctx, conn, seq)


def node_counts_by_pool(conn: Connection, pool_seqs: list[int]) -> dict[int, tuple[int, int]]:
    """(dedicated, spot) nodes per pool, counting nodes that are not leaving."""
    if not pool_seqs:
        return {}
    rows = conn.execute(
        select(nodes.c.pool_seq, nodes.c.is_dedicated, func.count())
        .where(nodes.c.pool_seq.in_(pool_seqs), nodes.c.state != NodeState.LEAVING_POOL)
        .group_by(nodes.c.pool_seq, nodes.c.is_dedicated)).all()
    out: dict[int, list[int]] = {seq: [0, 0] for seq in pool_seqs}
    for seq, dedicated, count in rows:
        out[seq][0 if dedicated else 1] = count
    return {seq: (d, s) for seq, (d, s) in out.items()}


class PoolRecord(NamedTuple):
    """A pool as the API shows it (shoal/api/render.py): its row and its current (dedicated,
    spot) node counts."""

    row: Any
    current: tuple[int, int]


def get(ctx: Context, pool_id: str) -> PoolRecord:
    with ctx.engine.connect() as conn:
        row = load(conn, ctx, pool_id)
        return PoolRecord(row, node_counts_by_pool(conn, [row.seq])[row.seq])


def etag_of(ctx: Context, pool_id: str) -> tuple[str, Any]:
    with ctx.engine.connect() as conn:
        row = load(conn, ctx, pool_id)
        return row.etag, row.last_modified


def list_all(ctx: Context) -> list[PoolRecord]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(pools).where(pools.c.account == ctx.account).order_by(pools.c.key)).all()
        counts = node_counts_by_pool(conn, [r.seq for r in rows])
        return [PoolRecord(r, counts[r.seq]) for r in rows]


def patch(ctx: Context, pool_id: str, body: Any) -> None:
    """PATCH: replace only the properties present."""
    body = v.require_object(body)
    request_body.check(body, "pool.patch")
    for name in _NOT_UPDATABLE:
        if body.get(name) is not None:
            raise request_body.not_supported(name, "Shoal cannot change it on an existing pool.")
    request_body.refuse_unsupported(body, _UNSUPPORTED_ON_UPDATE)
    if "startTask" in body:
        _validate_start_task(body)
    if "metadata" in body:
        _validate_metadata(body)
    v.string(body, "displayName", max_len=v.MAX_DISPLAY_NAME)
    _validate_communication_mode(body)
    references = certificate_service.parse_references(body)
    packages = application_service.parse_references(body)
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, pool_id)
        guard_not_deleting(row)
        certificate_service.check_references(conn, ctx.account, references)
        application_service.check_references(conn, ctx.account, packages, for_pool=True)
        spec = dict(row.spec)
        for name in ("startTask", "metadata", "targetNodeCommunicationMode", "displayName"):
            if body.get(name) is not None:
                spec[name] = body[name]
        if references is not None:
            spec["certificateReferences"] = references
        # Replaced as given (an empty list removes them); nodes install the new packages only
        # when they next boot, as on Azure (semantics §5.4).
        if packages is not None:
            _set_packages(spec, packages)
        _touch(conn, row, spec=spec)


def update_properties(ctx: Context, pool_id: str, body: Any) -> None:
    """POST updateproperties: replace the updatable properties; absent ones are cleared."""
    body = v.require_object(body)
    request_body.check(body, "pool.updateproperties")
    _validate_start_task(body)
    if "metadata" not in body:
        raise MissingProperty("metadata")
    if "applicationPackageReferences" not in body:
        raise MissingProperty("applicationPackageReferences")
    _validate_metadata(body)
    packages = application_service.parse_references(body) or []
    references = certificate_service.parse_references(body)
    _validate_communication_mode(body)
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, pool_id)
        guard_not_deleting(row)
        certificate_service.check_references(conn, ctx.account, references)
        application_service.check_references(conn, ctx.account, packages, for_pool=True)
        spec = dict(row.spec)
        for name in ("startTask", "metadata", "targetNodeCommunicationMode"):
            if body.get(name) is None:
                spec.pop(name, None)
            else:
                spec[name] = body[name]
        # Nodes install the new references only when they next boot (semantics §5.6).
        if references is None:
            spec.pop("certificateReferences", None)
        else:
            spec["certificateReferences"] = references
        _set_packages(spec, packages)
        _touch(conn, row, spec=spec)


def _set_packages(spec: dict[str, Any], packages: list[dict[str, Any]]) -> None:
    if packages:
        spec["applicationPackageReferences"] = packages
    else:
        spec.pop("applicationPackageReferences", None)


def _touch(conn: Connection, row: Any, **values: Any) -> None:
    conn.execute(update(pools).where(pools.c.seq == row.seq).values(
        etag=clock.new_etag(), last_modified=clock.now(), **values))


def resize(ctx: Context, pool_id: str, body: Any) -> None:
    body = v.require_object(body)
    request_body.check(body, "pool.resize")
    dedicated = v.integer(body, "targetDedicatedNodes", minimum=0)
    spot = v.integer(body, "targetLowPriorityNodes", minimum=0)
    timeout = v.duration(body, "resizeTimeout", minimum=MIN_RESIZE_TIMEOUT) or DEFAULT_RESIZE_TIMEOUT
    option = v.choice(body, "nodeDeallocationOption", DEALLOCATION_OPTIONS, default="requeue")
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, pool_id)
        guard_not_deleting(row)
        if row.spec.get("enableAutoScale"):
            raise Conflict("The specified pool has auto scale enabled; resize is not allowed.",
                           code="AutoScaleEnabled")
        if row.allocation_state != AllocationState.STEADY:
            raise Conflict("The specified pool is already being resized.", code="PoolBeingResized")
        now = clock.now()
        _touch(conn, row, allocation_state=AllocationState.RESIZING, allocation_state_transition_time=now,
               target_dedicated=row.target_dedicated if dedicated is None else dedicated,
               target_low_priority=row.target_low_priority if spot is None else spot,
               resize_timeout_s=timeout.total_seconds(), resize_deadline=resize_deadline(now, timeout),
               deallocation_option=option, resize_errors=None)
    ctx.signals.wake_provider()


def stop_resize(ctx: Context, pool_id: str) -> None:
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, pool_id)
        guard_not_deleting(row)
        if row.allocation_state == AllocationState.STEADY:
            return
        # Batch keeps the nodes it reached; the resize ends with a ResizeStopped error.
        _touch(conn, row, allocation_state=AllocationState.STOPPING, allocation_state_transition_time=clock.now(),
               resize_errors=[{"code": "ResizeStopped",
                               "message": "Desired number of dedicated nodes could not be allocated "
                                          "as the resize operation was stopped by the user."}])
    ctx.signals.wake_provider()


def remove_nodes(ctx: Context, pool_id: str, body: Any) -> None:
    body = v.require_object(body)
    request_body.check(body, "pool.removenodes")
    node_list = body.get("nodeList")
    if node_list is None:
        raise MissingProperty("nodeList")
    if not isinstance(node_list, list) or not all(isinstance(n, str) for n in node_list):
        raise InvalidProperty("nodeList", node_list, "The value must be an array of node ids.")
    if not 1 <= len(node_list) <= 100:
        raise InvalidProperty("nodeList", len(node_list), "Between 1 and 100 node ids may be removed at once.")
    timeout = v.duration(body, "resizeTimeout", minimum=MIN_RESIZE_TIMEOUT) or DEFAULT_RESIZE_TIMEOUT
    option = v.choice(body, "nodeDeallocationOption", DEALLOCATION_OPTIONS, default="requeue")
    from shoal.service import removal

    with ctx.engine.begin() as conn:
        row = load(conn, ctx, pool_id)
        guard_not_deleting(row)
        if row.allocation_state != AllocationState.STEADY:
            raise Conflict("The specified pool is already being resized.", code="PoolBeingResized")
        found = conn.execute(select(nodes).where(nodes.c.pool_seq == row.seq,
                                                 nodes.c.id.in_(node_list))).all()
        missing = set(node_list) - {n.id for n in found}
        if missing:
            raise NotFound("The specified node does not exist.", code="NodeNotFound",
                           values={"NodeId": sorted(missing)[0]})
        dedicated = sum(1 for n in found if n.is_dedicated and n.state != NodeState.LEAVING_POOL)
        spot = sum(1 for n in found if not n.is_dedicated and n.state != NodeState.LEAVING_POOL)
        now = clock.now()
        _touch(conn, row, allocation_state=AllocationState.RESIZING, allocation_state_transition_time=now,
               target_dedicated=max(0, row.target_dedicated - dedicated),
               target_low_priority=max(0, row.target_low_priority - spot),
               resize_timeout_s=timeout.total_seconds(), resize_deadline=resize_deadline(now, timeout),
               deallocation_option=option, resize_errors=None)
        removal.mark_leaving(ctx, conn, [n for n in found if n.state != NodeState.LEAVING_POOL], option or "requeue")
    ctx.signals.wake_provider()


def delete(ctx: Context, pool_id: str) -> None:
    with ctx.engine.begin() as conn:
        row = load(conn, ctx, pool_id)
        guard_not_deleting(row)
        delete_in(conn, row)
    ctx.signals.wake_provider()


def delete_in(conn: Connection, row: Any) -> None:
    """Mark a pool deleting within `conn` (also how an auto pool goes with its job)."""
    now = clock.now()
    # Deleting shrinks to zero with requeue semantics; the record goes once the nodes have
    # (service/allocation.py), so GET, list and a restarted server all see `deleting` till then.
    _touch(conn, row, state="deleting", state_transition_time=now, allocation_state="resizing",
           allocation_state_transition_time=now, target_dedicated=0, target_low_priority=0,
           deallocation_option="requeue")


def exists(ctx: Context, pool_id: str) -> bool:
    with ctx.engine.connect() as conn:
        try:
            load(conn, ctx, pool_id)
        except NotFound:
            return False
        return True


NODE_COUNT_STATES = ("creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running", "starting",
                     "startTaskFailed", "leavingPool", "unknown", "unusable", "waitingForStartTask",
                     "deallocated", "deallocating", "upgradingOS")


def node_counts(ctx: Context) -> list[dict[str, Any]]:
    """/nodecounts: per pool, per dedicated/spot, a count per node state, from the counters the
    store keeps with every node change (a few rows per pool, however many nodes it has)."""
    with ctx.engine.connect() as conn:
        pool_rows = conn.execute(select(pools.c.seq, pools.c.id).where(pools.c.account == ctx.account)
                                 .order_by(pools.c.key)).all()
        counts = conn.execute(
            select(pool_node_counts.c.pool_seq, pool_node_counts.c.is_dedicated, pool_node_counts.c.state,
                   pool_node_counts.c.count)
            .join(pools, pools.c.seq == pool_node_counts.c.pool_seq)
            .where(pools.c.account == ctx.account, pool_node_counts.c.count != 0)).all()
    by_key: dict[tuple[int, bool, str], int] = {(p, bool(d), s): int(c) for p, d, s, c in counts}
    out = []
    for seq, pool_id in pool_rows:
        entry: dict[str, Any] = {"poolId": pool_id}
        for dedicated, name in ((True, "dedicated"), (False, "lowPriority")):
            block = {state: by_key.get((seq, dedicated, state.lower()), 0) for state in NODE_COUNT_STATES}
            block["total"] = sum(block.values())
            entry[name] = block
        out.append(entry)
    return out

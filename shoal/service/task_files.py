"""Resource files and output files in request bodies (semantics §5.2, §5.3): checked the way
Batch checks them, kept verbatim in the task's (or start task's) spec, and turned into what a
node downloads (an `autoStorageContainerName` becomes a read+list SAS URL of the account's
linked storage) when an assignment or a start task goes to an agent."""

from __future__ import annotations

import json
import re
from typing import Any

from shoal import config, storage
from shoal.agent.confined import PathRefused, components
from shoal.errors import BadRequest, BatchError, InvalidProperty, MissingProperty
from shoal.service import request_body
from shoal.service import validation as v

_SOURCES = ("autoStorageContainerName", "storageContainerUrl", "httpUrl")
_FILE_MODE = re.compile(r"[0-7]{1,4}")
_UPLOAD_CONDITIONS = ("tasksuccess", "taskfailure", "taskcompletion")
# Batch caps the resource file list by size ("RequestEntityTooLarge"); Shoal's cap is the
# size of its JSON, which bounds the downloads one task can ask a node for.
MAX_RESOURCE_FILES_CHARS = 256 * 1024
MAX_OUTPUT_FILES = 1000
_MAX_URL = 8192
_CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


def _too_large(path: str) -> BatchError:
    return BatchError("The list of resource files exceeds the maximum size.", code="RequestEntityTooLarge",
                      status=413, values={"PropertyName": path, "MaxLimit": str(MAX_RESOURCE_FILES_CHARS)})


def no_auto_storage() -> BadRequest:
    return BadRequest("The Batch account has no auto-storage account configured: autoStorageContainerName "
                      "cannot be used (start Shoal with --auto-storage).", code="StorageAccountNotFound")


def _url(item: dict[str, Any], name: str, path: str, *, allow_file: bool) -> None:
    value = v.string(item, name, max_len=_MAX_URL, path=path)
    if value is None:
        return
    lowered = value.lower()
    if lowered.startswith(("http://", "https://")):
        return
    if allow_file and lowered.startswith("file://"):
        try:
            storage.file_url_path(value)
        except ValueError as exc:
            raise InvalidProperty(path, storage.redact(value), str(exc)) from exc
        return
    raise InvalidProperty(path, storage.redact(value), "The value must be an http or https URL"
                          + (" (or a file:/// URL, a Shoal extension)." if allow_file else "."))


def resource_files(body: dict[str, Any], name: str = "resourceFiles", *, path: str | None = None) -> None:
    label = path or name
    items = v.array(body, name, path=label)
    if items and len(json.dumps(items)) > MAX_RESOURCE_FILES_CHARS:
        raise _too_large(label)
    for index, item in enumerate(items):
        at = f"{label}[{index}]"
        if not isinstance(item, dict):
            raise InvalidProperty(at, item, "Each item must be a JSON object.")
        request_body.refuse_unsupported(item, ("identityReference",), root=at)
        given = [source for source in _SOURCES if item.get(source) not in (None, "")]
        if len(given) != 1:
            raise InvalidProperty(at, ", ".join(given) or "none",
                                  "The autoStorageContainerName, storageContainerUrl and httpUrl properties are "
                                  "mutually exclusive and one of them must be specified.")
        _url(item, "httpUrl", f"{at}.httpUrl", allow_file=True)
        _url(item, "storageContainerUrl", f"{at}.storageContainerUrl", allow_file=False)
        container = v.string(item, "autoStorageContainerName", max_len=63, path=f"{at}.autoStorageContainerName")
        if container is not None:
            if not _CONTAINER_NAME.fullmatch(container):
                raise InvalidProperty(f"{at}.autoStorageContainerName", container,
                                      "The value is not a valid storage container name.")
            if config.auto_storage_connection_string() is None:
                raise no_auto_storage()
        prefix = v.string(item, "blobPrefix", max_len=1024, path=f"{at}.blobPrefix")
        if prefix and given == ["httpUrl"]:
            raise InvalidProperty(f"{at}.blobPrefix", prefix, "The property is valid only when "
                                  "autoStorageContainerName or storageContainerUrl is used.")
        file_path = v.string(item, "filePath", max_len=1024, path=f"{at}.filePath")
        if given == ["httpUrl"] and not file_path:
            raise MissingProperty(f"{at}.filePath")
        if file_path:
            try:
                parts = components(file_path)
            except PathRefused as exc:
                raise InvalidProperty(f"{at}.filePath", file_path, "The specified relative path cannot break "
                                      f"out of the Task's working directory: {exc}.") from exc
            if given == ["httpUrl"] and not parts:
                raise InvalidProperty(f"{at}.filePath", file_path, "The filePath must name a file.")
        mode = v.string(item, "fileMode", path=f"{at}.fileMode")
        if mode is not None and not _FILE_MODE.fullmatch(mode):
            raise InvalidProperty(f"{at}.fileMode", mode, "The file mode must be an octal number, e.g. 0770.")


def output_files(body: dict[str, Any], name: str = "outputFiles") -> None:
    items = v.array(body, name)
    if len(items) > MAX_OUTPUT_FILES:
        raise InvalidProperty(name, len(items), f"At most {MAX_OUTPUT_FILES} output files may be given.")
    for index, item in enumerate(items):
        at = f"{name}[{index}]"
        if not isinstance(item, dict):
            raise InvalidProperty(at, item, "Each item must be a JSON object.")
        pattern = v.string(item, "filePattern", required=True, max_len=4096, path=f"{at}.filePattern")
        assert pattern is not None
        destination = v.obj(item, "destination", required=True, path=f"{at}.destination")
        assert destination is not None
        container = v.obj(destination, "container", required=True, path=f"{at}.destination.container")
        assert container is not None
        request_body.refuse_unsupported(container, ("identityReference",), root=f"{at}.destination.container")
        v.string(container, "containerUrl", required=True, path=f"{at}.destination.container.containerUrl")
        _url(container, "containerUrl", f"{at}.destination.container.containerUrl", allow_file=False)
        v.string(container, "path", max_len=1024, path=f"{at}.destination.container.path")
        v.name_value_pairs(container, "uploadHeaders", path=f"{at}.destination.container.uploadHeaders")
        options = v.obj(item, "uploadOptions", required=True, path=f"{at}.uploadOptions")
        assert options is not None
        if options.get("uploadCondition") is None:
            raise MissingProperty(f"{at}.uploadOptions.uploadCondition")
        options["uploadCondition"] = v.choice(options, "uploadCondition", _UPLOAD_CONDITIONS,
                                              path=f"{at}.uploadOptions.uploadCondition")


def for_node(items: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The resource files as a node downloads them: each `autoStorageContainerName` becomes the
    `storageContainerUrl` of a read+list SAS in the linked storage account."""
    out = []
    for item in items or []:
        name = item.get("autoStorageContainerName")
        connection = config.auto_storage_connection_string()
        if name and connection:
            item = {key: value for key, value in item.items() if key != "autoStorageContainerName"}
            item["storageContainerUrl"] = storage.auto_storage_container_url(connection, name)
        out.append(item)
    return out

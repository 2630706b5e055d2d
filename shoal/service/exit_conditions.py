"""A task's exit conditions (semantics §3.7): validating them, and which exit options apply to a
task's end. Pure: plain data in, plain data out.

What applies: an exact `exitCodes` entry, then the first `exitCodeRanges` entry holding the
code, else `default`; a pre-processing error takes `preProcessingError`, else `default`; an
upload error takes `fileUploadError`, else `default`, unless the exit code itself matched an
entry, which wins. Exit code 0 never falls through to `default`. The defaults of an option
Azure names: jobAction `none` for exit 0 and `terminate` otherwise, dependencyAction `satisfy`
for exit 0 and `block` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.errors import InvalidProperty, MissingProperty
from shoal.service import validation as v

JOB_ACTIONS = ("none", "disable", "terminate")
DEPENDENCY_ACTIONS = ("satisfy", "block")
# Entries one task may list: far more than any real mapping, few enough that resolving one costs
# nothing (Azure states no limit; the request-size limits bound it there).
MAX_MAPPINGS = 1000

# How an attempt ended, as far as exit conditions care.
EXITED = "exited"
PRE_PROCESSING_ERROR = "preprocessing"
FILE_UPLOAD_ERROR = "fileupload"

# Failure codes the agent reports for a task that never ran its command (semantics §2.5).
_NOT_PRE_PROCESSING = ("TaskEnded", "FailureExitCode")


@dataclass(frozen=True)
class ExitOptions:
    job_action: str
    dependency_action: str


def validate(body: dict[str, Any], name: str = "exitConditions") -> dict[str, Any] | None:
    """The exitConditions object as stored (enum values in their lower-case spelling), or None."""
    conditions = v.obj(body, name)
    if conditions is None:
        return None
    codes = v.array(conditions, "exitCodes", path=f"{name}.exitCodes")
    ranges = v.array(conditions, "exitCodeRanges", path=f"{name}.exitCodeRanges")
    if len(codes) + len(ranges) > MAX_MAPPINGS:
        raise InvalidProperty(f"{name}.exitCodes", len(codes) + len(ranges),
                              f"A task may map at most {MAX_MAPPINGS} exit codes and ranges.")
    for index, entry in enumerate(codes):
        where = f"{name}.exitCodes[{index}]"
        entry = _object(entry, where)
        v.integer(entry, "code", path=f"{where}.code")
        if entry.get("code") is None:
            raise MissingProperty(f"{where}.code")
        _options(entry, f"{where}.exitOptions", required=True)
    for index, entry in enumerate(ranges):
        where = f"{name}.exitCodeRanges[{index}]"
        entry = _object(entry, where)
        start = v.integer(entry, "start", path=f"{where}.start")
        end = v.integer(entry, "end", path=f"{where}.end")
        if start is None or end is None:
            raise MissingProperty(f"{where}.{'start' if start is None else 'end'}")
        if start > end:
            raise InvalidProperty(f"{where}.end", end, "The end of a range must not be before its start.")
        _options(entry, f"{where}.exitOptions", required=True)
    for option in ("preProcessingError", "fileUploadError", "default"):
        _options(conditions, f"{name}.{option}", key=option)
    return conditions


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidProperty(where, value, "The value must be a JSON object.")
    return value


def _options(body: dict[str, Any], where: str, *, key: str = "exitOptions", required: bool = False) -> None:
    options = v.obj(body, key, required=required, path=where)
    if options is None:
        return
    for name, choices in (("jobAction", JOB_ACTIONS), ("dependencyAction", DEPENDENCY_ACTIONS)):
        value = v.choice(options, name, choices, path=f"{where}.{name}")
        if value is not None:
            options[name] = value


def names_job_action(conditions: dict[str, Any] | None) -> tuple[str, str] | None:
    """(path, value) of the first exit option that sets a jobAction (refused on a job whose
    onTaskFailure is noaction), or None."""
    if not conditions:
        return None
    options = [(f"exitConditions.exitCodes[{i}].exitOptions", e.get("exitOptions"))
               for i, e in enumerate(conditions.get("exitCodes") or [])]
    options += [(f"exitConditions.exitCodeRanges[{i}].exitOptions", e.get("exitOptions"))
                for i, e in enumerate(conditions.get("exitCodeRanges") or [])]
    options += [(f"exitConditions.{name}", conditions.get(name))
                for name in ("preProcessingError", "fileUploadError", "default")]
    for path, option in options:
        if (option or {}).get("jobAction") is not None:
            return f"{path}.jobAction", option["jobAction"]
    return None


def kind_of(exit_code: int | None, failure: dict[str, Any] | None) -> str:
    """How an attempt ended: a failure the agent reported without the command having run is a
    pre-processing error, an upload failure a file-upload error; anything else exited (a
    timeout or termination counts as exiting with its exit code, or none)."""
    if failure is None:
        return EXITED
    code = str(failure.get("code") or "")
    if code.startswith("FileUpload"):
        return FILE_UPLOAD_ERROR
    if exit_code is None and code not in _NOT_PRE_PROCESSING:
        return PRE_PROCESSING_ERROR
    return EXITED


def resolve(conditions: dict[str, Any] | None, exit_code: int | None, kind: str = EXITED) -> ExitOptions:
    """The exit options that apply to a task that ended this way."""
    conditions = conditions or {}
    matched = _by_code(conditions, exit_code) if exit_code is not None and kind != PRE_PROCESSING_ERROR else None
    succeeded = kind == EXITED and exit_code == 0
    if matched is None:
        if succeeded:
            matched = {}
        elif kind == PRE_PROCESSING_ERROR and conditions.get("preProcessingError") is not None:
            matched = conditions["preProcessingError"]
        elif kind == FILE_UPLOAD_ERROR and conditions.get("fileUploadError") is not None:
            matched = conditions["fileUploadError"]
        else:
            matched = conditions.get("default") or {}
    return ExitOptions(job_action=matched.get("jobAction") or ("none" if succeeded else "terminate"),
                       dependency_action=matched.get("dependencyAction") or ("satisfy" if succeeded else "block"))


def _by_code(conditions: dict[str, Any], exit_code: int) -> dict[str, Any] | None:
    for entry in conditions.get("exitCodes") or []:
        if entry.get("code") == exit_code:
            return dict(entry.get("exitOptions") or {})
    for entry in conditions.get("exitCodeRanges") or []:
        if entry["start"] <= exit_code <= entry["end"]:
            return dict(entry.get("exitOptions") or {})
    return None

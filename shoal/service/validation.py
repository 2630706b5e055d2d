"""Reading request bodies the way Batch does: typed, bounded, naming the offending property."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from shoal.clock import parse_duration
from shoal.errors import BadRequest, InvalidProperty, MissingProperty

# fullmatch, never `$`: `$` also matches before a trailing newline, and "id\n" is not an id.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
INTEGER_TEXT = re.compile(r"-?[0-9]{1,10}")
MAX_DISPLAY_NAME = 1024
# Batch caps a command line at 8,191 characters (the Windows command-line limit, kept on Linux).
MAX_COMMAND_LINE = 8191
# The longest duration Batch represents (.NET TimeSpan.MaxValue, which Batch echoes as "unlimited").
MAX_DURATION = timedelta(days=10675199, hours=2, minutes=48, seconds=5, microseconds=477580)
MAX_USER_NAME = 20


def require_object(body: Any, name: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The request body is not a JSON object.", values={"PropertyName": name})
    return body


def resource_id(body: dict[str, Any], name: str = "id") -> str:
    value = body.get(name)
    if value is None:
        raise MissingProperty(name)
    if not isinstance(value, str):
        raise InvalidProperty(name, value, "The id must be a string.")
    if not ID_PATTERN.fullmatch(value):
        raise InvalidProperty(
            name, value,
            "The id can contain any combination of alphanumeric characters including hyphens and "
            "underscores, and cannot contain more than 64 characters.")
    return value


def string(body: dict[str, Any], name: str, *, required: bool = False, max_len: int | None = None,
           path: str | None = None) -> str | None:
    label = path or name
    value = body.get(name)
    if value is None:
        if required:
            raise MissingProperty(label)
        return None
    if not isinstance(value, str):
        raise InvalidProperty(label, value, "The value must be a string.")
    if required and not value:
        raise InvalidProperty(label, value, "The value must not be empty.")
    if max_len is not None and len(value) > max_len:
        raise InvalidProperty(label, value[:64], f"The value must be at most {max_len} characters.")
    return value


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def integer(body: dict[str, Any], name: str, *, default: int | None = None, minimum: int | None = None,
            maximum: int | None = None, path: str | None = None) -> int | None:
    """An Int32 (every integer of Batch's request bodies is one), within [minimum, maximum]."""
    label = path or name
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, str) and INTEGER_TEXT.fullmatch(value.strip()):
        # Batch's JSON reader takes integers written as strings, and `az batch` sends them so;
        # stored (and echoed) as the integer they are.
        value = body[name] = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidProperty(label, value, "The value must be an integer.")
    if minimum is not None and value < minimum:
        raise InvalidProperty(label, value, f"The value must be at least {minimum}.")
    if maximum is not None and value > maximum:
        raise InvalidProperty(label, value, f"The value must be at most {maximum}.")
    if not INT32_MIN <= value <= INT32_MAX:
        raise InvalidProperty(label, value, "The value must be a 32-bit integer.")
    return value


def boolean(body: dict[str, Any], name: str, *, default: bool | None = None, path: str | None = None) -> bool | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = body[name] = value.lower() == "true"
    if not isinstance(value, bool):
        raise InvalidProperty(path or name, value, "The value must be a boolean.")
    return value


def duration(body: dict[str, Any], name: str, *, minimum: timedelta | None = None,
             path: str | None = None) -> timedelta | None:
    label = path or name
    value = body.get(name)
    if value is None:
        return None
    try:
        parsed = parse_duration(value)
    except (ValueError, OverflowError) as exc:
        raise InvalidProperty(label, str(value)[:64], "The value must be an ISO 8601 duration.") from exc
    if minimum is not None and parsed < minimum:
        raise InvalidProperty(label, value, f"The value must be at least {minimum}.")
    if parsed > MAX_DURATION:
        raise InvalidProperty(label, value[:64], "The value is longer than the longest duration Batch allows.")
    return parsed


def choice(body: dict[str, Any], name: str, options: tuple[str, ...], *, default: str | None = None,
           path: str | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or value.lower() not in options:
        raise InvalidProperty(path or name, value, f"The value must be one of: {', '.join(options)}.")
    return value.lower()


def obj(body: dict[str, Any], name: str, *, required: bool = False, path: str | None = None) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        if required:
            raise MissingProperty(path or name)
        return None
    if not isinstance(value, dict):
        raise InvalidProperty(path or name, value, "The value must be a JSON object.")
    return value


def array(body: dict[str, Any], name: str, *, path: str | None = None) -> list[Any]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidProperty(path or name, value, "The value must be an array.")
    return value


def name_value_pairs(body: dict[str, Any], name: str, *, path: str | None = None) -> list[dict[str, str]]:
    """metadata: a list of {name, value} with non-empty string names."""
    label = path or name
    items = array(body, name, path=label)
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidProperty(f"{label}[{index}]", item, "Each item must be a JSON object.")
        key = string(item, "name", required=True, path=f"{label}[{index}].name")
        val = item.get("value")
        if val is not None and not isinstance(val, str):
            raise InvalidProperty(f"{label}[{index}].value", val, "The value must be a string.")
        out.append({"name": key or "", "value": val if val is not None else ""})
    return out


def environment_settings(body: dict[str, Any], name: str = "environmentSettings", *,
                         path: str | None = None) -> list[dict[str, str]]:
    """Environment variables: the name becomes `NAME=value` in a process environment, so it must be
    non-empty and hold no `=` (exec cannot represent it; Batch refuses it)."""
    label = path or name
    pairs = name_value_pairs(body, name, path=label)
    for index, pair in enumerate(pairs):
        if "=" in pair["name"]:
            raise InvalidProperty(f"{label}[{index}].name", pair["name"][:64],
                                  "An environment variable name must not contain '='.")
    return pairs


def command_line(body: dict[str, Any], name: str = "commandLine", *, path: str | None = None) -> str:
    value = string(body, name, required=True, path=path)
    assert value is not None
    if not value.strip():
        raise InvalidProperty(path or name, value, "The command line must not be empty.")
    if len(value) > MAX_COMMAND_LINE:
        raise InvalidProperty(path or name, value[:64],
                              f"The command line must be at most {MAX_COMMAND_LINE} characters.")
    return value


def user_identity(body: dict[str, Any], name: str = "userIdentity", *, path: str | None = None) -> None:
    """userIdentity: a named pool user account or an auto-user, not both."""
    label = path or name
    identity = obj(body, name, path=label)
    if identity is None:
        return
    user = string(identity, "username", max_len=MAX_USER_NAME, path=f"{label}.username")
    auto = obj(identity, "autoUser", path=f"{label}.autoUser")
    if user is not None and auto is not None:
        raise InvalidProperty(label, "…", "Specify either username or autoUser, not both.")
    if auto is not None:
        choice(auto, "scope", ("task", "pool"), path=f"{label}.autoUser.scope")
        choice(auto, "elevationLevel", ("nonadmin", "admin"), path=f"{label}.autoUser.elevationLevel")

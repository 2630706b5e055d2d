"""The checks every request body gets before any rule of its own: only properties the served
api-versions define, each of the JSON type its definition gives, integers in Int32 range, and no
NUL character in any string or property name anywhere (an agent cannot pass one to exec, and
Batch refuses them).

The property table is `shoal.model.request_schema`; `None` (JSON null) means "not given", as it
does for Batch. The walk uses an explicit stack, so no body can exhaust the interpreter's stack.
"""

from __future__ import annotations

from typing import Any

from shoal.errors import BadRequest, InvalidProperty
from shoal.model import request_schema

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
_NUL = "\x00"


class UnknownProperty(BadRequest):
    """A property the body's type does not define: Batch's JSON reader refuses the body."""

    def __init__(self, path: str, name: str, body_name: str) -> None:
        super().__init__(
            "The specified Request Body is not syntactically valid.",
            values={"PropertyName": path,
                    "Reason": f"The property '{name}' is not defined for the {body_name} request body."})


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# Properties whose values an error never quotes: a password with a NUL in it must not come back
# in the answer (nor reach a log that records errors).
_SECRET_PARTS = ("password", "secret", "token", "privatekey")
_SECRET_NAMES = ("data",)  # a certificate's pfx
_REDACTED = "(not shown)"


def _type_error(path: str, value: Any, kind: str) -> InvalidProperty:
    article = "an" if kind[0] in "aeiou" else "a"
    return InvalidProperty(path, _shown(value, path), f"The value must be {article} {kind}.")


def _shown(value: Any, path: str = "") -> str:
    name = path.rsplit(".", 1)[-1].split("[", 1)[0].lower()
    if name in _SECRET_NAMES or any(part in name for part in _SECRET_PARTS):
        return _REDACTED
    text = value if isinstance(value, str) else type(value).__name__ if isinstance(value, (dict, list)) else str(value)
    return text.replace(_NUL, "\\0")[:64]


def check(body: dict[str, Any], body_name: str, *, root: str = "") -> None:
    """Raise the Batch error for the first property of `body` that no served api-version
    defines, has the wrong JSON type, or holds a NUL."""
    tree = request_schema.bodies()[body_name]
    label = body_name.replace(".", " ")
    stack: list[tuple[Any, Any, str]] = [(body, tree, root)]
    while stack:
        value, shape, path = stack.pop()
        if value is None:
            continue
        if isinstance(shape, dict) and "p" in shape:
            if not isinstance(value, dict):
                raise _type_error(path or "body", value, "JSON object")
            for name, item in value.items():
                if _NUL in name:
                    raise InvalidProperty(_join(path, name.replace(_NUL, "\\0")), "…",
                                          "Property names must not contain NUL characters.")
                if name not in shape["p"]:
                    raise UnknownProperty(_join(path, name), name, label)
                stack.append((item, shape["p"][name], _join(path, name)))
        elif isinstance(shape, dict) and "a" in shape:
            if not isinstance(value, list):
                raise _type_error(path, value, "array")
            stack.extend((item, shape["a"], f"{path}[{index}]") for index, item in enumerate(value))
        else:
            _check_leaf(value, shape, path)


def fold_names(body: Any, body_name: str) -> None:
    """Respell, in place, every property name of `body` that differs from its definition only in
    case (`userName` for `username`): Batch reads request bodies case-insensitively (a 2020-03-01
    recording creates a task with `userIdentity.userName`). One property given in two spellings is
    refused, since either reading would drop the other silently."""
    stack: list[tuple[Any, Any, str]] = [(body, request_schema.bodies()[body_name], "")]
    while stack:
        value, shape, path = stack.pop()
        if isinstance(value, dict) and isinstance(shape, dict) and "p" in shape:
            known, folded = shape["p"], _folded_names(shape)
            for name in list(value):
                canonical = name if name in known else folded.get(name.lower()) if isinstance(name, str) else None
                if canonical is None:
                    continue  # unknown: `check` names it
                if canonical != name:
                    if canonical in value:
                        raise InvalidProperty(_join(path, name), "…",
                                              f"The property is also given as '{canonical}'.")
                    value[canonical] = value.pop(name)
                stack.append((value[canonical], known[canonical], _join(path, canonical)))
        elif isinstance(value, list) and isinstance(shape, dict) and "a" in shape:
            stack.extend((item, shape["a"], f"{path}[{index}]") for index, item in enumerate(value))


_FOLDED: dict[int, dict[str, str]] = {}


def _folded_names(shape: dict[str, Any]) -> dict[str, str]:
    """Lower-case name -> defined name for one object of the (cached, never rebuilt) table."""
    key = id(shape)
    if key not in _FOLDED:
        _FOLDED[key] = {name.lower(): name for name in shape["p"]}
    return _FOLDED[key]


def _check_leaf(value: Any, kind: str, path: str) -> None:
    if kind == "string":
        if not isinstance(value, str):
            raise _type_error(path, value, "string")
        if _NUL in value:
            raise InvalidProperty(path, _shown(value, path), "The value must not contain NUL characters.")
    elif kind == "integer":
        if isinstance(value, str):  # az sends integers as strings; validation.integer converts them
            _no_nul(value, path)
            return
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(path, value, "integer")
        if not INT32_MIN <= value <= INT32_MAX:
            raise InvalidProperty(path, value, "The value must be a 32-bit integer.")
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _type_error(path, value, "number")
        if isinstance(value, str):
            _no_nul(value, path)
    elif kind == "boolean":
        if isinstance(value, str):
            _no_nul(value, path)
            return
        if not isinstance(value, bool):
            raise _type_error(path, value, "boolean")
    else:
        _no_nul_anywhere(value, path)


def _no_nul(value: str, path: str) -> None:
    if _NUL in value:
        raise InvalidProperty(path, _shown(value, path), "The value must not contain NUL characters.")


def _no_nul_anywhere(value: Any, path: str) -> None:
    """Free-form values (resourceTags and the like): no NUL in any key or string within."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _no_nul(item, where)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _no_nul(key, where)
                stack.append((sub, _join(where, key)))
        elif isinstance(item, list):
            stack.extend((sub, f"{where}[{index}]") for index, sub in enumerate(item))


def given(value: Any) -> bool:
    """Whether a client asked for something: absent, null, false (also as the string `az` may
    send), empty string/list/object do not."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false")
    return value not in (None, False, [], {})


def supported_choice(body: dict[str, Any], name: str, options: tuple[str, ...], supported: tuple[str, ...], *,
                     path: str) -> str | None:
    """An enum property: a value Batch does not know is invalid; one it knows that Shoal does not
    carry out is FeatureNotSupported."""
    value = body.get(name)
    if value is None:
        return None
    folded = value.lower() if isinstance(value, str) else None
    if folded not in options:
        raise InvalidProperty(path, _shown(value), f"The value must be one of: {', '.join(options)}.")
    if folded not in supported:
        raise BadRequest(f"The value {value} of {path} is not supported by this Batch service (Shoal).",
                         code="FeatureNotSupported",
                         values={"PropertyName": path, "PropertyValue": str(value),
                                 "Reason": f"Shoal supports only: {', '.join(supported)}."})
    return folded


def refuse_unsupported(body: dict[str, Any], paths: tuple[str, ...], *, root: str = "") -> None:
    """FeatureNotSupported for the first of `paths` (dotted, within `body`) the client gave."""
    for dotted in paths:
        value: Any = body
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if given(value):
            raise not_supported(_join(root, dotted))


def not_supported(path: str, detail: str = "") -> BadRequest:
    return BadRequest(
        f"The property {path} is not supported by this Batch service (Shoal).{' ' + detail if detail else ''}",
        code="FeatureNotSupported", values={"PropertyName": path,
                                            "Reason": "Shoal does not implement this feature yet."})

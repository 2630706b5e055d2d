"""The OData `$filter` and `$select` subset that Azure Batch list operations accept.

`compile_filter` parses once and returns a predicate over the wire-format (camelCase) JSON dict of
a resource, so a list operation can filter rows it has already serialised. Grammar, loosest first:

    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := operand (("eq"|"ne"|"gt"|"ge"|"lt"|"le") operand)?
    operand    := "(" or_expr ")" | literal | "startswith(" path "," string ")" | path

`not` applies to a whole comparison (`not state eq 'active'`), which is what people mean, although
strict OData would bind it to `state` alone.

Filters come from any authenticated caller, so parsing and evaluation are bounded: parentheses
and `not` nest at most MAX_NESTING deep (the parser and the predicate it builds recurse once per
level), and a comparison of values that cannot be ordered is simply false, never an error.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]
_Value = Callable[[dict[str, Any]], Any]

# String values of these properties are enums; Batch matches them without regard to case
# ("state eq 'Active'" finds active pools).
_ENUM_PROPERTY_NAMES = frozenset(
    {"state", "result", "category", "ostype", "verificationtype", "onalltaskscomplete", "ontaskfailure"}
)

_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}

_KEYWORDS = frozenset({"and", "or", "not", *_COMPARISONS})

_ISO_TIMESTAMP = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?"

_TOKEN = re.compile(
    rf"""
    (?P<space>\s+)
  | (?P<datetime>datetime'(?P<dt_body>[^']*)')
  | (?P<timestamp>{_ISO_TIMESTAMP})
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^']|'')*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)

# Far beyond any hand-written filter, far below Python's recursion limit (about five frames a level).
MAX_NESTING = 32

_SELECT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Keys like "odata.metadata" describe the payload rather than the resource; $select never drops them.
_METADATA_PREFIX = "odata."


class ODataError(ValueError):
    """A malformed `$filter` or `$select`; `position` is the 0-based character offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at position {position})")
        self.message = message
        self.position = position


@dataclass(frozen=True)
class _Token:
    kind: str  # one of: datetime, number, string, name, keyword, punct, end
    text: str
    position: int
    value: Any = None


def _parse_timestamp(text: str, position: int) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ODataError(f"'{text}' is not a valid datetime", position) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position] == "'":
                raise ODataError("unterminated string literal", position)
            raise ODataError(f"unexpected character {text[position]!r}", position)
        kind = match.lastgroup if match.lastgroup != "dt_body" else "datetime"
        raw = match.group()
        if kind == "datetime":
            tokens.append(
                _Token("datetime", raw, position, _parse_timestamp(match.group("dt_body"), position))
            )
        elif kind == "timestamp":
            tokens.append(_Token("datetime", raw, position, _parse_timestamp(raw, position)))
        elif kind == "number":
            try:
                number = float(raw) if any(c in raw for c in ".eE") else int(raw)
            except ValueError as exc:  # more digits than Python converts
                raise ODataError("the number is too long", position) from exc
            tokens.append(_Token("number", raw, position, number))
        elif kind == "string":
            tokens.append(_Token("string", raw, position, raw[1:-1].replace("''", "'")))
        elif kind == "name":
            lowered = raw.lower()
            if lowered in _KEYWORDS:
                tokens.append(_Token("keyword", lowered, position))
            else:
                tokens.append(_Token("name", raw, position))
        elif kind == "punct":
            tokens.append(_Token("punct", raw, position))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _lookup(resource: Any, path: list[str]) -> Any:
    current = resource
    for segment in path:
        if not isinstance(current, dict):
            return None
        if segment in current:
            current = current[segment]
            continue
        # Property names are camelCase on the wire, but a user typing ExitCode means exitCode.
        folded = segment.lower()
        current = next((value for key, value in current.items() if key.lower() == folded), None)
    return current


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(op: str, left: Any, right: Any, *, fold_case: bool) -> bool:
    """Apply `op`; values of unrelated types are unequal and unordered rather than an error."""
    try:
        return _compare_values(op, left, right, fold_case=fold_case)
    except (TypeError, ValueError, OverflowError, RecursionError):
        # Objects and lists have no order, and stored values may nest past what == can walk.
        return op == "ne"


def _compare_values(op: str, left: Any, right: Any, *, fold_case: bool) -> bool:
    if left is None or right is None:
        if op == "eq":
            return left is None and right is None
        if op == "ne":
            return not (left is None and right is None)
        return False
    if isinstance(left, datetime) or isinstance(right, datetime):
        left, right = _as_datetime(left), _as_datetime(right)
        if left is None or right is None:
            return op == "ne"
    elif _is_number(left) and _is_number(right):
        pass
    elif type(left) is not type(right):
        return op == "ne"
    elif isinstance(left, dict | list) and op not in ("eq", "ne"):
        # Objects and lists are equal or not; they have no order.
        return False
    elif fold_case and isinstance(left, str):
        left, right = left.casefold(), right.casefold()
    return _COMPARISONS[op](left, right)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ODataError(f"the filter nests more than {MAX_NESTING} levels deep", token.position)

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def accept_keyword(self, word: str) -> bool:
        if self.current.kind == "keyword" and self.current.text == word:
            self.index += 1
            return True
        return False

    def expect_punct(self, char: str) -> None:
        if self.current.kind != "punct" or self.current.text != char:
            raise ODataError(
                f"expected '{char}' but found {self._describe(self.current)}", self.current.position
            )
        self.index += 1

    @staticmethod
    def _describe(token: _Token) -> str:
        return "end of filter" if token.kind == "end" else repr(token.text)

    def parse(self) -> Predicate:
        predicate = self.or_expr()
        if self.current.kind != "end":
            raise ODataError(f"unexpected {self._describe(self.current)}", self.current.position)
        return predicate

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.accept_keyword("or"):
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda resource: any(part(resource) for part in parts)

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.accept_keyword("and"):
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda resource: all(part(resource) for part in parts)

    def not_expr(self) -> Predicate:
        token = self.current
        if self.accept_keyword("not"):
            self.enter(token)
            inner = self.not_expr()
            self.depth -= 1
            return lambda resource: not inner(resource)
        return self.comparison()

    def comparison(self) -> Predicate:
        start = self.current
        left, left_path = self.operand()
        token = self.current
        if token.kind == "keyword" and token.text in _COMPARISONS:
            self.advance()
            right, right_path = self.operand()
            fold_case = _is_enum_property(left_path) or _is_enum_property(right_path)
            op = token.text
            return lambda resource: _compare(op, left(resource), right(resource), fold_case=fold_case)
        # A bare operand is a condition only if it is boolean: startswith(...), (...), true, isFlag.
        if start.kind in {"number", "string", "datetime"}:
            raise ODataError("expected a comparison operator after a literal", token.position)
        return lambda resource: left(resource) is True

    def operand(self) -> tuple[_Value, list[str] | None]:
        """One value: returns its evaluator and, for a property, its path (for enum handling)."""
        token = self.current
        if token.kind in {"string", "number", "datetime"}:
            self.advance()
            value = token.value
            return (lambda _resource: value), None
        if token.kind == "punct" and token.text == "(":
            self.advance()
            self.enter(token)
            inner = self.or_expr()
            self.expect_punct(")")
            self.depth -= 1
            return inner, None
        if token.kind == "name":
            self.advance()
            lowered = token.text.lower()
            if lowered in {"true", "false"}:
                flag = lowered == "true"
                return (lambda _resource: flag), None
            if lowered == "null":
                return (lambda _resource: None), None
            if self.current.kind == "punct" and self.current.text == "(":
                return self.function_call(token), None
            path = token.text.split("/")
            return (lambda resource: _lookup(resource, path)), path
        raise ODataError(
            f"expected a property, literal or '(' but found {self._describe(token)}", token.position
        )

    def function_call(self, name: _Token) -> _Value:
        if name.text.lower() != "startswith":
            raise ODataError(f"unsupported function '{name.text}'", name.position)
        self.expect_punct("(")
        subject = self.current
        if subject.kind != "name" or subject.text.lower() in {"true", "false", "null"}:
            raise ODataError("startswith expects a property as its first argument", subject.position)
        self.advance()
        path = subject.text.split("/")
        self.expect_punct(",")
        prefix_token = self.current
        if prefix_token.kind != "string":
            raise ODataError(
                "startswith expects a string literal as its second argument", prefix_token.position
            )
        self.advance()
        self.expect_punct(")")
        prefix = prefix_token.value

        def starts_with(resource: dict[str, Any]) -> bool:
            value = _lookup(resource, path)
            return isinstance(value, str) and value.startswith(prefix)

        return starts_with


def _is_enum_property(path: list[str] | None) -> bool:
    if path is None:
        return False
    last = path[-1]
    # allocationState, schedulingState, previousState... are enums too.
    return last.lower() in _ENUM_PROPERTY_NAMES or last.endswith("State")


def compile_filter(text: str | None) -> Predicate:
    """Compile an OData `$filter`; an absent or blank filter matches everything."""
    if text is None or not text.strip():
        return lambda _resource: True
    return _Parser(text).parse()


def parse_select(text: str | None) -> list[str] | None:
    """The property names of a `$select`, or None when absent (meaning all properties)."""
    if text is None or not text.strip():
        return None
    names: list[str] = []
    offset = 0
    for part in text.split(","):
        name = part.strip()
        if not _SELECT_NAME.match(name):
            raise ODataError(f"'{name}' is not a property name", offset + (len(part) - len(part.lstrip())))
        names.append(name)
        offset += len(part) + 1
    return names


def apply_select(resource: dict[str, Any], fields: Iterable[str] | None) -> dict[str, Any]:
    """Keep only the selected top-level properties (and OData metadata keys); unknown names are ignored."""
    if fields is None:
        return resource
    wanted = {name.lower() for name in fields}
    return {
        key: value
        for key, value in resource.items()
        if key.lower() in wanted or key.startswith(_METADATA_PREFIX)
    }

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

from sqlalchemy import Numeric, and_, case, cast, false, func, not_, or_, true

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


# The parsed filter: a small tree, evaluated in Python over wire dicts (`_evaluator`) or, where
# the properties live in store columns, translated to SQL (`to_sql`).


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Prop:
    path: tuple[str, ...]


@dataclass(frozen=True)
class StartsWith:
    path: tuple[str, ...]
    prefix: str


@dataclass(frozen=True)
class Compare:
    op: str
    left: Node
    right: Node
    fold_case: bool


@dataclass(frozen=True)
class IsTrue:
    """A bare operand used as a condition: true only if its value is the boolean true."""

    operand: Node


@dataclass(frozen=True)
class Not:
    inner: Node


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Node, ...]


Node = Literal | Prop | StartsWith | Compare | IsTrue | Not | AllOf | AnyOf
# The nodes whose value is always a boolean (what a parenthesised condition gives).
_CONDITIONS = (StartsWith, Compare, IsTrue, Not, AllOf, AnyOf)


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

    def parse(self) -> Node:
        node = self.or_expr()
        if self.current.kind != "end":
            raise ODataError(f"unexpected {self._describe(self.current)}", self.current.position)
        return node

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self.accept_keyword("or"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))

    def and_expr(self) -> Node:
        parts = [self.not_expr()]
        while self.accept_keyword("and"):
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def not_expr(self) -> Node:
        token = self.current
        if self.accept_keyword("not"):
            self.enter(token)
            inner = self.not_expr()
            self.depth -= 1
            return Not(inner)
        return self.comparison()

    def comparison(self) -> Node:
        start = self.current
        left = self.operand()
        token = self.current
        if token.kind == "keyword" and token.text in _COMPARISONS:
            self.advance()
            right = self.operand()
            fold_case = _is_enum_property(left) or _is_enum_property(right)
            return Compare(token.text, left, right, fold_case)
        # A bare operand is a condition only if it is boolean: startswith(...), (...), true, isFlag.
        if start.kind in {"number", "string", "datetime"}:
            raise ODataError("expected a comparison operator after a literal", token.position)
        return IsTrue(left)

    def operand(self) -> Node:
        token = self.current
        if token.kind in {"string", "number", "datetime"}:
            self.advance()
            return Literal(token.value)
        if token.kind == "punct" and token.text == "(":
            self.advance()
            self.enter(token)
            inner = self.or_expr()
            self.expect_punct(")")
            self.depth -= 1
            return inner
        if token.kind == "name":
            self.advance()
            lowered = token.text.lower()
            if lowered in {"true", "false"}:
                return Literal(lowered == "true")
            if lowered == "null":
                return Literal(None)
            if self.current.kind == "punct" and self.current.text == "(":
                return self.function_call(token)
            return Prop(tuple(token.text.split("/")))
        raise ODataError(
            f"expected a property, literal or '(' but found {self._describe(token)}", token.position
        )

    def function_call(self, name: _Token) -> Node:
        if name.text.lower() != "startswith":
            raise ODataError(f"unsupported function '{name.text}'", name.position)
        self.expect_punct("(")
        subject = self.current
        if subject.kind != "name" or subject.text.lower() in {"true", "false", "null"}:
            raise ODataError("startswith expects a property as its first argument", subject.position)
        self.advance()
        path = tuple(subject.text.split("/"))
        self.expect_punct(",")
        prefix_token = self.current
        if prefix_token.kind != "string":
            raise ODataError(
                "startswith expects a string literal as its second argument", prefix_token.position
            )
        self.advance()
        self.expect_punct(")")
        return StartsWith(path, prefix_token.value)


def _is_enum_property(node: Node) -> bool:
    if not isinstance(node, Prop):
        return False
    last = node.path[-1]
    # allocationState, schedulingState, previousState... are enums too.
    return last.lower() in _ENUM_PROPERTY_NAMES or last.endswith("State")


def _evaluator(node: Node) -> _Value:
    """A closure computing the node's value over a wire dict (built once per filter)."""
    if isinstance(node, Literal):
        value = node.value
        return lambda _resource: value
    if isinstance(node, Prop):
        path = list(node.path)
        return lambda resource: _lookup(resource, path)
    if isinstance(node, StartsWith):
        subject, prefix = list(node.path), node.prefix

        def starts_with(resource: dict[str, Any]) -> bool:
            value = _lookup(resource, subject)
            return isinstance(value, str) and value.startswith(prefix)

        return starts_with
    if isinstance(node, Compare):
        left, right, op, fold_case = _evaluator(node.left), _evaluator(node.right), node.op, node.fold_case
        return lambda resource: _compare(op, left(resource), right(resource), fold_case=fold_case)
    if isinstance(node, IsTrue):
        operand = _evaluator(node.operand)
        return lambda resource: operand(resource) is True
    if isinstance(node, Not):
        inner = _evaluator(node.inner)
        return lambda resource: not inner(resource)
    parts = [_evaluator(part) for part in node.parts]
    if isinstance(node, AllOf):
        return lambda resource: all(part(resource) for part in parts)
    return lambda resource: any(part(resource) for part in parts)


def parse_filter(text: str | None) -> Node | None:
    """Parse an OData `$filter`; None for an absent or blank filter (which matches everything)."""
    if text is None or not text.strip():
        return None
    return _Parser(text).parse()


def predicate_of(node: Node | None) -> Predicate:
    if node is None:
        return lambda _resource: True
    return _evaluator(node)


def compile_filter(text: str | None) -> Predicate:
    """Compile an OData `$filter`; an absent or blank filter matches everything."""
    return predicate_of(parse_filter(text))


def conjuncts(node: Node | None) -> list[Node]:
    """The parts a filter requires all of (itself, unless it is an `and`)."""
    if node is None:
        return []
    return list(node.parts) if isinstance(node, AllOf) else [node]


def all_of(parts: list[Node]) -> Node | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


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


# --- Translation to SQL -------------------------------------------------------------------
#
# A condition is translated only when its meaning in SQL is exactly the evaluator's over the
# wire form: same null rules, same type-mismatch rules, same case folding, same string order.
# Every translated condition is two-valued (never SQL NULL), so `not`, `and` and `or` compose as
# they do in Python. Anything else returns None and stays with the Python evaluator.


@dataclass(frozen=True)
class SqlProperty:
    """Where a wire property lives in the store.

    kind: "text" (a string column holding exactly the wire string; enum columns hold the
    lower-case value), "int" (an integer column), "time" (a timestamp the wire shows with
    microseconds, so comparisons are exact) or "json_int" (`key` of a JSON column, a number
    when present)."""

    column: Any
    kind: str
    nullable: bool = False
    key: str = ""


_FLIPPED = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
_INT64 = 2**63 - 1
_EXACT_FLOAT = 2**53


def _sql_compare(op: str, left: Any, right: Any) -> Any:
    return _COMPARISONS[op](left, right)


def _safe_text(value: str) -> bool:
    """Strings both backends bind exactly: PostgreSQL text cannot hold NUL, and lone surrogates
    do not encode."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _exact_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return -_INT64 <= value <= _INT64
    return value == value and abs(value) <= _EXACT_FLOAT


class _SqlTranslator:
    def __init__(self, properties: dict[str, SqlProperty], dialect: str) -> None:
        self.properties = properties
        self.postgres = dialect == "postgresql"

    def const(self, value: bool) -> Any:
        return true() if value else false()

    def prop(self, node: Node) -> SqlProperty | None:
        if not isinstance(node, Prop):
            return None
        return self.properties.get("/".join(segment.lower() for segment in node.path))

    def translate(self, node: Node) -> Any | None:
        if isinstance(node, Not):
            inner = self.translate(node.inner)
            return None if inner is None else not_(inner)
        if isinstance(node, AllOf | AnyOf):
            parts: list[Any] = [self.translate(part) for part in node.parts]
            if any(part is None for part in parts):
                return None
            return and_(*parts) if isinstance(node, AllOf) else or_(*parts)
        if isinstance(node, IsTrue):
            if isinstance(node.operand, _CONDITIONS):
                return self.translate(node.operand)
            if isinstance(node.operand, Literal):
                return self.const(node.operand.value is True)
            prop = self.prop(node.operand)
            # Only the boolean true is true: no text, integer or time value ever is.
            return self.const(False) if prop is not None and prop.kind in ("text", "int", "time") else None
        if isinstance(node, StartsWith):
            return self.starts_with(node)
        if isinstance(node, Compare):
            return self.compare(node)
        return None

    def starts_with(self, node: StartsWith) -> Any | None:
        prop = self.properties.get("/".join(segment.lower() for segment in node.path))
        if prop is None or not _safe_text(node.prefix):
            return None
        if prop.kind == "int":
            return self.const(False)
        if prop.kind != "text":
            return None
        test = func.substr(prop.column, 1, len(node.prefix)) == node.prefix
        return and_(prop.column.is_not(None), test) if prop.nullable else test

    def compare(self, node: Compare) -> Any | None:
        op = node.op
        prop, literal = self.prop(node.left), node.right
        if prop is None:
            prop, literal, op = self.prop(node.right), node.left, _FLIPPED[op]
        if prop is None or not isinstance(literal, Literal):
            return None
        value = literal.value
        if value is None:
            return self.null_comparison(prop, op)
        if prop.kind == "text":
            return self.text_comparison(prop, op, value, fold_case=node.fold_case)
        if prop.kind == "int":
            if isinstance(value, str | bool):
                return self.const(op == "ne")
            # Beyond Int32 a literal cannot bind to PostgreSQL's INTEGER columns: the rows are
            # judged in Python instead (only an absurd filter pays for that).
            fits = _exact_number(value) and -(2**31) <= value < 2**31
            return _sql_compare(op, prop.column, value) if fits else None
        if prop.kind == "time":
            if not isinstance(value, datetime):
                return None
            return _sql_compare(op, prop.column, value.astimezone(UTC))
        if prop.kind == "json_int" and _exact_number(value):
            return self.json_number_comparison(prop, op, value)
        return None

    def null_comparison(self, prop: SqlProperty, op: str) -> Any:
        if op not in ("eq", "ne"):
            return self.const(False)
        if prop.kind == "json_int":
            kind = self.json_type(prop)
            is_null = kind.is_(None) | (kind == "null")
        elif not prop.nullable:
            return self.const(op == "ne")
        else:
            is_null = prop.column.is_(None)
        return is_null if op == "eq" else not_(is_null)

    def text_comparison(self, prop: SqlProperty, op: str, value: Any, *, fold_case: bool) -> Any | None:
        if isinstance(value, int | float):  # bool included: a string never equals either
            return self.const(op == "ne")
        if not isinstance(value, str) or not _safe_text(value):
            return None
        if fold_case:
            # Enum columns hold lower-case values, which casefold leaves as they are.
            value = value.casefold()
        column = prop.column
        if op not in ("eq", "ne") and self.postgres:
            # Python orders strings by code point, as SQLite and PostgreSQL's "C" collation do.
            column = column.collate("C")
        test = _sql_compare(op, column, value)
        if prop.nullable:
            # A missing value is unequal to every string and unordered.
            return (prop.column.is_(None) | test) if op == "ne" else and_(prop.column.is_not(None), test)
        return test

    def json_type(self, prop: SqlProperty) -> Any:
        if self.postgres:
            return func.json_typeof(prop.column[prop.key])
        return func.json_type(prop.column, f"$.{prop.key}")

    def json_number_comparison(self, prop: SqlProperty, op: str, value: Any) -> Any:
        kind = self.json_type(prop)
        number: Any
        if self.postgres:
            is_number = kind == "number"
            number = cast(prop.column[prop.key].as_string(), Numeric)
        else:
            is_number = kind.in_(("integer", "real"))
            number = func.json_extract(prop.column, f"$.{prop.key}")
        # Absent, null, or not a number: unequal and unordered, as in Python.
        return case((is_number, _sql_compare(op, number, value)), else_=self.const(op == "ne"))


def to_sql(node: Node, properties: dict[str, SqlProperty], dialect: str) -> Any | None:
    """The SQL condition meaning exactly what the evaluator means for `node`, or None when the
    node reads something the store has no column for (or SQL would read it differently)."""
    return _SqlTranslator(properties, dialect).translate(node)


def split_for_sql(node: Node | None, properties: dict[str, SqlProperty],
                  dialect: str) -> tuple[list[Any], Node | None]:
    """The filter's conjuncts as SQL conditions where they translate, and the rest (to evaluate
    in Python on the rows SQL lets through) as one node, or None."""
    sql: list[Any] = []
    rest: list[Node] = []
    for part in conjuncts(node):
        condition = to_sql(part, properties, dialect)
        if condition is None:
            rest.append(part)
        else:
            sql.append(condition)
    return sql, all_of(rest)


def equality_literal(node: Node, name: str) -> Any:
    """The literal of a `name eq <literal>` comparison (either way round), or None."""
    if not isinstance(node, Compare) or node.op != "eq":
        return None
    for prop, literal in ((node.left, node.right), (node.right, node.left)):
        if isinstance(prop, Prop) and len(prop.path) == 1 and prop.path[0].lower() == name \
                and isinstance(literal, Literal):
            return literal.value
    return None

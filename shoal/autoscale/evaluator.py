"""Compiles a parsed formula into closures and evaluates it against samples.

    text --parse_formula--> Formula (AST + one closure per statement, built once)
    Formula + EvaluationInput --evaluate--> EvaluationResult

Compiling to closures (rather than walking the AST on every run) is what keeps
an evaluation well under a millisecond; names, functions and operators are
resolved once, at compile time.  Anything that can only be known at run time
(types, missing variables, an unknown function that is actually reached) is an
evaluation error captured in the result, never an exception to the caller.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import parser as ast
from .errors import (
    EVALUATION_ERROR,
    INVALID_VALUE,
    LIMIT,
    TYPE_MISMATCH,
    UNKNOWN_FUNCTION,
    UNKNOWN_NAME,
    FormulaError,
    evaluation_error,
    syntax_error,
)
from .functions import FUNCTIONS, TIMESTAMP_MEMBERS, StopEvaluation
from .samples import (
    EMPTY_HISTORY,
    METRIC_ALIASES,
    METRICS,
    SAMPLE_METHODS,
    SAMPLE_PERIOD,
    MetricView,
    SampleHistory,
)
from .types import (
    BINARY_OPERATORS,
    TIME_INTERVAL_CONSTANTS,
    Timestamp,
    Value,
    apply_binary,
    apply_unary,
    datetime_to_ticks,
    format_value,
    timedelta_to_ticks,
    type_name,
)

DEFAULT_DEALLOCATION_OPTION = "requeue"

TARGET_DEDICATED = "$TargetDedicatedNodes"
TARGET_LOW_PRIORITY = "$TargetLowPriorityNodes"
NODE_DEALLOCATION_OPTION = "$NodeDeallocationOption"
# Legacy names of the targets; if a formula assigns both, the full name wins.
TARGET_ALIASES = {"$TargetDedicated": TARGET_DEDICATED, "$TargetLowPriority": TARGET_LOW_PRIORITY}
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
_TARGET_NAMES = frozenset({TARGET_DEDICATED, TARGET_LOW_PRIORITY, *TARGET_ALIASES})
_SERVICE_WRITABLE = _TARGET_NAMES | {NODE_DEALLOCATION_OPTION}

Compiled = Callable[["_Run"], Value]
SampleInput = Sequence[tuple[datetime, float]] | SampleHistory


# ------------------------------------------------------------ public records
@dataclass(frozen=True)
class EvaluationInput:
    """Everything an evaluation may look at.  `now` and sample times are UTC
    (naive datetimes are taken as UTC); `current` holds the pool's current
    targets and counts keyed by variable name."""

    now: datetime
    samples: Mapping[str, SampleInput] = field(default_factory=dict)
    current: Mapping[str, float | str] = field(default_factory=dict)
    sample_period: timedelta = SAMPLE_PERIOD
    visibility_lag: timedelta = timedelta(0)
    # rand() is seeded from this (default: from `now`) so evaluation stays a
    # pure function of its input.
    random_seed: int | None = None


@dataclass(frozen=True)
class EvaluationResult:
    target_dedicated: int
    target_low_priority: int
    node_deallocation_option: str | None
    variables: dict[str, Value]
    error: FormulaError | None = None
    # Names the formula actually wrote for the targets (alias or full name);
    # None when it did not assign that target.
    dedicated_name: str | None = None
    low_priority_name: str | None = None

    def results_string(self) -> str:
        """`autoScaleRun.results` (semantics.md §1.8, corrected by recorded traffic): both
        targets first, then the deallocation option (always), then other assigned variables sorted."""
        # Both targets are always listed, the spot one too when the formula leaves it alone
        # (recorded: test_batch.pyTestBatchtest_batch_scale_pools[sync].json, evaluateautoscale
        # of `$TargetDedicatedNodes=3` answers `...;$TargetLowPriorityNodes=0;...`).
        parts = [f"{self.dedicated_name or TARGET_DEDICATED}={self.target_dedicated}",
                 f"{self.low_priority_name or TARGET_LOW_PRIORITY}={self.target_low_priority}"]
        parts.append(f"{NODE_DEALLOCATION_OPTION}={self.node_deallocation_option or DEFAULT_DEALLOCATION_OPTION}")
        for name in sorted(n for n in self.variables if n not in _SERVICE_WRITABLE):
            parts.append(f"{name}={format_value(self.variables[name])}")
        return ";".join(parts)


class Formula:
    """A parsed and compiled formula; parse once, evaluate many times."""

    __slots__ = ("text", "statements", "_compiled")

    def __init__(self, text: str, statements: list[ast.Statement]) -> None:
        self.text = text
        self.statements = statements
        self._compiled = [_compile_statement(statement) for statement in statements]

    def __repr__(self) -> str:
        return f"Formula({len(self.statements)} statements)"


def parse_formula(text: str) -> Formula:
    """Parse and compile; raises FormulaError (syntax errors, limits)."""
    try:
        return Formula(text, ast.parse(text))
    except RecursionError as exc:  # the nesting limits should make this unreachable
        raise syntax_error("formula is nested too deeply", None, text, LIMIT) from exc


def evaluate(formula: Formula, data: EvaluationInput) -> EvaluationResult:
    """Run the formula; evaluation errors are reported in the result."""
    run = _Run(data)
    error: FormulaError | None = None
    try:
        for statement in formula._compiled:
            statement(run)
    except StopEvaluation:
        pass  # stop(): keep the assignments made so far (semantics.md §1.5)
    except FormulaError as exc:
        error = exc.locate(formula.text)
    except (RecursionError, ArithmeticError, ValueError, TypeError, MemoryError) as exc:
        # A bug or a pathological value must still end as a reported error.
        error = FormulaError(EVALUATION_ERROR, f"evaluation failed: {exc}", None, reason=INVALID_VALUE)
    if error is None:
        try:
            return _success(run)
        except FormulaError as exc:
            error = exc.locate(formula.text)
    return EvaluationResult(
        target_dedicated=_current_target(data.current, TARGET_DEDICATED),
        target_low_priority=_current_target(data.current, TARGET_LOW_PRIORITY),
        node_deallocation_option=_as_option(run.variables.get(NODE_DEALLOCATION_OPTION)),
        variables=run.variables,
        error=error,
        dedicated_name=_written(run.variables, TARGET_DEDICATED),
        low_priority_name=_written(run.variables, TARGET_LOW_PRIORITY),
    )


def _success(run: _Run) -> EvaluationResult:
    variables = run.variables
    dedicated_name = _written(variables, TARGET_DEDICATED)
    low_name = _written(variables, TARGET_LOW_PRIORITY)
    current = run.data.current
    return EvaluationResult(
        target_dedicated=_to_target(variables, dedicated_name, current, TARGET_DEDICATED),
        target_low_priority=_to_target(variables, low_name, current, TARGET_LOW_PRIORITY),
        node_deallocation_option=_as_option(variables.get(NODE_DEALLOCATION_OPTION)),
        variables=variables,
        dedicated_name=dedicated_name,
        low_priority_name=low_name,
    )


def _written(variables: dict[str, Value], full_name: str) -> str | None:
    if full_name in variables:
        return full_name
    for alias, target in TARGET_ALIASES.items():
        if target == full_name and alias in variables:
            return alias
    return None


def _to_target(variables: dict[str, Value], name: str | None, current: Mapping, full_name: str) -> int:
    if name is None:
        return _current_target(current, full_name)
    value = variables[name]
    assert type(value) is float  # checked at assignment
    if value != value or value in (float("inf"), float("-inf")):
        raise evaluation_error(f"{name} evaluated to {format_value(value)}", None, INVALID_VALUE)
    # Truncate toward zero and clamp at 0 (semantics.md §7.1).
    return max(0, int(value))


def _current_target(current: Mapping, name: str) -> int:
    value = current.get(name, 0.0)
    try:
        return max(0, int(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return 0


def _as_option(value: Value | None) -> str | None:
    return value if isinstance(value, str) else None


# ------------------------------------------------------- evaluation context
class _Run:
    """Mutable state of one evaluation."""

    __slots__ = ("data", "now_ticks", "lag_ticks", "period_ticks", "variables", "targets", "_views", "_rng")

    def __init__(self, data: EvaluationInput) -> None:
        self.data = data
        self.now_ticks = datetime_to_ticks(data.now)
        self.lag_ticks = max(0, timedelta_to_ticks(data.visibility_lag))
        self.period_ticks = timedelta_to_ticks(data.sample_period)
        self.variables: dict[str, Value] = {}
        # Latest value written to each target, under either of its names.
        self.targets: dict[str, float] = {}
        self._views: dict[str, MetricView] = {}
        self._rng: random.Random | None = None

    def random(self) -> float:
        if self._rng is None:
            seed = self.data.random_seed if self.data.random_seed is not None else self.now_ticks
            self._rng = random.Random(seed)
        return self._rng.random()

    def metric(self, name: str, canonical: str) -> MetricView:
        view = self._views.get(name)
        if view is None:
            raw = self.data.samples.get(canonical)
            if raw is None:
                history = EMPTY_HISTORY
            elif isinstance(raw, SampleHistory):
                history = raw
            else:
                history = SampleHistory.from_pairs(raw)
            view = MetricView(name, history, self.now_ticks, self.lag_ticks, self.period_ticks)
            self._views[name] = view
        return view


# ---------------------------------------------------------------- compiling
def _compile_statement(statement: ast.Statement) -> Callable[[_Run], None]:
    if isinstance(statement, ast.NameStatement):
        read = _compile(statement.name)

        def run_read(run: _Run) -> None:
            read(run)  # evaluated for its effect: an undefined name fails the run

        return run_read
    if isinstance(statement, ast.CallStatement):
        call = _compile(statement.call)

        def run_call(run: _Run) -> None:
            call(run)  # evaluated for its effect: `stop();`

        return run_call
    name = statement.target
    value_of = _compile(statement.value)
    position = statement.value.position
    if name in _TARGET_NAMES:
        canonical = TARGET_ALIASES.get(name, name)

        def assign_target(run: _Run) -> None:
            value = value_of(run)
            if type(value) is not float:
                raise evaluation_error(f"{name} must be a double, not a {type_name(value)}", position, TYPE_MISMATCH)
            run.variables[name] = value
            run.targets[canonical] = value

        return assign_target
    if name == NODE_DEALLOCATION_OPTION:

        def assign_option(run: _Run) -> None:
            value = value_of(run)
            option = value.lower() if type(value) is str else None
            if option not in DEALLOCATION_OPTIONS:
                raise evaluation_error(
                    f"{name} must be one of {', '.join(DEALLOCATION_OPTIONS)}, not {format_value(value)}",
                    position,
                    INVALID_VALUE if type(value) is str else TYPE_MISMATCH,
                )
            run.variables[name] = option

        return assign_option

    def assign(run: _Run) -> None:
        run.variables[name] = value_of(run)

    return assign


def _compile(node: ast.Node) -> Compiled:
    compiler = _COMPILERS[type(node)]
    return compiler(node)


def _constant(value: Value) -> Compiled:
    return lambda run: value


def _failing(error: FormulaError) -> Compiled:
    # Names/functions that cannot work still only fail if they are reached
    # (e.g. inside the unchosen branch of a ternary they are harmless).
    def fail(run: _Run) -> Value:
        raise error

    return fail


def _compile_name(node: ast.Name) -> Compiled:
    name, position = node.name, node.position
    if name in TIME_INTERVAL_CONSTANTS:
        return _constant(TIME_INTERVAL_CONSTANTS[name])
    if name in _TARGET_NAMES:
        canonical = TARGET_ALIASES.get(name, name)

        def read_target(run: _Run) -> Value:
            assigned = run.targets.get(canonical)
            if assigned is not None:
                return assigned
            # Reading a target the formula has not set yields the current one.
            return float(run.data.current.get(canonical, 0.0))

        return read_target
    if name == NODE_DEALLOCATION_OPTION:
        return lambda run: run.variables.get(name) or str(
            run.data.current.get(name, DEFAULT_DEALLOCATION_OPTION)
        )
    if name in METRICS or name in METRIC_ALIASES:
        canonical = METRIC_ALIASES.get(name, name)

        def read_metric(run: _Run) -> Value:
            # Node counts are usable as scalars (`$CurrentDedicatedNodes * 1.1`):
            # the control plane's current value, else the newest visible sample.
            value = run.data.current.get(canonical)
            if value is not None:
                return float(value)
            return run.metric(name, canonical).latest(position)

        return read_metric

    def read_variable(run: _Run) -> Value:
        try:
            return run.variables[name]
        except KeyError:
            # Batch's wording (recorded: azure-sdk-for-node batchservice-tests.json).
            raise evaluation_error(f"Undefined symbol: {name}", position, UNKNOWN_NAME) from None

    return read_variable


def _compile_unary(node: ast.Unary) -> Compiled:
    operand, op, position = _compile(node.operand), node.op, node.position
    if op == "-":

        def negate(run: _Run) -> Value:
            value = operand(run)
            return -value if type(value) is float else apply_unary(op, value, position)

        return negate
    return lambda run: apply_unary(op, operand(run), position)


def _compile_binary(node: ast.Binary) -> Compiled:
    left, right, op, position = _compile(node.left), _compile(node.right), node.op, node.position
    if op in ("&&", "||"):
        return _compile_logical(left, right, op == "&&", position)
    fast = BINARY_OPERATORS[(op, float, float)]

    def binary(run: _Run) -> Value:
        a = left(run)
        b = right(run)
        if type(a) is float and type(b) is float:
            return fast(a, b)
        return apply_binary(op, a, b, position)

    return binary


def _compile_logical(left: Compiled, right: Compiled, is_and: bool, position: int) -> Compiled:
    symbol = "&&" if is_and else "||"

    def check(value: Value) -> float:
        if type(value) is not float:
            raise evaluation_error(f"operator '{symbol}' needs doubles, not a {type_name(value)}", position, TYPE_MISMATCH)
        return value  # type: ignore[return-value]

    # Short-circuit like C: the right operand is not evaluated when the left decides.
    if is_and:
        return lambda run: 1.0 if check(left(run)) and check(right(run)) else 0.0
    return lambda run: 1.0 if check(left(run)) or check(right(run)) else 0.0


def _compile_conditional(node: ast.Conditional) -> Compiled:
    condition, when_true, when_false = _compile(node.condition), _compile(node.when_true), _compile(node.when_false)
    position = node.position

    def choose(run: _Run) -> Value:
        test = condition(run)
        if type(test) is not float:
            raise evaluation_error(f"condition must be a double, not a {type_name(test)}", position, TYPE_MISMATCH)
        # Only the chosen branch is evaluated (semantics.md §7.3).
        return when_true(run) if test else when_false(run)

    return choose


def _compile_call(node: ast.Call) -> Compiled:
    function = FUNCTIONS.get(node.function)
    if function is None:
        return _failing(evaluation_error(f"unknown function {node.function}()", node.position, UNKNOWN_FUNCTION))
    args, position = [_compile(arg) for arg in node.args], node.position
    if not args:
        return lambda run: function([], position, run)
    if len(args) == 1:
        only = args[0]
        return lambda run: function([only(run)], position, run)
    return lambda run: function([arg(run) for arg in args], position, run)


def _compile_member(node: ast.Member) -> Compiled:
    target, member, position = _compile(node.target), node.member, node.position
    extract = TIMESTAMP_MEMBERS.get(member)

    def read(run: _Run) -> Value:
        value = target(run)
        if type(value) is not Timestamp:
            raise evaluation_error(f"a {type_name(value)} has no member .{member}", position, TYPE_MISMATCH)
        if extract is None:
            raise evaluation_error(f"a timestamp has no member .{member}", position, UNKNOWN_NAME)
        return float(extract(value.to_datetime()))

    return read


def _compile_method(node: ast.MethodCall) -> Compiled:
    target, method, position = node.target, node.method, node.position
    if not isinstance(target, ast.Name) or not (target.name in METRICS or target.name in METRIC_ALIASES):
        shown = target.name if isinstance(target, ast.Name) else "this value"
        return _failing(
            evaluation_error(f"{shown} has no sample methods; .{method}() needs a metric", position, TYPE_MISMATCH)
        )
    if method not in SAMPLE_METHODS:
        return _failing(evaluation_error(f"unknown method {method}()", position, UNKNOWN_FUNCTION))
    name = target.name
    canonical = METRIC_ALIASES.get(name, name)
    args = [_compile(arg) for arg in node.args]
    return lambda run: run.metric(name, canonical).call(method, [arg(run) for arg in args], position)


_COMPILERS: dict[type, Callable] = {
    ast.Number: lambda node: _constant(node.value),
    ast.String: lambda node: _constant(node.value),
    ast.Name: _compile_name,
    ast.Unary: _compile_unary,
    ast.Binary: _compile_binary,
    ast.Conditional: _compile_conditional,
    ast.Call: _compile_call,
    ast.Member: _compile_member,
    ast.MethodCall: _compile_method,
}

__all__ = [
    "DEALLOCATION_OPTIONS",
    "EvaluationInput",
    "EvaluationResult",
    "Formula",
    "evaluate",
    "parse_formula",
]

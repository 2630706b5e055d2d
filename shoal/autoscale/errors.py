"""The one error type of the formula language, carrying a Batch-style code.

Syntax errors and limit violations are raised by `parse_formula` (the API turns
them into a 400 body); evaluation errors are captured in `EvaluationResult.error`
(the API reports them in `autoScaleRun.error`) and never raised to the caller.
"""

from __future__ import annotations

# Codes Batch publishes (semantics.md §1.1, §1.8).
SYNTAX_ERROR = "AutoScalingFormulaSyntaxError"
TOO_LONG = "AutoScaleFormulaTooLong"
INSUFFICIENT_SAMPLE_DATA = "InsufficientSampleData"
# Batch does not publish a code for type errors, unknown names and the like;
# Shoal uses one code for all of them and says which in `reason`.
EVALUATION_ERROR = "AutoScalingFormulaEvaluationError"

_MESSAGES = {
    SYNTAX_ERROR: "The specified autoscale formula has a syntax error.",
    TOO_LONG: "The specified autoscale formula exceeds the length limit.",
    INSUFFICIENT_SAMPLE_DATA: "Autoscale evaluation failed due to insufficient sample data",
    # As Batch words it (recorded: azure-sdk-for-node batchservice-tests.json, evaluateautoscale).
    EVALUATION_ERROR: "The specified auto-scaling formula has evaluation error",
}

# Finer-grained reasons, so tests and logs can tell failures apart without
# parsing messages.  They are Shoal's own vocabulary.
SYNTAX = "Syntax"
LIMIT = "Limit"
READ_ONLY = "ReadOnlyVariable"
TYPE_MISMATCH = "TypeMismatch"
UNKNOWN_NAME = "UnknownName"
UNKNOWN_FUNCTION = "UnknownFunction"
ARGUMENTS = "InvalidArguments"
EMPTY_VECTOR = "EmptyVector"
INVALID_VALUE = "InvalidValue"
INSUFFICIENT = "InsufficientSamples"


class FormulaError(Exception):
    """A formula that cannot be parsed or evaluated.

    `position` is a character offset into the formula text (None when the error
    is about the formula as a whole); `detail` says what went wrong there.
    """

    def __init__(
        self,
        code: str,
        detail: str,
        position: int | None = None,
        *,
        reason: str = SYNTAX,
        source: str | None = None,
    ) -> None:
        self.code = code
        self.detail = detail
        self.position = position
        self.reason = reason
        self.line, self.column = _line_col(source, position)
        super().__init__(self.detail_with_location)

    @property
    def message(self) -> str:
        return _MESSAGES.get(self.code, "Autoscale formula error.")

    @property
    def detail_with_location(self) -> str:
        # Batch prefixes details with "Line L, Col C: " (seen in published
        # InsufficientSampleData errors); keep that shape.
        if self.line is None:
            return self.detail
        return f"Line {self.line}, Col {self.column}: {self.detail}"

    @property
    def values(self) -> list[dict[str, str]]:
        """Key/value pairs for an Azure OData error body."""
        return [{"key": "Message", "value": self.detail_with_location}]

    def to_autoscale_run_error(self) -> dict[str, object]:
        """The `autoScaleRun.error` shape, whose pairs use `name` rather than `key`."""
        return {
            "code": self.code,
            "message": self.message,
            "values": [{"name": "Message", "value": self.detail_with_location}],
        }

    def locate(self, source: str) -> FormulaError:
        """Fill line/column once the formula text is known (errors raised deep
        inside evaluation only know their offset)."""
        if self.line is None and self.position is not None:
            self.line, self.column = _line_col(source, self.position)
            self.args = (self.detail_with_location,)
        return self

    def __repr__(self) -> str:
        return f"FormulaError({self.code!r}, {self.detail!r}, position={self.position!r}, reason={self.reason!r})"


def _line_col(source: str | None, position: int | None) -> tuple[int | None, int | None]:
    if source is None or position is None:
        return None, None
    position = max(0, min(position, len(source)))
    line = source.count("\n", 0, position) + 1
    column = position - (source.rfind("\n", 0, position) + 1) + 1
    return line, column


def syntax_error(detail: str, position: int | None, source: str, reason: str = SYNTAX) -> FormulaError:
    return FormulaError(SYNTAX_ERROR, detail, position, reason=reason, source=source)


def evaluation_error(detail: str, position: int | None, reason: str) -> FormulaError:
    return FormulaError(EVALUATION_ERROR, detail, position, reason=reason)

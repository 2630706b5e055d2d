"""The Azure Batch autoscale formula language: a pure parser and evaluator.

    formula = parse_formula(text)                  # FormulaError on syntax errors/limits
    result = evaluate(formula, EvaluationInput(now=..., samples=..., current=...))
    result.target_dedicated, result.results_string(), result.error

No I/O and no clock: the evaluation time and the sample histories are inputs.
See README.md beside this file.
"""

from .errors import EVALUATION_ERROR, INSUFFICIENT_SAMPLE_DATA, SYNTAX_ERROR, TOO_LONG, FormulaError
from .evaluator import (
    DEALLOCATION_OPTIONS,
    EvaluationInput,
    EvaluationResult,
    Formula,
    evaluate,
    parse_formula,
)
from .parser import MAX_FORMULA_CHARS, MAX_STATEMENTS
from .samples import METRICS, SAMPLE_LAG, SAMPLE_PERIOD, SampleHistory, next_sample_time, seed_sample_time
from .types import TimeInterval, Timestamp, format_value

__all__ = [
    "DEALLOCATION_OPTIONS",
    "EVALUATION_ERROR",
    "INSUFFICIENT_SAMPLE_DATA",
    "MAX_FORMULA_CHARS",
    "MAX_STATEMENTS",
    "METRICS",
    "SAMPLE_LAG",
    "SAMPLE_PERIOD",
    "SYNTAX_ERROR",
    "TOO_LONG",
    "EvaluationInput",
    "EvaluationResult",
    "Formula",
    "FormulaError",
    "SampleHistory",
    "TimeInterval",
    "Timestamp",
    "evaluate",
    "format_value",
    "next_sample_time",
    "parse_formula",
    "seed_sample_time",
]

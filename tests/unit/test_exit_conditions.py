"""Which exit options apply to a task's end (semantics §3.7), from plain data.

The shape of the conditions is the one real Azure accepted and echoed in
oracle/recordings/azure-sdk-for-node/batchservice-tests.json ("should create a task with exit
conditions successfully"): exitCodes with exitOptions {jobAction, dependencyAction} and a default.
"""

from __future__ import annotations

import pytest

from shoal.errors import BadRequest
from shoal.service import exit_conditions as ec
from shoal.service.exit_conditions import ExitOptions

CONDITIONS = {
    "exitCodes": [{"code": 1, "exitOptions": {"jobAction": "none", "dependencyAction": "block"}},
                  {"code": 14, "exitOptions": {"dependencyAction": "satisfy"}}],
    "exitCodeRanges": [{"start": 10, "end": 20, "exitOptions": {"jobAction": "disable"}},
                       {"start": 15, "end": 30, "exitOptions": {"jobAction": "none", "dependencyAction": "satisfy"}}],
    "preProcessingError": {"jobAction": "none", "dependencyAction": "satisfy"},
    "fileUploadError": {"jobAction": "disable"},
    "default": {"jobAction": "terminate", "dependencyAction": "satisfy"},
}

TABLE = [
    # (conditions, exit code, how it ended) → (jobAction, dependencyAction)
    (None, 0, ec.EXITED, ("none", "satisfy")),
    (None, 3, ec.EXITED, ("terminate", "block")),
    (None, None, ec.PRE_PROCESSING_ERROR, ("terminate", "block")),
    (None, 0, ec.FILE_UPLOAD_ERROR, ("terminate", "block")),
    # An exact code beats every range; an unset option takes its default for that code.
    (CONDITIONS, 1, ec.EXITED, ("none", "block")),
    (CONDITIONS, 14, ec.EXITED, ("terminate", "satisfy")),
    # The first range holding the code wins over later ones.
    (CONDITIONS, 16, ec.EXITED, ("disable", "block")),
    (CONDITIONS, 25, ec.EXITED, ("none", "satisfy")),
    # Not listed: default.
    (CONDITIONS, 2, ec.EXITED, ("terminate", "satisfy")),
    (CONDITIONS, -1, ec.EXITED, ("terminate", "satisfy")),
    # Exit 0 never falls through to default...
    (CONDITIONS, 0, ec.EXITED, ("none", "satisfy")),
    # ...but listed explicitly it takes the listed options.
    ({"exitCodes": [{"code": 0, "exitOptions": {"dependencyAction": "block"}}]}, 0, ec.EXITED, ("none", "block")),
    ({"exitCodeRanges": [{"start": -5, "end": 5, "exitOptions": {"jobAction": "disable"}}]}, 0, ec.EXITED,
     ("disable", "satisfy")),
    # Pre-processing errors: their own option, else default; the exit codes play no part.
    (CONDITIONS, None, ec.PRE_PROCESSING_ERROR, ("none", "satisfy")),
    ({"default": {"dependencyAction": "satisfy"}}, None, ec.PRE_PROCESSING_ERROR, ("terminate", "satisfy")),
    # Upload errors: a matched exit code wins over fileUploadError, which wins over default.
    (CONDITIONS, 1, ec.FILE_UPLOAD_ERROR, ("none", "block")),
    (CONDITIONS, 0, ec.FILE_UPLOAD_ERROR, ("disable", "block")),
    ({"default": {"jobAction": "none"}}, 0, ec.FILE_UPLOAD_ERROR, ("none", "block")),
    # A termination or timeout ends without an exit code: default.
    (CONDITIONS, None, ec.EXITED, ("terminate", "satisfy")),
]


@pytest.mark.parametrize(("conditions", "code", "kind", "expected"), TABLE)
def test_resolution(conditions, code, kind, expected):
    assert ec.resolve(conditions, code, kind) == ExitOptions(*expected)


@pytest.mark.parametrize(("exit_code", "failure", "kind"), [
    (0, None, ec.EXITED),
    (3, None, ec.EXITED),
    (3, {"code": "FailureExitCode"}, ec.EXITED),
    (None, {"code": "TaskEnded"}, ec.EXITED),
    (None, {"code": "CommandProgramNotFound"}, ec.PRE_PROCESSING_ERROR),
    (None, {"code": "BlobNotFound"}, ec.PRE_PROCESSING_ERROR),
    (0, {"code": "FileUploadContainerNotFound"}, ec.FILE_UPLOAD_ERROR),
])
def test_how_an_attempt_ended(exit_code, failure, kind):
    assert ec.kind_of(exit_code, failure) == kind


def test_validation_stores_enums_lower_case_and_finds_job_actions():
    body = {"exitConditions": {"exitCodes": [{"code": "2", "exitOptions": {"dependencyAction": "Satisfy"}}],
                               "default": {"jobAction": "Terminate"}}}
    stored = ec.validate(body)
    assert stored == {"exitCodes": [{"code": 2, "exitOptions": {"dependencyAction": "satisfy"}}],
                      "default": {"jobAction": "terminate"}}
    assert ec.names_job_action(stored) == ("exitConditions.default.jobAction", "terminate")
    assert ec.names_job_action({"exitCodes": [{"code": 1, "exitOptions": {"dependencyAction": "block"}}]}) is None


@pytest.mark.parametrize("conditions", [
    [], "x", {"exitCodes": {}}, {"exitCodes": [7]}, {"exitCodes": [{"exitOptions": {}}]},
    {"exitCodes": [{"code": 1}]}, {"exitCodes": [{"code": True, "exitOptions": {}}]},
    {"exitCodeRanges": [{"start": 2, "end": 1, "exitOptions": {}}]},
    {"exitCodeRanges": [{"start": 1, "exitOptions": {}}]},
    {"default": {"jobAction": "requeue"}}, {"default": {"dependencyAction": 1}},
    {"exitCodes": [{"code": n, "exitOptions": {}} for n in range(ec.MAX_MAPPINGS + 1)]},
])
def test_bad_conditions_are_refused(conditions):
    with pytest.raises(BadRequest):
        ec.validate({"exitConditions": conditions})

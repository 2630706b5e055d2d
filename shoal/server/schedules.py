"""The job schedule duty: starts the jobs of schedules that are due (shoal.service.job_schedules).

Each pass is one seek on the schedules' due index and a bounded batch, on the writer; it runs
often enough that a one-minute recurrence under `--time-scale 60` (one real second) is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from shoal.service import job_schedules
from shoal.service.context import Context
from shoal.store.runner import StoreRunner

SCHEDULE_INTERVAL_S = 0.25
# A pass that takes longer than this is abandoned and runs again on its next pass.
SCHEDULE_DUTY_TIMEOUT_S = 30.0


def schedule_duty(ctx: Context, runner: StoreRunner) -> Callable[[], Awaitable[Any]]:
    return lambda: runner.write(job_schedules.run_due, ctx)

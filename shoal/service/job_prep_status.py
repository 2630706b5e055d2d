"""Job_ListPreparationAndReleaseTaskStatus: per node, what the job's preparation and release
tasks did there (service/job_prep_nodes.py keeps it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shoal.errors import Conflict
from shoal.service import job_prep, job_prep_nodes
from shoal.service import jobs as job_service
from shoal.service.context import Context


def list_page(ctx: Context, job_id: str, *, after_seq: int, limit: int, conditions: Sequence[Any] = (),
              predicate: Callable[[dict[str, Any]], bool] | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """A page of the job's per-node entries (wire form) and the token to go on from; 409 for a
    job with neither task, as Batch answers."""
    with ctx.engine.connect() as conn:
        job = job_service.load(conn, ctx, job_id)
        if not job.spec.get(job_prep.PREP) and not job.spec.get(job_prep.RELEASE):
            raise Conflict("The specified job does not have either job preparation task or job release task.",
                           code="JobPreparationTaskOrReleaseTaskNotSpecified")
        return job_prep_nodes.status_page(conn, ctx.base_url, job.seq, after_seq=after_seq, limit=limit,
                                          conditions=conditions, predicate=predicate)

"""Autoscale on pools: enable, disable, evaluate, and the evaluations that apply targets.

The formula language itself is pure (`shoal.autoscale`); this module feeds it the pool's
sample history and current counts, records `autoScaleRun`, and applies the targets through the
same allocation path a manual resize takes, with the formula's `$NodeDeallocationOption`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from shoal import autoscale as formula_language
from shoal import clock
from shoal.errors import BadRequest, Conflict, InvalidProperty, MissingProperty
from shoal.model.states import AllocationState, PoolState
from shoal.service import metrics, pool_records, request_body
from shoal.service import validation as v
from shoal.service.context import Context
from shoal.store.schema import pools

DEFAULT_INTERVAL = timedelta(minutes=15)
MIN_INTERVAL = timedelta(minutes=5)
MAX_INTERVAL = timedelta(hours=168)
MIN_ENABLE_SPACING = timedelta(seconds=30)


def parse(text: Any, name: str = "autoScaleFormula") -> formula_language.Formula:
    if text is None:
        raise MissingProperty(name)
    if not isinstance(text, str):
        raise InvalidProperty(name, text, "The value must be a string.")
    try:
        return formula_language.parse_formula(text)
    except formula_language.FormulaError as exc:
        raise BadRequest(exc.message, code=exc.code,
                         values={"PropertyName": name, "Message": exc.detail_with_location}) from exc


def interval(body: dict[str, Any], name: str = "autoScaleEvaluationInterval") -> timedelta | None:
    value = v.duration(body, name)
    if value is not None and not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise InvalidProperty(name, body[name], "The interval must be between 5 minutes and 168 hours.")
    return value


def _current(conn: Connection, pool: Any, option: str | None) -> dict[str, float | str]:
    counts = metrics.pool_counts(conn, pool)
    current: dict[str, float | str] = dict(counts)
    current["$TargetDedicatedNodes"] = float(pool.target_dedicated)
    current["$TargetLowPriorityNodes"] = float(pool.target_low_priority)
    current["$NodeDeallocationOption"] = option or "requeue"
    return current


def compute(ctx: Context, conn: Connection, pool: Any, text: str) -> formula_language.EvaluationResult:
    now = ctx.timebase.now()
    inputs = formula_language.EvaluationInput(
        now=now, samples=metrics.history(conn, pool.seq, now), current=_current(conn, pool, None),
        visibility_lag=ctx.sample_lag)
    return formula_language.evaluate(parse(text), inputs)


def run_record(result: formula_language.EvaluationResult, when: datetime) -> dict[str, Any]:
    record: dict[str, Any] = {"timestamp": clock.iso(when), "results": result.results_string()}
    if result.error is not None:
        record["error"] = result.error.to_autoscale_run_error()
    return record


def evaluate_and_apply(ctx: Context, conn: Connection, pool: Any) -> None:
    """One scheduled (or forced) evaluation: record the run; apply targets unless it failed."""
    now = ctx.timebase.now()
    spec = pool.spec
    result = compute(ctx, conn, pool, spec["autoScaleFormula"])
    every = clock.parse_duration(spec.get("autoScaleEvaluationInterval") or "PT15M")
    values: dict[str, Any] = {"autoscale_run": run_record(result, now), "autoscale_due": now + every}
    if result.error is None and (result.target_dedicated, result.target_low_priority) != (
            pool.target_dedicated, pool.target_low_priority):
        real_now = clock.now()
        values.update(target_dedicated=result.target_dedicated, target_low_priority=result.target_low_priority,
                      allocation_state=AllocationState.RESIZING, allocation_state_transition_time=real_now,
                      deallocation_option=result.node_deallocation_option or "requeue",
                      resize_deadline=real_now + timedelta(seconds=pool.resize_timeout_s), resize_errors=None,
                      etag=clock.new_etag(), last_modified=real_now)
    conn.execute(update(pools).where(pools.c.seq == pool.seq).values(**values))


def run_due(ctx: Context) -> bool:
    """Evaluate every autoscale pool whose interval has come round; True if any ran."""
    now = ctx.timebase.now()
    ran = False
    with ctx.engine.begin() as conn:
        due = conn.execute(select(pools).where(
            pools.c.account == ctx.account, pools.c.state == PoolState.ACTIVE, pools.c.autoscale_due.is_not(None),
            pools.c.autoscale_due <= now)).all()
        for pool in due:
            if pool.spec.get("enableAutoScale"):
                evaluate_and_apply(ctx, conn, pool)
                ran = True
    if ran:
        ctx.signals.wake_provider()
    return ran


def start_on_create(ctx: Context, conn: Connection, pool_seq: int) -> None:
    """A new autoscale pool: zero samples, then an evaluation at once (semantics §1.1)."""
    now = ctx.timebase.now()
    metrics.record_zero_samples(conn, pool_seq, now, ctx.sample_lag)
    pool = conn.execute(select(pools).where(pools.c.seq == pool_seq)).one()
    if pool.spec.get("enableAutoScale"):
        conn.execute(update(pools).where(pools.c.seq == pool_seq).values(autoscale_enabled_at=now))
        evaluate_and_apply(ctx, conn, pool)


def enable(ctx: Context, pool_id: str, body: Any) -> None:
    body = v.require_object(body)
    request_body.check(body, "pool.enableautoscale")
    every = interval(body)
    with ctx.engine.begin() as conn:
        pool = pool_records.load(conn, ctx, pool_id)
        pool_records.guard_not_deleting(pool)
        spec = dict(pool.spec)
        enabled = bool(spec.get("enableAutoScale"))
        text = body.get("autoScaleFormula")
        if text is None and not enabled:
            raise MissingProperty("autoScaleFormula")
        if text is not None:
            parse(text)
        if not enabled and pool.allocation_state != AllocationState.STEADY:
            raise Conflict("Autoscale cannot be enabled while the pool is resizing.", code="PoolNotSteady")
        now = ctx.timebase.now()
        last = clock.as_utc(pool.autoscale_enabled_at)
        if last is not None and now - last < MIN_ENABLE_SPACING:
            raise Conflict("Autoscale was enabled on this pool less than 30 seconds ago.",
                           code="TooManyEnableAutoScaleRequests")
        spec["enableAutoScale"] = True
        if text is not None:
            spec["autoScaleFormula"] = text
        if every is not None:
            spec["autoScaleEvaluationInterval"] = body["autoScaleEvaluationInterval"]
        spec.setdefault("autoScaleEvaluationInterval", clock.format_duration(DEFAULT_INTERVAL))
        conn.execute(update(pools).where(pools.c.seq == pool.seq).values(
            spec=spec, autoscale_enabled_at=now, etag=clock.new_etag(), last_modified=clock.now()))
        # A new formula or interval is evaluated at once and re-anchors the schedule.
        evaluate_and_apply(ctx, conn, conn.execute(select(pools).where(pools.c.seq == pool.seq)).one())
    ctx.signals.wake_provider()


def disable(ctx: Context, pool_id: str) -> None:
    with ctx.engine.begin() as conn:
        pool = pool_records.load(conn, ctx, pool_id)
        pool_records.guard_not_deleting(pool)
        spec = dict(pool.spec)
        spec["enableAutoScale"] = False
        for name in ("autoScaleFormula", "autoScaleEvaluationInterval"):
            spec.pop(name, None)
        conn.execute(update(pools).where(pools.c.seq == pool.seq).values(
            spec=spec, autoscale_due=None, etag=clock.new_etag(), last_modified=clock.now()))


def evaluate(ctx: Context, pool_id: str, body: Any) -> dict[str, Any]:
    """evaluateautoscale: computes, never applies."""
    body = v.require_object(body)
    request_body.check(body, "pool.evaluateautoscale")
    text = body.get("autoScaleFormula")
    parse(text)
    with ctx.engine.connect() as conn:
        pool = pool_records.load(conn, ctx, pool_id)
        if not pool.spec.get("enableAutoScale"):
            raise Conflict("Autoscale is not enabled on the specified pool.", code="AutoScaleNotEnabled")
        return run_record(compute(ctx, conn, pool, text), ctx.timebase.now())


def evaluate_now(ctx: Context, pool_id: str) -> dict[str, Any]:
    """Beyond Azure: run the pool's scheduled evaluation immediately and apply it."""
    with ctx.engine.begin() as conn:
        pool = pool_records.load(conn, ctx, pool_id)
        # Applying a formula would give a deleting pool targets again.
        pool_records.guard_not_deleting(pool)
        if not pool.spec.get("enableAutoScale"):
            raise Conflict("Autoscale is not enabled on the specified pool.", code="AutoScaleNotEnabled")
        evaluate_and_apply(ctx, conn, pool)
        run = conn.execute(select(pools.c.autoscale_run).where(pools.c.seq == pool.seq)).scalar_one()
    ctx.signals.wake_provider()
    return run

"""Pool pages: the list, one pool (targets, resize errors, autoscale, the metrics chart) and its
node heat map, which polls a compact JSON of node states."""

from __future__ import annotations

import zlib
from datetime import timedelta
from typing import Any

from shoal.service import metrics
from shoal.service import nodes as node_service
from shoal.service import pools as pool_service
from shoal.service.context import Context
from shoal.web import charts
from shoal.web.shared import Page, View

CHART_WINDOW = timedelta(hours=2)
CHART_POINTS = 240
CHART_METRICS = ("$CurrentDedicatedNodes", "$CurrentLowPriorityNodes", "$PendingTasks", *metrics.TARGET_METRICS)
# One letter per node state in the heat map's poll answer: 10,000 nodes are 10 KB of states.
STATE_LETTERS = {
    "idle": "i", "running": "r", "creating": "c", "starting": "s", "waitingforstarttask": "w",
    "starttaskfailed": "f", "unusable": "u", "preempted": "p", "offline": "o", "leavingpool": "l",
    "rebooting": "b", "reimaging": "m", "deallocating": "d", "deallocated": "a",
}
UNKNOWN_STATE_LETTER = "x"
# How the legend names them (Batch Explorer's groups: starting and waiting for the start task share
# a colour, as do rebooting and reimaging).
LEGEND = [("i", "idle"), ("r", "running"), ("s", "starting"), ("w", "waiting for start task"),
          ("c", "creating"), ("f", "start task failed"), ("u", "unusable"), ("p", "preempted"),
          ("o", "offline"), ("l", "leaving pool"), ("b", "rebooting"), ("m", "reimaging"),
          ("d", "deallocating"), ("a", "deallocated")]


def _pool_summary(record: pool_service.PoolRecord) -> dict[str, Any]:
    row = record.row
    spec = row.spec or {}
    autoscale = bool(spec.get("enableAutoScale"))
    return {
        "id": row.id, "state": row.state, "allocation_state": row.allocation_state, "vm_size": row.vm_size,
        "target_dedicated": row.target_dedicated, "target_spot": row.target_low_priority,
        "current_dedicated": record.current[0], "current_spot": record.current[1],
        "resize_errors": row.resize_errors or [], "autoscale": autoscale,
        "formula": spec.get("autoScaleFormula") if autoscale else None,
        "autoscale_run": (row.autoscale_run or None) if autoscale else None,
        "slots_per_node": row.slots_per_node,
    }


def pools_list(ctx: Context, _view: View) -> Page:
    return Page("pools.html", {"pools": [_pool_summary(record) for record in pool_service.list_all(ctx)]})


def heat_map_data(states: node_service.NodeStates, known_digest: str | None) -> dict[str, Any]:
    """The heat map's poll answer: a letter per node, a digest of the id list, and the ids only
    when the client's digest differs (ids change far less often than states)."""
    letters = "".join(STATE_LETTERS.get(state, UNKNOWN_STATE_LETTER) for state in states.states)
    digest = format(zlib.crc32("\n".join(states.ids).encode()), "08x") + f"-{len(states.ids)}"
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter] = counts.get(letter, 0) + 1
    out: dict[str, Any] = {"states": letters, "digest": digest, "counts": counts,
                           "disabled": [i for i, off in enumerate(states.scheduling_disabled) if off]}
    if known_digest != digest:
        out["ids"] = states.ids
    return out


def pool_page(ctx: Context, view: View) -> Page:
    pool_id = view.path["pool_id"]
    record = pool_service.get(ctx, pool_id)
    states = node_service.states_of_pool(ctx, pool_id)
    now = ctx.timebase.now()
    with ctx.engine.connect() as conn:
        samples = metrics.series(conn, record.row.seq, CHART_METRICS, now - CHART_WINDOW, CHART_POINTS)
    targets = [("target dedicated", "l-target-dedicated", samples["targetDedicatedNodes"],
                float(record.row.target_dedicated)),
               ("target spot", "l-target-spot", samples["targetLowPriorityNodes"],
                float(record.row.target_low_priority))]
    chart = charts.line_chart(
        [("dedicated nodes", "l-dedicated", samples["$CurrentDedicatedNodes"]),
         ("spot nodes", "l-spot", samples["$CurrentLowPriorityNodes"]),
         ("pending tasks", "l-pending", samples["$PendingTasks"]),
         # A target's sampled history ends at the target as it is now: a resize since the last
         # sample shows at once.
         *((name, css, [*points, (now, target)]) for name, css, points, target in targets if points)],
        # A pool sampled before targets were (an older server's) draws today's target level.
        [(name, css, target) for name, css, points, target in targets if not points])
    # The page carries the states only: at 10,000 nodes the ids are most of a megabyte, which the
    # heat map's first poll brings once, after the page is shown.
    heat = heat_map_data(states, None)
    del heat["ids"]
    heat["digest"] = ""
    return Page("pool.html", {"pool": _pool_summary(record), "chart": chart, "legend": LEGEND, "heat": heat})


def heat_map_poll(ctx: Context, view: View) -> Page:
    states = node_service.states_of_pool(ctx, view.path["pool_id"])
    record = pool_service.get(ctx, view.path["pool_id"])
    summary = _pool_summary(record)
    return Page(json={**heat_map_data(states, view.query.get("known")),
                      "allocationState": summary["allocation_state"],
                      "current": [summary["current_dedicated"], summary["current_spot"]],
                      "targets": [summary["target_dedicated"], summary["target_spot"]]})

"""The node page (start task, errors, recent tasks; its files and start task output load from
the node through the loop, see shoal/web/files.py) and its actions, which call the service
functions the REST routes call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from shoal import clock
from shoal.service import node_operations
from shoal.service import nodes as node_service
from shoal.service import pools as pool_service
from shoal.service.context import Context
from shoal.web.shared import PREFIX, BadInput, Page, View

NODE_ACTIONS: dict[str, Callable[[Context, str, str], None]] = {
    "reboot": lambda ctx, pool, node: node_operations.restart(ctx, pool, node, {}, "reboot"),
    "reimage": lambda ctx, pool, node: node_operations.restart(ctx, pool, node, {}, "reimage"),
    "disablescheduling": lambda ctx, pool, node: node_operations.disable_scheduling(ctx, pool, node, {}),
    "enablescheduling": lambda ctx, pool, node: node_operations.enable_scheduling(ctx, pool, node),
    "remove": lambda ctx, pool, node: pool_service.remove_nodes(ctx, pool, {"nodeList": [node]}),
}
ACTION_DONE = {"reboot": "Reboot ordered.", "reimage": "Reimage ordered.",
               "disablescheduling": "Scheduling disabled.", "enablescheduling": "Scheduling enabled.",
               "remove": "Removal ordered."}


def _task_line(task: Any) -> dict[str, Any]:
    info = task.execution_info or {}
    return {"job_id": task.job_id, "task_id": task.id, "state": task.state, "exit_code": info.get("exitCode"),
            "start": info.get("startTime"), "end": info.get("endTime")}


def node_page(ctx: Context, view: View) -> Page:
    pool_id, node_id = view.path["pool_id"], view.path["node_id"]
    record = node_service.get(ctx, pool_id, node_id)
    row = record.row
    done = view.query.get("done")
    return Page("node.html", {
        "pool_id": record.pool.id,
        "node": {"id": row.id, "state": row.state, "scheduling_state": row.scheduling_state,
                 "dedicated": bool(row.is_dedicated), "ip": row.ip_address, "slots": row.slots,
                 "allocation_time": clock.iso(row.allocation_time),
                 "state_transition_time": clock.iso(row.state_transition_time),
                 "last_boot_time": clock.iso(row.last_boot_time), "total_run": row.total_tasks_run,
                 "total_succeeded": row.total_tasks_succeeded, "pending_action": row.pending_action},
        "start_task": (record.pool.spec or {}).get("startTask"),
        "start_task_info": row.start_task_info, "errors": row.errors or [],
        "running": [_task_line(t) for t in record.running], "recent": [_task_line(t) for t in record.recent],
        "actions": list(NODE_ACTIONS), "done": ACTION_DONE.get(done or ""),
    })


def node_action(ctx: Context, view: View) -> Page:
    pool_id, node_id = view.path["pool_id"], view.path["node_id"]
    action = view.form.get("action", "")
    if action not in NODE_ACTIONS:
        raise BadInput("Unknown node action.", values={"Action": action[:64]})
    NODE_ACTIONS[action](ctx, pool_id, node_id)
    if action == "remove":
        return Page(redirect=f"{PREFIX}/pools/{quote(pool_id, safe='')}")
    return Page(redirect=f"{PREFIX}/pools/{quote(pool_id, safe='')}/nodes/{quote(node_id, safe='')}?done={action}")

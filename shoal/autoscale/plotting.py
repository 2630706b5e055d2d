"""Drawing a simulation (`simulate.SimulationResult`) as a two-panel PNG.

Top panel: tasks waiting and running. Bottom panel: nodes and the formula's targets, with
failed evaluations marked. matplotlib is imported here, lazily, so the simulation core and the
rest of Shoal do not depend on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .simulate import SimulationResult

# Plot in minutes for short runs, hours beyond this.
_MINUTES_UP_TO_S = 3 * 3600.0
FIGURE_SIZE_IN = (11.0, 7.5)
FIGURE_DPI = 110


def plot(result: SimulationResult, out: str | Path, *, title: str) -> Path:
    """Write the figure to `out` (PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    series, summary = result.series, result.summary
    end = series.time_s[-1] if series.time_s else 0.0
    scale, unit = (60.0, "minutes") if end <= _MINUTES_UP_TO_S else (3600.0, "hours")
    times = [t / scale for t in series.time_s]

    figure, (tasks_ax, nodes_ax) = plt.subplots(2, 1, sharex=True, figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI,
                                                 height_ratios=(1, 1), layout="constrained")
    step: dict[str, Any] = {"where": "post", "linewidth": 1.8}

    tasks_ax.step(times, series.active_tasks, color="tab:orange", label="waiting (active)", **step)
    tasks_ax.step(times, series.running_tasks, color="tab:blue", label="running", **step)
    tasks_ax.set_ylabel("tasks")
    tasks_ax.set_title("Tasks", loc="left", fontsize="medium")

    # Nodes as stacked areas (dedicated below, spot on top) so their sum is the pool's size;
    # targets as dashed lines on the same stacking, drawn over the areas so they stay visible.
    spot_top = [d + s for d, s in zip(series.dedicated_nodes, series.low_priority_nodes, strict=True)]
    has_spot = any(series.low_priority_nodes) or any(series.target_low_priority)
    nodes_ax.fill_between(times, series.dedicated_nodes, step="post", color="tab:green", alpha=0.45,
                          linewidth=0, label="dedicated nodes")
    if has_spot:
        nodes_ax.fill_between(times, series.dedicated_nodes, spot_top, step="post", color="tab:purple",
                              alpha=0.35, linewidth=0, label="spot nodes (stacked)")
        target_total = [d + s for d, s in zip(series.target_dedicated, series.target_low_priority, strict=True)]
        nodes_ax.step(times, target_total, color="indigo", linestyle="--", where="post", linewidth=1.5,
                      label="target: dedicated + spot")
    nodes_ax.step(times, series.target_dedicated, color="darkgreen", linestyle="--", where="post",
                  linewidth=1.5, label="target: dedicated")
    if any(series.preempted_nodes):
        nodes_ax.step(times, series.preempted_nodes, color="tab:red", linestyle=":", label="preempted spot",
                      **step)
    failed = [e.time_s / scale for e in result.evaluations if e.error]
    if failed:
        nodes_ax.plot(failed, [0] * len(failed), "x", color="tab:red", markersize=9, clip_on=False,
                      label=f"failed evaluation ({len(failed)})")
    nodes_ax.set_ylabel("nodes (billed from creation)")
    nodes_ax.set_xlabel(f"simulated time since the pool was created ({unit})")
    nodes_ax.set_title(f"Nodes (billed: {summary.dedicated_node_hours:.1f} dedicated + "
                       f"{summary.low_priority_node_hours:.1f} spot = {summary.total_node_hours:.1f} node-hours)",
                       loc="left", fontsize="medium")

    for axis in (tasks_ax, nodes_ax):
        axis.set_ylim(bottom=0)
        axis.set_xlim(0, end / scale if end else 1)
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
        axis.yaxis.get_major_locator().set_params(integer=True)

    options = result.options
    makespan = "n/a" if summary.makespan_s is None else f"{summary.makespan_s / 60:.0f} min"
    mean_wait = "n/a" if summary.mean_wait_s is None else f"{summary.mean_wait_s / 60:.1f} min"
    figure.suptitle(f"Autoscale simulation — {title}", fontweight="bold")
    tasks_ax.text(0.0, 1.13, (
        f"{summary.tasks_succeeded}/{summary.tasks_total} tasks done · makespan {makespan} · mean wait {mean_wait}"
        f" · evaluated every {options.evaluation_interval_s / 60:g} min · node startup "
        f"{options.node_startup_s / 60:g} min · {options.task_slots_per_node} slot(s)/node, "
        f"{options.node_fill_type}"), transform=tasks_ax.transAxes, fontsize="small", color="dimgray")
    path = Path(out)
    figure.savefig(path)
    plt.close(figure)
    return path

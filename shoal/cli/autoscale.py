"""`shoal autoscale`: try autoscale formulas offline (beyond Azure).

    shoal autoscale simulate --formula f.txt --workload w.json --out plot.png

Replays the workload through the formula evaluator and the scheduler on a virtual clock
(`shoal.autoscale.simulate`); no server is needed and nothing sleeps.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shoal.autoscale import SAMPLE_LAG, FormulaError
from shoal.autoscale.simulate import (
    DEFAULT_EVALUATION_INTERVAL_S,
    DEFAULT_NODE_STARTUP_S,
    FILL_TYPES,
    SimulationInputError,
    SimulationOptions,
    SimulationResult,
    load_workload,
    simulate,
)

console = Console()

_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ISO = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


class Duration(click.ParamType):
    """A duration: `90s`, `5m`, `1.5h`, `2d`, ISO-8601 (`PT5M`) or bare seconds (`300`)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip()
        try:
            match = _ISO.match(text.upper())
            if match and text.upper() not in ("P", "PT"):
                days, hours, minutes, seconds = (float(part or 0) for part in match.groups())
                return days * 86400 + hours * 3600 + minutes * 60 + seconds
            if text[-1:].lower() in _UNITS_S:
                return float(text[:-1]) * _UNITS_S[text[-1].lower()]
            return float(text)
        except ValueError:
            pass
        self.fail(f"{value!r} is not a duration (try 90s, 5m, 1.5h or PT5M)", param, ctx)


@click.group()
def autoscale() -> None:
    """Autoscale formulas: simulate them against a workload before using them."""


@autoscale.command("simulate")
@click.option("--formula", "formula_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file with the autoscale formula.")
@click.option("--workload", "workload_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSON workload: {"tasks": [{"arrival": s, "duration": s, "count": n, ...}]} (examples/README.md).')
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the plot to this PNG file.")
@click.option("--interval", type=Duration(), default=f"{DEFAULT_EVALUATION_INTERVAL_S:g}s", show_default=True,
              help="Evaluation interval.")
@click.option("--node-startup", type=Duration(), default=f"{DEFAULT_NODE_STARTUP_S:g}s", show_default=True,
              help="Time from node creation until it can run tasks.")
@click.option("--slots", type=click.IntRange(1, 256), default=1, show_default=True, help="taskSlotsPerNode.")
@click.option("--fill", type=click.Choice(FILL_TYPES), default="spread", show_default=True, help="nodeFillType.")
@click.option("--duration", type=Duration(), default=None,
              help="Simulated time to run [default: until all tasks are done and the pool has settled, max 48h].")
@click.option("--spot-eviction-rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Expected preemptions per spot node-hour.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for spot evictions.")
@click.option("--sample-lag", type=Duration(), default=f"{SAMPLE_LAG.total_seconds():g}s", show_default=True,
              help="How long a metric sample takes to reach formulas (as `shoal up --sample-lag`).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of tables.")
def simulate_command(formula_path: Path, workload_path: Path, out: Path | None, interval: float,
                     node_startup: float, slots: int, fill: str, duration: float | None,
                     spot_eviction_rate: float, seed: int, sample_lag: float, as_json: bool) -> None:
    """Replay a workload through a formula on simulated time and report node-hours and waits."""
    try:
        workload = load_workload(json.loads(workload_path.read_text(encoding="utf-8")))
        options = SimulationOptions(evaluation_interval_s=interval, node_startup_s=node_startup,
                                    task_slots_per_node=slots, node_fill_type=fill, duration_s=duration,
                                    spot_eviction_rate=spot_eviction_rate, seed=seed, sample_lag_s=sample_lag)
        result = simulate(formula_path.read_text(encoding="utf-8"), workload, options)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{workload_path}: not JSON: {exc}") from exc
    except SimulationInputError as exc:
        raise click.ClickException(exc.message) from exc
    except FormulaError as exc:
        raise click.ClickException(f"{formula_path}: {exc}") from exc
    if out is not None:
        from shoal.autoscale.plotting import plot

        plot(result, out, title=formula_path.name)
    if as_json:
        summary = result.summary.as_dict()
        summary["plot"] = str(out) if out is not None else None
        summary["first_errors"] = [{"time_s": e.time_s, "error": e.error} for e in result.evaluations if e.error][:5]
        click.echo(json.dumps(summary, indent=2))
        return
    _print_report(result, formula_path, out)



def _print_report(result: SimulationResult, formula_path: Path, out: Path | None) -> None:
    summary = result.summary
    hours = Table(title="Node-hours")
    for column in ("dedicated", "spot", "total"):
        hours.add_column(column, justify="right")
    hours.add_row(f"{summary.dedicated_node_hours:.2f}", f"{summary.low_priority_node_hours:.2f}",
                  f"{summary.total_node_hours:.2f}")
    console.print(hours)

    def minutes(seconds: float | None) -> str:
        return "n/a" if seconds is None else f"{seconds / 60:.1f} min"

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("tasks completed", f"{summary.tasks_succeeded} of {summary.tasks_total}"
                  + (f" ({summary.tasks_failed} failed)" if summary.tasks_failed else ""))
    if summary.tasks_unfinished:
        table.add_row("unfinished", f"{summary.tasks_unfinished} ({summary.tasks_unschedulable} need more slots "
                      "than a node has)")
    table.add_row("mean wait", minutes(summary.mean_wait_s))
    table.add_row("p95 wait", minutes(summary.p95_wait_s))
    table.add_row("makespan", minutes(summary.makespan_s))
    table.add_row("requeued", f"{summary.requeues} task runs (by shrinking with requeue)")
    if summary.preemptions:
        table.add_row("spot preemptions", f"{summary.preemptions} ({summary.recovered} task runs recovered)")
    table.add_row("evaluations", f"{summary.evaluations} ({summary.evaluation_errors} failed)")
    table.add_row("simulated", f"{summary.simulated_s / 3600:.2f} h (stopped: {summary.stop_reason})")
    if out is not None:
        table.add_row("plot", str(out))
    console.print(table)
    first_error = next((e for e in result.evaluations if e.error), None)
    if first_error is not None:
        console.print(f"[yellow]first failed evaluation at {first_error.time_s / 60:.1f} min:[/yellow] "
                      f"{escape(first_error.error or '')}", highlight=False)

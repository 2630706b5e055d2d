"""The what-if simulation (`shoal autoscale simulate`), from plain data: no processes, no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.autoscale import FormulaError
from shoal.autoscale.simulate import (
    SimulationInputError,
    SimulationOptions,
    TaskSpec,
    load_workload,
    simulate,
)
from shoal.config import Settings
from tests.helpers import DOCS_PENDING_FORMULA

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

PENDING = """
lookback = 3 * TimeInterval_Minute;
demand = $PendingTasks.GetSamplePercent(lookback) < 70 ? 0 : avg($PendingTasks.GetSample(lookback));
$TargetDedicatedNodes = min(10, ceil(demand / $TaskSlotsPerNode));
$NodeDeallocationOption = taskcompletion;
"""


def at_minute(minute: int) -> str:
    """A formula time literal for `minute` minutes after the simulation starts (2024-01-01Z)."""
    return f'time("2024-01-01T{minute // 60:02d}:{minute % 60:02d}:00Z")'


def tasks(count: int, duration: float, arrival: float = 0.0, slots: int = 1) -> list[TaskSpec]:
    return [TaskSpec(arrival, duration, slots) for _ in range(count)]


def node_hours_of(result) -> float:  # type: ignore[no-untyped-def]
    series = result.series
    billed = [d + s for d, s in zip(series.dedicated_nodes, series.low_priority_nodes, strict=True)]
    return series.integrate(billed) / 3600.0


def test_pending_tasks_grows_from_zero_and_shrinks_to_zero() -> None:
    result = simulate(PENDING, tasks(40, 300, arrival=600))
    series = result.series
    assert series.dedicated_nodes[0] == 0
    assert max(series.dedicated_nodes) == 10
    # No node before the tasks arrive, none at the end.
    before = [n for t, n in zip(series.time_s, series.dedicated_nodes, strict=True) if t < 600]
    assert set(before) == {0}
    assert series.dedicated_nodes[-1] == 0 and series.target_dedicated[-1] == 0
    summary = result.summary
    assert summary.tasks_succeeded == 40 and summary.tasks_unfinished == 0
    assert summary.stop_reason == "settled"
    assert summary.makespan_s is not None and summary.makespan_s >= 4 * 300
    assert summary.mean_wait_s is not None and summary.p95_wait_s is not None
    assert summary.p95_wait_s >= summary.mean_wait_s > 0


def test_first_evaluation_at_zero_and_then_every_interval() -> None:
    result = simulate("$TargetDedicatedNodes = 1;", [], SimulationOptions(evaluation_interval_s=600,
                                                                         duration_s=3600))
    assert [e.time_s for e in result.evaluations] == [0, 600, 1200, 1800, 2400, 3000, 3600]


def shrink_formula(option: str, back_at: int | None = None) -> str:
    """Two nodes for the first 20 minutes, none after (and two again from `back_at`)."""
    later = "0" if back_at is None else f"(time() < {at_minute(back_at)} ? 0 : 2)"
    return f"$TargetDedicatedNodes = time() < {at_minute(20)} ? 2 : {later};\n$NodeDeallocationOption = {option};"


def test_taskcompletion_lets_running_tasks_finish() -> None:
    # Two 30-minute tasks start at 3 min (node startup); the target drops to 0 at 20 min.
    result = simulate(shrink_formula("taskcompletion"), tasks(2, 1800), SimulationOptions(duration_s=3 * 3600))
    assert result.summary.tasks_succeeded == 2
    assert result.summary.requeues == 0 and result.summary.tasks_failed == 0
    assert all(t.end == 180 + 1800 for t in result.tasks)
    # The nodes stayed (draining) until their tasks were done, then left.
    series = result.series
    at_25_min = max(i for i, t in enumerate(series.time_s) if t <= 1500)
    assert series.target_dedicated[at_25_min] == 0 and series.dedicated_nodes[at_25_min] == 2
    assert series.dedicated_nodes[-1] == 0
    assert result.summary.dedicated_node_hours == pytest.approx(2 * (180 + 1800) / 3600)


def test_retaineddata_drains_like_taskcompletion() -> None:
    result = simulate(shrink_formula("retaineddata"), tasks(2, 1800), SimulationOptions(duration_s=3 * 3600))
    assert result.summary.tasks_succeeded == 2 and result.summary.requeues == 0


def test_requeue_puts_running_tasks_back() -> None:
    result = simulate(shrink_formula("requeue", back_at=30), tasks(2, 1800), SimulationOptions(duration_s=3 * 3600))
    summary = result.summary
    assert summary.requeues == 2
    assert summary.tasks_succeeded == 2 and summary.tasks_failed == 0
    # Killed at 20 min, rerun from scratch on new nodes created at 30 min (ready at 33 min).
    assert all(t.requeues == 1 and t.first_start == 180 and t.end == 33 * 60 + 1800 for t in result.tasks)


def test_terminate_fails_running_tasks() -> None:
    result = simulate(shrink_formula("terminate"), tasks(2, 1800), SimulationOptions(duration_s=3600))
    assert result.summary.tasks_failed == 2 and result.summary.tasks_succeeded == 0
    assert all(t.state == "failed" and t.end == 1200 for t in result.tasks)
    assert result.series.dedicated_nodes[-1] == 0


def test_evaluation_error_keeps_targets_and_is_recorded() -> None:
    # After 10 minutes the formula takes the average of an empty vector, which fails.
    formula = (f"$TargetDedicatedNodes = time() < {at_minute(10)} ? 3 : avg($ActiveTasks.GetSample(0));\n"
               "$TargetLowPriorityNodes = 1;")
    result = simulate(formula, [], SimulationOptions(duration_s=3600))
    errors = [e for e in result.evaluations if e.error]
    assert [e.time_s for e in errors] == [600, 900, 1200, 1500, 1800, 2100, 2400, 2700, 3000, 3300, 3600]
    assert all((e.target_dedicated, e.target_low_priority) == (3, 1) for e in errors)
    assert "AutoScalingFormulaEvaluationError" in (errors[0].error or "")
    assert result.series.dedicated_nodes[-1] == 3 and result.series.low_priority_nodes[-1] == 1
    assert result.summary.evaluation_errors == len(errors)


def test_formula_syntax_error_is_raised() -> None:
    with pytest.raises(FormulaError):
        simulate("$TargetDedicatedNodes = ;", [])


def test_node_hours_add_up() -> None:
    # A fixed pool: exactly 2 dedicated + 3 spot nodes for 1 h.
    fixed = simulate("$TargetDedicatedNodes = 2; $TargetLowPriorityNodes = 3;", tasks(20, 600),
                     SimulationOptions(duration_s=3600))
    assert fixed.summary.dedicated_node_hours == pytest.approx(2.0)
    assert fixed.summary.low_priority_node_hours == pytest.approx(3.0)
    assert fixed.summary.total_node_hours == pytest.approx(5.0)
    # A scaling pool: the series integrates to the reported node-hours.
    scaling = simulate(PENDING, tasks(100, 240) + tasks(50, 120, arrival=5400))
    summary = scaling.summary
    assert summary.total_node_hours > 0
    assert node_hours_of(scaling) == pytest.approx(summary.total_node_hours)
    assert summary.total_node_hours == pytest.approx(summary.dedicated_node_hours + summary.low_priority_node_hours)
    # Work done never exceeds the billed capacity.
    assert summary.total_node_hours >= (100 * 240 + 50 * 120) / 3600


SPOT = "$TargetDedicatedNodes = 1; $TargetLowPriorityNodes = $PendingTasks > 0 ? 6 : 0;"


def test_spot_eviction_requeues_without_losing_tasks() -> None:
    options = SimulationOptions(spot_eviction_rate=2.0, seed=7)
    result = simulate(SPOT, tasks(120, 600), options)
    summary = result.summary
    assert summary.preemptions > 0 and summary.recovered > 0
    # Recoveries are not requeues (service/preemption.py: requeueCount does not move).
    assert summary.requeues == 0 and sum(t.recoveries for t in result.tasks) == summary.recovered
    assert summary.tasks_succeeded == 120 and summary.tasks_failed == 0 and summary.tasks_unfinished == 0
    assert any(result.series.preempted_nodes)
    # Preempted nodes are not billed, so the series still integrates to the reported figure.
    assert node_hours_of(result) == pytest.approx(summary.total_node_hours)


def test_same_seed_same_run_other_seed_other_run() -> None:
    options = SimulationOptions(spot_eviction_rate=2.0, seed=11)
    first = simulate(SPOT, tasks(120, 600), options)
    second = simulate(SPOT, tasks(120, 600), options)
    assert first.summary == second.summary
    assert first.series == second.series
    other = simulate(SPOT, tasks(120, 600), SimulationOptions(spot_eviction_rate=2.0, seed=12))
    assert other.series != first.series


def test_slots_fill_and_cpu_percent() -> None:
    # 4 slots per node and 6 tasks: pack fills the first node, spread balances both.
    formula = "$TargetDedicatedNodes = 2; busy = $CPUPercent.GetSamplePercent(TimeInterval_Minute) > 0 ? max($CPUPercent.GetSample(TimeInterval_Minute)) : -1;"
    for fill in ("pack", "spread"):
        result = simulate(formula, tasks(6, 3600, arrival=600),
                          SimulationOptions(task_slots_per_node=4, node_fill_type=fill, duration_s=1200))
        last = result.evaluations[-1]
        assert "busy=75" in last.results  # 6 of 8 slots busy
        assert result.series.busy_slots[-1] == 6


def test_task_larger_than_a_node_never_runs() -> None:
    result = simulate("$TargetDedicatedNodes = 1;", tasks(1, 60, slots=2) + tasks(1, 60),
                      SimulationOptions(duration_s=1800))
    summary = result.summary
    assert summary.tasks_unschedulable == 1 and summary.tasks_unfinished == 1 and summary.tasks_succeeded == 1
    assert summary.makespan_s is None


def test_workload_format() -> None:
    workload = load_workload({"tasks": [
        {"arrival": 100, "duration": 5, "count": 3, "spacing": 10, "comment": "x"},
        {"duration": 7, "slots": 2},
    ]})
    assert workload == [TaskSpec(0, 7, 2), TaskSpec(100, 5, 1), TaskSpec(110, 5, 1), TaskSpec(120, 5, 1)]
    for bad in ({}, {"tasks": [{"arrival": 0}]}, {"tasks": [{"duration": -1}]}, {"tasks": [{"duration": 1, "slots": 0}]},
                {"tasks": [{"duration": 1, "when": 3}]}, {"tasks": [{"duration": "1"}]}):
        with pytest.raises(SimulationInputError):
            load_workload(bad)
    with pytest.raises(SimulationInputError):
        SimulationOptions(node_fill_type="diagonal")


@pytest.mark.parametrize("formula", ["pending-tasks.txt", "conservative.txt"])
def test_cli_runs_the_shipped_examples(formula: str, tmp_path: Path) -> None:
    from shoal.cli.main import main

    out = tmp_path / "plot.png"
    runner = CliRunner()
    result = runner.invoke(main, ["autoscale", "simulate", "--formula", str(EXAMPLES / "formulas" / formula),
                                  "--workload", str(EXAMPLES / "workloads" / "burst.json"), "--out", str(out),
                                  "--interval", "5m", "--node-startup", "PT3M", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["tasks_succeeded"] == summary["tasks_total"] == 550
    assert summary["total_node_hours"] > 0 and summary["makespan_s"] > 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_cli_table_output_and_bad_input(tmp_path: Path) -> None:
    from shoal.cli.main import main

    runner = CliRunner()
    formula = EXAMPLES / "formulas" / "pending-tasks.txt"
    workload = EXAMPLES / "workloads" / "burst.json"
    shown = runner.invoke(main, ["autoscale", "simulate", "--formula", str(formula), "--workload", str(workload),
                                 "--slots", "4", "--fill", "pack", "--spot-eviction-rate", "0.5", "--seed", "1"])
    assert shown.exit_code == 0, shown.output
    assert "Node-hours" in shown.output and "makespan" in shown.output
    broken = tmp_path / "broken.json"
    broken.write_text('{"tasks": [{"arrival": 0}]}')
    refused = runner.invoke(main, ["autoscale", "simulate", "--formula", str(formula), "--workload", str(broken)])
    assert refused.exit_code != 0 and "duration is required" in refused.output
    bad_interval = runner.invoke(main, ["autoscale", "simulate", "--formula", str(formula), "--workload",
                                        str(workload), "--interval", "soon"])
    assert bad_interval.exit_code != 0 and "not a duration" in bad_interval.output


def test_samples_follow_the_servers_model() -> None:
    # The server's default lag and grid: 15 minutes of history read 100% once the lag has passed,
    # and the seed sample is visible to the evaluation at t=0.
    assert SimulationOptions().sample_lag_s == Settings(data_dir=Path(".")).sample_lag_s
    formula = DOCS_PENDING_FORMULA + "held = $PendingTasks.Count();"
    result = simulate(formula, [], SimulationOptions(evaluation_interval_s=60, duration_s=17 * 60))
    by_minute = {int(e.time_s // 60): dict(p.split("=", 1) for p in e.results.split(";")) for e in result.evaluations}
    assert all(e.error is None for e in result.evaluations)
    assert by_minute[0]["held"] == "1" and float(by_minute[0]["$samples"]) == pytest.approx(100 / 30)
    assert float(by_minute[15]["$samples"]) == pytest.approx(28 / 30 * 100)  # samples 30 s..14 min, the seed just out
    assert by_minute[16]["$samples"] == "100"

"""Autoscale pools through the SDK against `shoal up --time-scale 60` (5 min pass in 5 s)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from shoal.autoscale import SAMPLE_LAG
from shoal.autoscale.simulate import SimulationOptions, simulate
from shoal.testing.server import running_shoal
from tests.helpers import DOCS_PENDING_FORMULA, pool_options, wait_for, wait_tasks_done

TIME_SCALE = 60
# Grow while tasks wait; let running tasks finish when shrinking.
QUEUE_FORMULA = """
// one node per 2 waiting tasks, at most 2
waiting = max($ActiveTasks.GetSample(1));
$TargetDedicatedNodes = min(2, (waiting + 1) / 2);
$NodeDeallocationOption = taskcompletion;
"""


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    with running_shoal(tmp_path_factory.mktemp("autoscale"), extra_args=["--time-scale", str(TIME_SCALE)]) as running:
        yield running


@pytest.fixture(scope="module")
def client(scaled):
    return scaled.client()


def autoscale_pool(pool_id: str, formula: str, **kwargs):
    return pool_options(pool_id, enable_auto_scale=True, auto_scale_formula=formula,
                        auto_scale_evaluation_interval=timedelta(minutes=5), task_slots_per_node=2, **kwargs)


def test_pool_grows_from_zero_and_shrinks_back_letting_tasks_finish(client):
    client.create_pool(autoscale_pool("elastic", QUEUE_FORMULA))
    pool = client.get_pool("elastic")
    assert pool.enable_auto_scale and pool.auto_scale_run is not None
    assert pool.target_dedicated_nodes == 0
    client.create_job(models.BatchJobCreateOptions(id="burst", pool_info=models.BatchPoolInfo(pool_id="elastic")))
    client.create_tasks("burst", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/sleep 4")
                                  for i in range(4)])
    wait_for(lambda: client.get_pool("elastic").target_dedicated_nodes == 2, 30, message="targets to grow")
    # Both nodes are allocated at once; how many have booted before the next evaluation shrinks
    # the pool depends on the machine's speed, so at least one must be seen serving.
    wait_for(lambda: len(list(client.list_nodes("elastic"))) == 2, 30, message="two nodes allocated")
    wait_for(lambda: any(n.state in ("idle", "running") for n in client.list_nodes("elastic")), 30,
             message="nodes up")
    # Once every task runs, nothing waits: the formula shrinks to 0 with taskcompletion, so
    # the running tasks end normally rather than being requeued.
    wait_for(lambda: client.get_pool("elastic").target_dedicated_nodes == 0, 30, message="targets to shrink")
    counts = wait_tasks_done(client, "burst", timeout=60)
    assert counts.succeeded == 4
    assert all(t.execution_info.requeue_count == 0 for t in client.list_tasks("burst"))
    wait_for(lambda: list(client.list_nodes("elastic")) == [], 60, message="nodes to leave")
    run = client.get_pool("elastic").auto_scale_run
    assert run.results.startswith("$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;")


def test_evaluate_returns_the_exact_results_string_and_applies_nothing(client):
    client.create_pool(autoscale_pool("evaluated", "$TargetDedicatedNodes = 0;"))
    run = client.evaluate_pool_auto_scale(
        "evaluated", models.BatchPoolEvaluateAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = 3; $TargetLowPriorityNodes = 1; x = 2.5; $big = x * 2;"))
    assert run.results == ("$TargetDedicatedNodes=3;$TargetLowPriorityNodes=1;$NodeDeallocationOption=requeue;"
                           "$big=5;x=2.5")
    assert run.error is None
    assert client.get_pool("evaluated").target_dedicated_nodes == 0


def test_evaluation_error_is_reported_and_targets_stay(client):
    client.create_pool(autoscale_pool("failing", "$TargetDedicatedNodes = 0;"))
    run = client.evaluate_pool_auto_scale(
        "failing", models.BatchPoolEvaluateAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = max($CPUPercent.GetSample(TimeInterval_Hour, 90));"))
    assert run.error is not None and run.error.code
    assert client.get_pool("failing").target_dedicated_nodes == 0


@pytest.mark.parametrize("formula", ["$TargetDedicatedNodes = ;", "$TargetDedicatedNodes = nosuchfunc(", "x" * 9000])
def test_invalid_formula_is_refused_at_create(client, formula):
    with pytest.raises(HttpResponseError) as info:
        client.create_pool(autoscale_pool("badformula", formula))
    assert info.value.status_code == 400
    assert info.value.error.code in ("AutoScalingFormulaSyntaxError", "AutoScaleFormulaTooLong")
    assert "badformula" not in [p.id for p in client.list_pools()]


def test_enable_validates_and_disable_allows_resize(client):
    client.create_pool(pool_options("manual", target_dedicated_nodes=0))
    wait_for(lambda: client.get_pool("manual").allocation_state == "steady", 30, message="steady pool")
    with pytest.raises(HttpResponseError) as info:
        client.enable_pool_auto_scale("manual", models.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = (;"))
    assert info.value.status_code == 400
    assert info.value.error.code == "AutoScalingFormulaSyntaxError"
    with pytest.raises(HttpResponseError) as info:
        client.enable_pool_auto_scale("manual", models.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = 0;", auto_scale_evaluation_interval=timedelta(minutes=1)))
    assert info.value.status_code == 400
    client.enable_pool_auto_scale("manual", models.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = 0;", auto_scale_evaluation_interval=timedelta(minutes=5)))
    pool = client.get_pool("manual")
    assert pool.enable_auto_scale and pool.auto_scale_run.results.startswith("$TargetDedicatedNodes=0")
    # Batch refuses a second enable within 30 s (here 0.5 s of real time at 60×).
    with pytest.raises(HttpResponseError) as info:
        client.enable_pool_auto_scale("manual", models.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = 0;"))
    assert info.value.error.code == "TooManyEnableAutoScaleRequests"
    with pytest.raises(HttpResponseError) as info:
        client.begin_resize_pool("manual", models.BatchPoolResizeOptions(target_dedicated_nodes=1)).result()
    assert info.value.status_code == 409
    client.disable_pool_auto_scale("manual")
    assert not client.get_pool("manual").enable_auto_scale
    wait_for(lambda: client.get_pool("manual").allocation_state == "steady", 30, message="steady pool")
    client.begin_resize_pool("manual", models.BatchPoolResizeOptions(target_dedicated_nodes=1),
                             polling_interval=0.2).result()


def test_autoscale_now_evaluates_at_once(scaled, client):
    client.create_pool(pool_options("forced", enable_auto_scale=True,
                                    auto_scale_formula="$TargetDedicatedNodes = $TargetDedicatedNodes;",
                                    auto_scale_evaluation_interval=timedelta(hours=100)))
    first = client.get_pool("forced").auto_scale_run.timestamp
    result = subprocess.run([sys.executable, "-m", "shoal.cli", "pool", "autoscale-now", "forced",
                             "--data-dir", str(scaled.data_dir), "--json"], capture_output=True, text=True,
                            timeout=60, check=True)
    assert "$TargetDedicatedNodes=0" in result.stdout
    assert client.get_pool("forced").auto_scale_run.timestamp > first


def test_agent_resource_metrics_and_task_counts_reach_formulas(client):
    client.create_pool(pool_options("measured", enable_auto_scale=True, task_slots_per_node=2,
                                    auto_scale_formula="$TargetDedicatedNodes = 1;",
                                    auto_scale_evaluation_interval=timedelta(minutes=5)))
    wait_for(lambda: any(n.state == "idle" for n in client.list_nodes("measured")), 30, message="node up")
    client.create_job(models.BatchJobCreateOptions(id="measured-job",
                                                   pool_info=models.BatchPoolInfo(pool_id="measured")))
    client.create_tasks("measured-job", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true")
                                         for i in range(3)])
    wait_tasks_done(client, "measured-job")
    probe = ("$TargetDedicatedNodes = 1; nodes = max($SampleNodeCount.GetSample(1)); "
             "cpu = max($CPUPercent.GetSample(1)); mem = max($MemoryBytes.GetSample(1)); "
             "done = max($SucceededTasks.GetSample(1)); slots = max($TaskSlotsPerNode.GetSample(1));")

    def sampled() -> dict[str, float] | None:
        run = client.evaluate_pool_auto_scale("measured", models.BatchPoolEvaluateAutoScaleOptions(
            auto_scale_formula=probe))
        if run.error is not None:
            return None
        values = dict(part.split("=", 1) for part in run.results.split(";"))
        return values if values.get("done") == "3" else None

    values = wait_for(sampled, 30, message="samples with the finished tasks")
    assert values["nodes"] == "1" and values["slots"] == "2"
    assert 0 <= float(values["cpu"]) <= 100 and float(values["mem"]) > 0


# The Azure Batch docs' task-based formula, plus probes of the window it reads; `t` and `b` pin
# the evaluation's moment and the history's start, so the simulation can replay the same pool.
DOCS_PROBE = DOCS_PENDING_FORMULA + """tenMinutes = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 10);
held = $PendingTasks.Count();
t = time();
b = $PendingTasks.HistoryBeginTime();
"""


def results_of(run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    assert run.error is None, run.error
    return dict(part.split("=", 1) for part in run.results.split(";"))


def evaluate_probe(client, pool_id: str):  # type: ignore[no-untyped-def]
    return client.evaluate_pool_auto_scale(pool_id, models.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula=DOCS_PROBE))


def simulated_run(live_results: str) -> str:
    """The same formula on `shoal autoscale simulate`'s pool, created when the live pool was (its
    seed sample says when) and evaluated at the live evaluation's moment."""
    values = dict(part.split("=", 1) for part in live_results.split(";"))
    evaluated_at = datetime.fromisoformat(values["t"].replace("Z", "+00:00"))
    seeded_at = datetime.fromisoformat(values["b"].replace("Z", "+00:00"))
    created = seeded_at + SAMPLE_LAG  # seed_sample_time() stamps the seed a lag before creation
    elapsed = (evaluated_at - created).total_seconds()
    result = simulate(DOCS_PROBE, [], SimulationOptions(start=created, evaluation_interval_s=elapsed,
                                                        duration_s=elapsed))
    assert result.evaluations[-1].time_s == elapsed and result.evaluations[-1].error is None
    return result.evaluations[-1].results


def test_docs_formula_reads_a_full_history_as_100_percent(client):
    # 15 minutes of history and the lag take 16 scaled minutes: 16 s here.
    client.create_pool(autoscale_pool("documented", "$TargetDedicatedNodes = 0;"))
    values = wait_for(lambda: (lambda v: v if v["$samples"] == "100" else None)(
        results_of(evaluate_probe(client, "documented"))), 45, message="a full 15-minute history")
    assert values["tenMinutes"] == "100"
    assert values["$tasks"] == "0" and values["$TargetDedicatedNodes"] == "0"
    run = client.evaluate_pool_auto_scale("documented", models.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = 0; n = len($PendingTasks.GetSample(TimeInterval_Minute * 10, 100)); "
                           "last = $PendingTasks.GetSample(1); few = $PendingTasks.GetSample(1000);"))
    assert run.error is not None and run.error.code == "InsufficientSampleData"
    assert "n=20" in run.results and "last=[0]" in run.results
    # The simulation counts the same full history the same way.
    live = evaluate_probe(client, "documented").results
    assert simulated_run(live) == live


def test_simulation_and_server_agree_on_a_growing_history(client):
    client.create_pool(autoscale_pool("replayed", "$TargetDedicatedNodes = 0;"))
    time.sleep(4)  # four scaled minutes: part of the window is history, part is not yet
    live = evaluate_probe(client, "replayed").results
    assert "$samples=100" not in live
    assert simulated_run(live) == live


def test_the_dashboard_chart_draws_the_targets_history_not_only_todays_level(scaled, client):
    """Issue 12: the pool page's chart shows targets over time from the samples, so a resize
    is a step in the target line."""
    import re

    from tests.acceptance.dashboard import signed_in

    client.create_pool(pool_options("charted", target_dedicated_nodes=0))

    def target_line(browser: Any) -> list[float]:
        page = browser.get("/ui/pools/charted").text
        match = re.search(r'<polyline class="l-target-dedicated" points="([^"]+)"', page)
        return [float(point.split(",")[1]) for point in match.group(1).split()] if match else []

    with signed_in(scaled) as browser:
        # Samples are taken every 30 s of scaled time: 0.5 s here.
        wait_for(lambda: len(target_line(browser)) >= 3, 20, message="target samples at 0")
        # Not waited on: the chart shows the step before the node is up.
        client.begin_resize_pool("charted", models.BatchPoolResizeOptions(target_dedicated_nodes=1))
        # One level before the resize and one after: the line is a step, not a constant.
        wait_for(lambda: len(set(target_line(browser))) == 2, 20, message="the step in the target line")

"""What-if simulation of an autoscale formula against a workload, on a virtual clock.

    result = simulate(formula_text, load_workload(json.load(f)), SimulationOptions(...))
    result.series (time series to plot), result.summary (node-hours, waits, makespan)

This goes beyond Azure: Batch can only evaluate a formula against the pool's past. Here a
workload (task arrivals and durations) is replayed through the *same* evaluator
(`shoal.autoscale.evaluate`) and the *same* placement rules (`shoal.scheduler.plan`) without a
process, a server or a sleep. It is a discrete-event loop; nothing reads the wall clock.

Model (each rule restates semantics.md or the service's own choice):
- Samples, and what a formula sees of them, follow the one model in samples.py that the server
  follows too: every metric on the 30 s grid (§1.7), visible after the same lag as `shoal up`'s
  (`sample_lag_s`, default SAMPLE_LAG); the pool starts with the server's zero-valued seed sample
  of the task and node counts (§7); node metrics are sampled only while the pool has nodes.
- The formula is evaluated once at t=0, then every `evaluation_interval_s` (§1.1). An evaluation
  error leaves the targets as they were and is recorded (§1.8).
- A new node is billed from creation and takes `node_startup_s` to become usable. When a pool
  shrinks, the surplus is chosen by the ranking `service/allocation.py` uses too
  (`scheduler/removal.py`): preempted, then starting, then the least busy ready nodes.
  `requeue`/`terminate` remove them at once (their running tasks go back to the queue / fail);
  `taskcompletion`/`retaineddata` let running tasks finish, take no new work and leave when
  empty (§2.3; there are no retention times here, so both behave alike).
- Spot nodes are preempted at a Poisson rate per node-hour (seeded), as the local provider does.
  Their tasks go back to the queue as a recovery, not a requeue (§6.3, service/preemption.py); a
  preempted node stays in the pool, counted by `$CurrentLowPriorityNodes` and
  `$PreemptedNodeCount` but not billed, and starts again after `spot_recovery_s`.
- Task and node counts are what service/metrics.py counts (nodes leaving the pool excluded);
  the evaluator gets them both as samples and as current values, as service/autoscale.py does.
  Resource metrics are sampled only while usable nodes exist: `$CPUPercent` is busy slots /
  slots of usable nodes × 100, the others read 0.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shoal.errors import BadRequest
from shoal.model.states import NodeState
from shoal.scheduler import JobView, NodeView, PoolSnapshot, TaskView, plan, removal_rank

from .evaluator import DEFAULT_DEALLOCATION_OPTION, EvaluationInput, evaluate, parse_formula
from .samples import METRICS, SAMPLE_LAG, SAMPLE_PERIOD, SampleHistory, next_sample_time, seed_sample_time
from .types import datetime_to_ticks

DEFAULT_EVALUATION_INTERVAL_S = 300.0
DEFAULT_NODE_STARTUP_S = 180.0
DEFAULT_SPOT_RECOVERY_S = 300.0  # as the service's Settings.spot_recovery_s
# Without --duration the run ends once every task is done and the pool has settled, or here.
MAX_AUTO_DURATION_S = 48 * 3600.0
# Virtual t=0 for time() in formulas: a Monday, midnight UTC.
SIMULATION_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
FILL_TYPES = ("spread", "pack")

_TASK_METRICS = ("$ActiveTasks", "$RunningTasks", "$PendingTasks", "$SucceededTasks", "$FailedTasks")
_NODE_COUNT_METRICS = ("$CurrentDedicatedNodes", "$CurrentLowPriorityNodes", "$PreemptedNodeCount",
                       "$UsableNodeCount", "$TaskSlotsPerNode")
# Resource metrics the simulation cannot measure: zero-valued samples while nodes exist (§1.6).
_UNMEASURED = sorted(METRICS - set(_TASK_METRICS) - set(_NODE_COUNT_METRICS) - {"$CPUPercent", "$SampleNodeCount"})

# Node states.  "ready" covers Batch's idle and running; `leaving` is a separate flag.
STARTING, READY, PREEMPTED = "starting", "ready", "preempted"
# The Batch state each simulated one stands for, in the ranking service/allocation.py uses too
# (scheduler/removal.py); a ready node is idle or running by whether it has work.
_BATCH_STATE = {PREEMPTED: NodeState.PREEMPTED, STARTING: NodeState.STARTING}


class SimulationInputError(BadRequest):
    """A workload or an option the simulation cannot use."""

    code = "InvalidSimulationInput"


# ------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class TaskSpec:
    arrival: float  # seconds after t=0
    duration: float  # seconds of run time once started
    slots: int = 1


def load_workload(data: Mapping[str, Any]) -> list[TaskSpec]:
    """Expand the workload JSON (examples/README.md) into one TaskSpec per task, by arrival.

    `{"tasks": [{"arrival": s, "duration": s, "slots": 1, "count": 1, "spacing": 0}, ...]}`;
    `count` repeats an entry, the k-th copy arriving at `arrival + k * spacing`."""
    entries = data.get("tasks") if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise SimulationInputError('a workload is a JSON object with a "tasks" list')
    tasks: list[TaskSpec] = []
    for index, entry in enumerate(entries):
        where = f"tasks[{index}]"
        if not isinstance(entry, Mapping):
            raise SimulationInputError(f"{where} must be an object")
        unknown = set(entry) - {"arrival", "duration", "slots", "count", "spacing", "comment"}
        if unknown:
            raise SimulationInputError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
        arrival = _number(entry, "arrival", where, 0.0)
        duration = _number(entry, "duration", where, None)
        spacing = _number(entry, "spacing", where, 0.0)
        slots = _number(entry, "slots", where, 1)
        count = _number(entry, "count", where, 1)
        if slots != int(slots) or slots < 1 or count != int(count) or count < 0:
            raise SimulationInputError(f"{where}: slots must be an integer >= 1 and count an integer >= 0")
        tasks.extend(TaskSpec(arrival + k * spacing, duration, int(slots)) for k in range(int(count)))
    tasks.sort(key=lambda task: task.arrival)  # stable: ties keep file order
    return tasks


def _number(entry: Mapping[str, Any], name: str, where: str, default: float | None) -> float:
    value = entry.get(name, default)
    if value is None:
        raise SimulationInputError(f"{where}.{name} is required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise SimulationInputError(f"{where}.{name} must be a number >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class SimulationOptions:
    evaluation_interval_s: float = DEFAULT_EVALUATION_INTERVAL_S
    node_startup_s: float = DEFAULT_NODE_STARTUP_S
    task_slots_per_node: int = 1
    node_fill_type: str = "spread"
    # None: run until all tasks are done and the pool has settled (at most MAX_AUTO_DURATION_S).
    duration_s: float | None = None
    spot_eviction_rate: float = 0.0  # expected preemptions per spot node-hour
    spot_recovery_s: float = DEFAULT_SPOT_RECOVERY_S
    seed: int = 0
    # How long a sample takes to reach formulas (semantics.md §1.7; 0 = at once), as on the server.
    sample_lag_s: float = SAMPLE_LAG.total_seconds()
    start: datetime = SIMULATION_EPOCH

    def __post_init__(self) -> None:
        if not self.evaluation_interval_s > 0:
            raise SimulationInputError("the evaluation interval must be positive")
        if self.node_startup_s < 0 or self.spot_recovery_s < 0 or self.sample_lag_s < 0:
            raise SimulationInputError("node startup, spot recovery and sample lag cannot be negative")
        if self.task_slots_per_node < 1:
            raise SimulationInputError("taskSlotsPerNode must be at least 1")
        if self.node_fill_type not in FILL_TYPES:
            raise SimulationInputError(f"nodeFillType must be one of {', '.join(FILL_TYPES)}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise SimulationInputError("the duration must be positive")
        if not self.spot_eviction_rate >= 0:
            raise SimulationInputError("the spot eviction rate cannot be negative")


# ----------------------------------------------------------------- outputs
@dataclass
class Series:
    """The pool after each event, as step functions: a value holds until the next time."""

    time_s: list[float] = field(default_factory=list)
    active_tasks: list[int] = field(default_factory=list)
    running_tasks: list[int] = field(default_factory=list)
    target_dedicated: list[int] = field(default_factory=list)
    target_low_priority: list[int] = field(default_factory=list)
    dedicated_nodes: list[int] = field(default_factory=list)  # billed: starting, ready or leaving
    low_priority_nodes: list[int] = field(default_factory=list)  # billed spot nodes (not preempted)
    preempted_nodes: list[int] = field(default_factory=list)
    busy_slots: list[int] = field(default_factory=list)

    def integrate(self, values: Sequence[float]) -> float:
        """∫ values dt over the run (step function), in value-seconds."""
        times = self.time_s
        return sum(values[i] * (times[i + 1] - times[i]) for i in range(len(times) - 1))


@dataclass(frozen=True)
class EvaluationRecord:
    time_s: float
    target_dedicated: int
    target_low_priority: int
    deallocation_option: str
    results: str
    error: str | None = None  # "Code: message" when the evaluation failed


@dataclass(frozen=True)
class TaskRecord:
    arrival: float
    duration: float
    slots: int
    state: str  # "succeeded" | "failed" | "active" | "running" | "waiting" (not yet arrived)
    first_start: float | None
    end: float | None
    requeues: int  # put back by a shrink with `requeue`
    recoveries: int  # put back because their spot node was preempted


@dataclass(frozen=True)
class Summary:
    tasks_total: int
    tasks_succeeded: int
    tasks_failed: int
    tasks_unfinished: int
    tasks_unschedulable: int  # need more slots than a node has: they never run (§3.1)
    requeues: int  # task runs put back by a shrink with `requeue`
    recovered: int  # task runs put back by spot preemptions
    preemptions: int
    mean_wait_s: float | None  # arrival to first start, over tasks that started
    p95_wait_s: float | None
    makespan_s: float | None  # first arrival to last finish, when every task finished
    dedicated_node_hours: float
    low_priority_node_hours: float
    total_node_hours: float
    evaluations: int
    evaluation_errors: int
    simulated_s: float
    stop_reason: str  # "settled" | "duration" | "limit"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SimulationResult:
    options: SimulationOptions
    series: Series
    evaluations: list[EvaluationRecord]
    tasks: list[TaskRecord]
    summary: Summary


# ------------------------------------------------------------------ engine
@dataclass
class _Task:
    spec: TaskSpec
    view: TaskView
    state: str = "waiting"
    node: str | None = None
    attempt: int = 0
    first_start: float | None = None
    end: float | None = None
    requeues: int = 0
    recoveries: int = 0


@dataclass
class _Node:
    node_id: str
    dedicated: bool
    state: str = STARTING
    leaving: str | None = None  # the deallocation option it is leaving with
    running: set[int] = field(default_factory=set)
    used_slots: int = 0
    generation: int = 0  # bumped on preemption/recovery so stale events are ignored


# Event kinds; at equal times they run in this order.
_NODE_READY, _TASK_DONE, _EVICT, _RECOVER = range(4)


def _removal_rank(node: _Node) -> tuple[int, int]:
    state = _BATCH_STATE.get(node.state) or (NodeState.RUNNING if node.used_slots else NodeState.IDLE)
    return removal_rank(state, node.used_slots)


class _Simulation:
    def __init__(self, formula_text: str, workload: Sequence[TaskSpec], options: SimulationOptions) -> None:
        self.formula = parse_formula(formula_text)  # FormulaError on a syntax error
        self.options = options
        self.tasks = [_Task(spec, TaskView(seq, 0, spec.slots)) for seq, spec in enumerate(workload)]
        self.next_arrival = 0
        self.active: list[int] = []  # task seqs in queue order (insertion order, as in the service)
        self.nodes: dict[str, _Node] = {}  # creation order: the scheduler's tie-break
        self.node_serial = 0
        self.events: list[tuple[float, int, int, Any]] = []
        self.event_serial = 0
        self.rng = random.Random(options.seed)
        self.targets = {True: 0, False: 0}  # dedicated? -> target
        self.succeeded = self.failed = self.requeued = self.recovered = self.preemptions = 0
        self.samples = {name: SampleHistory([], []) for name in METRICS}
        self.series = Series()
        self.evaluations: list[EvaluationRecord] = []
        self.node_seconds = {True: 0.0, False: 0.0}
        self.now = 0.0
        self.dirty = False
        slots = options.task_slots_per_node
        self.schedulable = sum(1 for task in self.tasks if task.spec.slots <= slots)

    # -- the loop -------------------------------------------------------------
    def run(self) -> SimulationResult:
        options = self.options
        end = options.duration_s if options.duration_s is not None else MAX_AUTO_DURATION_S
        stop_reason = "duration" if options.duration_s is not None else "limit"
        start, lag = options.start, timedelta(seconds=options.sample_lag_s)
        self._sample(seed_sample_time(start, lag), initial=True)
        sample_at = next_sample_time(start)
        next_sample, next_evaluation = (sample_at - start).total_seconds(), 0.0
        while True:
            moment = min(next_sample, next_evaluation, self._next_event_time())
            if moment > end:
                break
            self._advance(moment)
            self._arrivals()
            self._events()
            self._schedule()
            if moment >= next_sample:
                self._sample(sample_at)
                sample_at += SAMPLE_PERIOD
                next_sample = (sample_at - start).total_seconds()
            if moment >= next_evaluation:
                self._evaluate()
                next_evaluation += options.evaluation_interval_s
                self._schedule()
                if options.duration_s is None and self._settled():
                    stop_reason, end = "settled", moment
            self._record()
            if stop_reason == "settled":
                break
        self._advance(end)
        self._record()
        return SimulationResult(options, self.series, self.evaluations, self._task_records(),
                                self._summary(stop_reason))

    def _next_event_time(self) -> float:
        candidates = [self.events[0][0]] if self.events else []
        if self.next_arrival < len(self.tasks):
            candidates.append(self.tasks[self.next_arrival].spec.arrival)
        return min(candidates, default=math.inf)

    def _advance(self, moment: float) -> None:
        """Bill the nodes for the time since the last event."""
        elapsed = moment - self.now
        if elapsed > 0:
            for node in self.nodes.values():
                if node.state != PREEMPTED:
                    self.node_seconds[node.dedicated] += elapsed
        self.now = max(self.now, moment)

    def _push(self, moment: float, kind: int, payload: Any) -> None:
        self.event_serial += 1
        heapq.heappush(self.events, (moment, kind, self.event_serial, payload))

    # -- tasks ----------------------------------------------------------------
    def _arrivals(self) -> None:
        while self.next_arrival < len(self.tasks) and self.tasks[self.next_arrival].spec.arrival <= self.now:
            self.tasks[self.next_arrival].state = "active"
            self.active.append(self.next_arrival)  # arrivals are sorted, so this keeps queue order
            self.next_arrival += 1
            self.dirty = True

    def _events(self) -> None:
        while self.events and self.events[0][0] <= self.now:
            _, kind, _, payload = heapq.heappop(self.events)
            if kind == _TASK_DONE:
                seq, attempt = payload
                task = self.tasks[seq]
                if task.state == "running" and task.attempt == attempt:
                    self._finish(task, "succeeded")
                continue
            node_id, generation = payload
            node = self.nodes.get(node_id)
            if node is None or node.generation != generation:
                continue  # removed, preempted or recovered since
            if kind == _NODE_READY:
                node.state = READY
                self.dirty = True
            elif kind == _EVICT:
                self._preempt(node)
            elif kind == _RECOVER:
                self._start_node(node)

    def _schedule(self) -> None:
        """Place active tasks on usable nodes with the service's scheduler."""
        if not self.dirty or not self.active:
            self.dirty = False
            return
        self.dirty = False
        usable = tuple(NodeView(n.node_id, self.options.task_slots_per_node, n.used_slots)
                       for n in self.nodes.values() if n.state == READY and n.leaving is None)
        if not usable:
            return
        snapshot = PoolSnapshot(self.options.node_fill_type, usable,
                                tuple(self.tasks[seq].view for seq in self.active), (JobView(0, None),))
        placements = plan(snapshot)
        if not placements:
            return
        for placement in placements:
            task, node = self.tasks[placement.task_seq], self.nodes[placement.node_id]
            task.state, task.node = "running", node.node_id
            task.attempt += 1
            if task.first_start is None:
                task.first_start = self.now
            node.running.add(placement.task_seq)
            node.used_slots += task.spec.slots
            self._push(self.now + task.spec.duration, _TASK_DONE, (placement.task_seq, task.attempt))
        placed = {placement.task_seq for placement in placements}
        self.active = [seq for seq in self.active if seq not in placed]

    def _finish(self, task: _Task, state: str) -> None:
        node = self.nodes[task.node] if task.node is not None else None
        task.state, task.end, task.node = state, self.now, None
        if state == "succeeded":
            self.succeeded += 1
        else:
            self.failed += 1
        if node is not None:
            self._release(node, task)

    def _release(self, node: _Node, task: _Task) -> None:
        node.running.discard(task.view.task_seq)
        node.used_slots -= task.spec.slots
        self.dirty = True
        if node.leaving is not None and not node.running:
            del self.nodes[node.node_id]  # a draining node leaves once its last task is done

    def _requeue(self, node: _Node, *, preempted: bool = False) -> None:
        """Put the node's running tasks back in the queue; a preemption's are recoveries, which
        Batch does not count as requeues."""
        for seq in sorted(node.running):
            task = self.tasks[seq]
            task.state, task.node = "active", None
            if preempted:
                task.recoveries += 1
                self.recovered += 1
            else:
                task.requeues += 1
                self.requeued += 1
            bisect.insort(self.active, seq)
        node.running.clear()
        node.used_slots = 0
        self.dirty = True

    # -- nodes ----------------------------------------------------------------
    def _add_node(self, dedicated: bool) -> None:
        self.node_serial += 1
        node = _Node(f"{'dedicated' if dedicated else 'spot'}-{self.node_serial}", dedicated)
        self.nodes[node.node_id] = node
        self._start_node(node)

    def _start_node(self, node: _Node) -> None:
        node.state = STARTING
        node.generation += 1
        self._push(self.now + self.options.node_startup_s, _NODE_READY, (node.node_id, node.generation))
        rate = self.options.spot_eviction_rate
        if not node.dedicated and rate > 0:
            lifetime = self.rng.expovariate(rate / 3600.0)
            self._push(self.now + lifetime, _EVICT, (node.node_id, node.generation))

    def _preempt(self, node: _Node) -> None:
        self.preemptions += 1
        self._requeue(node, preempted=True)
        if node.leaving is not None:
            del self.nodes[node.node_id]
            return
        node.state = PREEMPTED
        node.generation += 1
        self._push(self.now + self.options.spot_recovery_s, _RECOVER, (node.node_id, node.generation))

    def _resize(self, option: str) -> None:
        """Bring node records to the targets, as service/allocation.py does."""
        for dedicated in (True, False):
            staying = [n for n in self.nodes.values() if n.dedicated == dedicated and n.leaving is None]
            target = self.targets[dedicated]
            for _ in range(target - len(staying)):
                self._add_node(dedicated)
            if len(staying) > target:
                staying.sort(key=_removal_rank)
                for node in staying[:len(staying) - target]:
                    self._remove(node, option)

    def _remove(self, node: _Node, option: str) -> None:
        if option == "requeue":
            self._requeue(node)
        elif option == "terminate":
            for seq in sorted(node.running):
                self._finish(self.tasks[seq], "failed")
        if node.running and node.state == READY:
            node.leaving = option  # taskcompletion / retaineddata: drain first
        else:
            self.nodes.pop(node.node_id, None)
        self.dirty = True

    # -- samples and evaluation ----------------------------------------------
    def _counts(self) -> dict[str, float]:
        """The count variables as service/metrics.py computes them: leaving nodes excluded."""
        running = sum(len(n.running) for n in self.nodes.values())
        nodes = [n for n in self.nodes.values() if n.leaving is None]
        return {
            "$ActiveTasks": len(self.active),
            "$RunningTasks": running,
            "$PendingTasks": len(self.active) + running,
            "$SucceededTasks": self.succeeded,
            "$FailedTasks": self.failed,
            "$CurrentDedicatedNodes": sum(1 for n in nodes if n.dedicated),
            "$CurrentLowPriorityNodes": sum(1 for n in nodes if not n.dedicated),  # incl. preempted
            "$PreemptedNodeCount": sum(1 for n in nodes if n.state == PREEMPTED),
            "$UsableNodeCount": sum(1 for n in nodes if n.state == READY),
            "$TaskSlotsPerNode": self.options.task_slots_per_node,
        }

    def _sample(self, when: datetime, initial: bool = False) -> None:
        ticks = datetime_to_ticks(when)
        values: dict[str, float] = self._counts()
        if initial:
            # The zero-valued sample Shoal records at pool creation (semantics.md §1.7).
            values = {name: 0.0 for name in values}
            values["$TaskSlotsPerNode"] = self.options.task_slots_per_node
        else:
            # Resource metrics are averages over the nodes that report them: usable nodes only.
            ready = [n for n in self.nodes.values() if n.state == READY]
            if ready:
                slots = len(ready) * self.options.task_slots_per_node
                values["$CPUPercent"] = 100.0 * sum(n.used_slots for n in ready) / slots
                values["$SampleNodeCount"] = len(ready)
                values.update({name: 0.0 for name in _UNMEASURED})
        for name, value in values.items():
            history = self.samples[name]
            history.ticks.append(ticks)
            history.values.append(float(value))

    def _evaluate(self) -> None:
        # As service/autoscale.py: counts read as scalars are the control plane's current values.
        current: dict[str, float | str] = dict(self._counts())
        current["$TargetDedicatedNodes"] = self.targets[True]
        current["$TargetLowPriorityNodes"] = self.targets[False]
        current["$NodeDeallocationOption"] = DEFAULT_DEALLOCATION_OPTION
        result = evaluate(self.formula, EvaluationInput(
            now=self.options.start + timedelta(seconds=self.now), samples=self.samples, current=current,
            visibility_lag=timedelta(seconds=self.options.sample_lag_s)))
        option = result.node_deallocation_option or DEFAULT_DEALLOCATION_OPTION
        error = None
        if result.error is not None:
            error = f"{result.error.code}: {result.error.message}"
        else:
            self.targets = {True: result.target_dedicated, False: result.target_low_priority}
            self._resize(option)
        self.evaluations.append(EvaluationRecord(self.now, self.targets[True], self.targets[False], option,
                                                 result.results_string(), error))

    def _settled(self) -> bool:
        """Every task that can run has finished and the last two evaluations agree and hold."""
        finished = self.succeeded + self.failed
        if self.next_arrival < len(self.tasks) or finished < self.schedulable:
            return False
        if len(self.evaluations) < 2:
            return False
        last, previous = self.evaluations[-1], self.evaluations[-2]
        if (last.target_dedicated, last.target_low_priority) != (previous.target_dedicated,
                                                                previous.target_low_priority):
            return False
        for dedicated in (True, False):
            group = [n for n in self.nodes.values() if n.dedicated == dedicated]
            if len(group) != self.targets[dedicated] or any(n.state != READY for n in group):
                return False
        return True

    # -- results --------------------------------------------------------------
    def _record(self) -> None:
        series, nodes = self.series, self.nodes.values()
        if series.time_s and series.time_s[-1] == self.now:
            for name in ("time_s", "active_tasks", "running_tasks", "target_dedicated", "target_low_priority",
                         "dedicated_nodes", "low_priority_nodes", "preempted_nodes", "busy_slots"):
                getattr(series, name).pop()
        series.time_s.append(self.now)
        series.active_tasks.append(len(self.active))
        series.running_tasks.append(sum(len(n.running) for n in nodes))
        series.target_dedicated.append(self.targets[True])
        series.target_low_priority.append(self.targets[False])
        series.dedicated_nodes.append(sum(1 for n in nodes if n.dedicated))
        series.low_priority_nodes.append(sum(1 for n in nodes if not n.dedicated and n.state != PREEMPTED))
        series.preempted_nodes.append(sum(1 for n in nodes if n.state == PREEMPTED))
        series.busy_slots.append(sum(n.used_slots for n in nodes))

    def _task_records(self) -> list[TaskRecord]:
        return [TaskRecord(t.spec.arrival, t.spec.duration, t.spec.slots, t.state, t.first_start, t.end,
                           t.requeues, t.recoveries) for t in self.tasks]

    def _summary(self, stop_reason: str) -> Summary:
        waits = sorted(t.first_start - t.spec.arrival for t in self.tasks if t.first_start is not None)
        ends = [t.end for t in self.tasks if t.end is not None]
        everything_done = bool(self.tasks) and len(ends) == len(self.tasks)
        dedicated_h = self.node_seconds[True] / 3600.0
        spot_h = self.node_seconds[False] / 3600.0
        return Summary(
            tasks_total=len(self.tasks),
            tasks_succeeded=self.succeeded,
            tasks_failed=self.failed,
            tasks_unfinished=len(self.tasks) - len(ends),
            tasks_unschedulable=len(self.tasks) - self.schedulable,
            requeues=self.requeued,
            recovered=self.recovered,
            preemptions=self.preemptions,
            mean_wait_s=sum(waits) / len(waits) if waits else None,
            p95_wait_s=_percentile(waits, 95) if waits else None,
            makespan_s=max(ends) - self.tasks[0].spec.arrival if everything_done else None,
            dedicated_node_hours=dedicated_h,
            low_priority_node_hours=spot_h,
            total_node_hours=dedicated_h + spot_h,
            evaluations=len(self.evaluations),
            evaluation_errors=sum(1 for e in self.evaluations if e.error),
            simulated_s=self.now,
            stop_reason=stop_reason,
        )


def _percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def simulate(formula_text: str, workload: Sequence[TaskSpec],
             options: SimulationOptions | None = None) -> SimulationResult:
    """Replay `workload` on a virtual pool driven by the formula. Raises FormulaError if the
    formula does not parse; evaluation errors are recorded in `result.evaluations`."""
    return _Simulation(formula_text, workload, options or SimulationOptions()).run()

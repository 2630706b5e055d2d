"""Task dependencies (semantics §3.6): validating `dependsOn`, and the bookkeeping that keeps a
dependent task blocked until every task it depends on has completed in a way that satisfies it.

Each prerequisite is one edge row (store/schema.py `task_dependencies`); a range contributes one
edge per member, so the members a task may name are bounded (MAX_EDGES_PER_TASK, a Shoal limit
where Azure states none for ranges). A dependent keeps the number of its open edges in
`tasks.unsatisfied`; the scheduler reads only tasks where it is 0. Completing a task seeks the
open edges naming it (by key, and by number when its id is an integer) and decrements their
dependents: work in proportion to the dependents, never to the job.

A prerequisite that does not exist yet is an open edge like any other: the dependent waits until
a task of that id is added and completes (Azure allows adding the dependent first).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, false, insert, select, update

from shoal.errors import BadRequest, InvalidProperty, MissingProperty
from shoal.service import validation as v
from shoal.store.chunks import IN_CHUNK, in_chunks
from shoal.store.schema import task_dependencies, tasks

# Azure's limit on the combined length of the ids in `taskIds`.
MAX_TASK_IDS_CHARS = 64_000
# Shoal's limit on the edges one task (and one add request) may create: ids plus range members.
# A 100,000-wide fan-in is stored in well under a second; a 10^6-wide range is refused rather
# than stored as a million rows.
MAX_EDGES_PER_TASK = 100_000
MAX_EDGES_PER_REQUEST = 100_000
_INTEGER_ID = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Dependencies:
    """What a task depends on: lower-cased ids (taskIds) and integers (taskIdRanges members)."""

    keys: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]

    @property
    def edge_count(self) -> int:
        return len(self.keys) + len(self.numbers())

    def numbers(self) -> list[int]:
        """The distinct range members, ascending (overlapping ranges name a task once)."""
        members: set[int] = set()
        for start, end in self.ranges:
            members.update(range(start, end + 1))
        return sorted(members)


def id_number(task_id: str) -> int | None:
    """The integer a task id stands for in a range (`4`, `04` and `004` are all 4), if any."""
    if not _INTEGER_ID.fullmatch(task_id):
        return None
    value = int(task_id)
    return value if v.INT32_MIN <= value <= v.INT32_MAX else None


def parse(body: dict[str, Any], task_id: str) -> tuple[Dependencies, dict[str, Any]] | None:
    """Validate `dependsOn`: what it names, and the object to keep and show again."""
    depends_on = v.obj(body, "dependsOn")
    if depends_on is None:
        return None
    ids = v.array(depends_on, "taskIds", path="dependsOn.taskIds")
    ranges = v.array(depends_on, "taskIdRanges", path="dependsOn.taskIdRanges")
    if not ids and not ranges:
        return None
    keys: dict[str, None] = {}
    length = 0
    for index, value in enumerate(ids):
        where = f"dependsOn.taskIds[{index}]"
        if not isinstance(value, str):
            raise InvalidProperty(where, value, "The value must be a string.")
        if not v.ID_PATTERN.fullmatch(value):
            raise InvalidProperty(where, value[:64], "The value must be a task id.")
        length += len(value)
        if length > MAX_TASK_IDS_CHARS:
            raise BadRequest("The dependency list of the task is too long.", code="TaskDependencyListTooLong",
                             values={"MaxLimit": str(MAX_TASK_IDS_CHARS)})
        keys[value.lower()] = None
    bounds: list[tuple[int, int]] = []
    width = 0
    for index, value in enumerate(ranges):
        where = f"dependsOn.taskIdRanges[{index}]"
        if not isinstance(value, dict):
            raise InvalidProperty(where, value, "The value must be a JSON object.")
        start = v.integer(value, "start", path=f"{where}.start")
        end = v.integer(value, "end", path=f"{where}.end")
        if start is None or end is None:
            raise MissingProperty(f"{where}.{'start' if start is None else 'end'}")
        if start > end:
            raise InvalidProperty(f"{where}.end", end, "The end of a range must not be before its start.")
        width += end - start + 1
        if len(keys) + width > MAX_EDGES_PER_TASK:
            raise BadRequest("The task depends on more tasks than this Batch service (Shoal) allows.",
                             code="TaskDependencyRangesTooLong", values={"MaxLimit": str(MAX_EDGES_PER_TASK)})
        bounds.append((start, end))
    own_number = id_number(task_id)
    if task_id.lower() in keys or (own_number is not None and any(s <= own_number <= e for s, e in bounds)):
        raise InvalidProperty("dependsOn", task_id, "A task cannot depend on itself.")
    return Dependencies(tuple(keys), tuple(bounds)), depends_on


def check_request_size(parsed: Iterable[Dependencies | None]) -> None:
    """One add request creates at most MAX_EDGES_PER_REQUEST edges, however its tasks share them."""
    total = 0
    for dependencies in parsed:
        if dependencies is not None:
            total += len(dependencies.keys) + sum(end - start + 1 for start, end in dependencies.ranges)
            if total > MAX_EDGES_PER_REQUEST:
                raise BadRequest("The tasks of the request depend on more tasks than this Batch service "
                                 "(Shoal) allows in one request.", code="TaskDependencyRangesTooLong",
                                 values={"MaxLimit": str(MAX_EDGES_PER_REQUEST)})


@dataclass(frozen=True)
class Edges:
    """A new dependent's edge rows (without its seq, which the insert gives) and how many are open."""

    rows: tuple[dict[str, Any], ...]
    unsatisfied: int


def prepare(conn: Connection, job_seq: int, dependencies: Dependencies) -> Edges:
    """The edges of a task about to be added, each already satisfied if its prerequisite has
    completed and satisfies its dependents: index seeks for the named ids and ranges only."""
    # The prerequisites are read FOR SHARE (PostgreSQL; SQLite has one writer): one completing in a
    # concurrent transaction either commits first and is seen here, or waits for this one and
    # then finds its new edges open to close. Read unfiltered, so that the lock also waits on a
    # row whose completion is not committed yet.
    done_keys: set[str] = set()
    for chunk in in_chunks(list(dependencies.keys)):
        done_keys.update(row.key for row in conn.execute(
            select(tasks.c.key, tasks.c.satisfies_dependents)
            .where(tasks.c.job_seq == job_seq, tasks.c.key.in_(chunk)).with_for_update(read=True))
            if row.satisfies_dependents)
    done_numbers: set[int] = set()
    merged = _merged(dependencies.ranges)
    members = dependencies.numbers()
    # Whichever takes fewer statements: one seek a range (wide ranges), or the members a chunk at
    # a time (many narrow ones: 20,000 one-task ranges were 20,000 statements in the writer).
    if len(merged) <= len(members) // IN_CHUNK + 1:
        bounds = [tasks.c.id_number.between(start, end) for start, end in merged]
    else:
        bounds = [tasks.c.id_number.in_(chunk) for chunk in in_chunks(members)]
    for bound in bounds:
        done_numbers.update(row.id_number for row in conn.execute(
            select(tasks.c.id_number, tasks.c.satisfies_dependents)
            .where(tasks.c.job_seq == job_seq, tasks.c.id_number.is_not(None), bound).with_for_update(read=True))
            if row.satisfies_dependents)
    rows = [{"job_seq": job_seq, "prerequisite_key": key, "prerequisite_number": None,
             "satisfied": key in done_keys} for key in dependencies.keys]
    rows += [{"job_seq": job_seq, "prerequisite_key": None, "prerequisite_number": number,
              "satisfied": number in done_numbers} for number in dependencies.numbers()]
    return Edges(tuple(rows), sum(1 for row in rows if not row["satisfied"]))


def _merged(ranges: Any) -> list[tuple[int, int]]:
    """Ranges with overlapping and adjacent ones joined, ascending."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def store(conn: Connection, task_seq: int, edges: Edges) -> None:
    if edges.rows:
        conn.execute(insert(task_dependencies), [{**row, "task_seq": task_seq} for row in edges.rows])


# Closing the open edges that name a completed task, by its key or by its number: seeks of the
# two partial indexes, which hold open edges only. The update itself re-checks `satisfied`, so
# two transactions completing "4" and "04" at once close a range edge once (the second waits for
# the first's row lock, then finds the edge closed) and only the edges closed here are counted.
_CLOSE_BY_KEY = (
    update(task_dependencies)
    .where(task_dependencies.c.job_seq == bindparam("b_job"),
           task_dependencies.c.prerequisite_key == bindparam("b_key"), task_dependencies.c.satisfied == false())
    .values(satisfied=True)
    .returning(task_dependencies.c.task_seq)
)
_CLOSE_BY_NUMBER = (
    update(task_dependencies)
    .where(task_dependencies.c.job_seq == bindparam("b_job"),
           task_dependencies.c.prerequisite_number == bindparam("b_number"),
           task_dependencies.c.satisfied == false())
    .values(satisfied=True)
    .returning(task_dependencies.c.task_seq)
)
_UNBLOCK = (
    update(tasks).where(tasks.c.seq == bindparam("b_task"))
    .values(unsatisfied=tasks.c.unsatisfied - bindparam("b_count"))
)


@dataclass(frozen=True)
class Completion:
    """A task that just completed, as its dependents see it."""

    job_seq: int
    key: str
    number: int | None
    satisfies: bool


def release(conn: Connection, completions: Sequence[Completion]) -> int:
    """Satisfy the open edges of the completions that satisfy their dependents; returns how
    many dependents were touched (for the caller's wake-ups and for tests)."""
    per_task: Counter[int] = Counter()
    for done in completions:
        if not done.satisfies:
            continue
        per_task.update(conn.execute(_CLOSE_BY_KEY, {"b_job": done.job_seq, "b_key": done.key}).scalars())
        if done.number is not None:
            per_task.update(conn.execute(_CLOSE_BY_NUMBER,
                                         {"b_job": done.job_seq, "b_number": done.number}).scalars())
    if per_task:
        # In task order, so two transactions never take the dependents' rows in opposite orders.
        conn.execute(_UNBLOCK, [{"b_task": seq, "b_count": count} for seq, count in sorted(per_task.items())])
    return len(per_task)


# The most tasks and edges a cycle check walks before it gives up and lets the task in (a cycle it
# could not see only leaves its tasks blocked, visibly active, as any unsatisfiable dependency).
MAX_CYCLE_WALK_TASKS = 10_000
MAX_CYCLE_WALK_EDGES = 200_000


@dataclass
class WalkBudget:
    """What the cycle checks of one request may read in all: a collection's walks share it, so
    100 tasks each naming 1,000 prerequisites cost one bounded walk, not 100."""

    edges: int = MAX_CYCLE_WALK_EDGES


def check_no_cycle(conn: Connection, job_seq: int, task_id: str, dependencies: Dependencies,
                   budget: WalkBudget | None = None) -> None:
    """Refuse a task whose prerequisites (through their own open edges, transitively) depend on
    it: such tasks would wait for each other forever. Walks open edges only: a prerequisite
    that has already satisfied its dependents cannot be part of a wait."""
    key, number = task_id.lower(), id_number(task_id)
    keys, numbers = set(dependencies.keys), set(dependencies.numbers())
    budget = budget if budget is not None else WalkBudget()
    seen: set[int] = set()
    while keys or numbers:
        found: set[int] = set()
        for key_chunk in in_chunks(sorted(keys)):
            found.update(conn.execute(select(tasks.c.seq).where(tasks.c.job_seq == job_seq,
                                                                tasks.c.key.in_(key_chunk))).scalars())
        for number_chunk in in_chunks(sorted(numbers)):
            found.update(conn.execute(select(tasks.c.seq).where(
                tasks.c.job_seq == job_seq, tasks.c.id_number.is_not(None),
                tasks.c.id_number.in_(number_chunk))).scalars())
        found -= seen
        if not found or len(seen) + len(found) > MAX_CYCLE_WALK_TASKS:
            return
        seen |= found
        keys, numbers = set(), set()
        for seq_chunk in in_chunks(sorted(found)):
            if budget.edges <= 0:
                return  # a wait this long is let in: its tasks stay blocked (docs/deviations.md)
            # LIMIT: the walk stops within its budget, not after a whole level of edges.
            for edge in conn.execute(select(task_dependencies.c.prerequisite_key,
                                            task_dependencies.c.prerequisite_number)
                                     .where(task_dependencies.c.task_seq.in_(seq_chunk),
                                            task_dependencies.c.satisfied == false())
                                     .limit(budget.edges)).all():
                budget.edges -= 1
                if edge.prerequisite_key == key or (number is not None and edge.prerequisite_number == number):
                    raise InvalidProperty("dependsOn", task_id, "The task's dependencies would form a cycle: "
                                          "a task it depends on depends on it.")
                if edge.prerequisite_key is not None:
                    keys.add(edge.prerequisite_key)
                else:
                    numbers.add(edge.prerequisite_number)
        if budget.edges <= 0:
            return

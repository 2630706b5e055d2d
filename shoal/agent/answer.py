"""What a sync answer can ask of an agent beyond its items (leave the pool, restart the node),
and how one malformed item is skipped: shared by the real agent and the simulated ones, which
must read answers the same way."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


class LeavePool(Exception):
    """The node must leave the pool: kill everything, delete the root, exit 0."""


class RestartNode(Exception):
    """Reboot or reimage: stop everything, (reimage: wipe the root), start over as a new incarnation."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.reimage = kind == "reimage"


def raise_node_orders(answer: dict[str, Any]) -> None:
    """Leave or restart, when the answer says so (after its items were applied)."""
    if answer.get("leave"):
        raise LeavePool()
    if answer.get("restart"):
        raise RestartNode(str(answer["restart"]))


@contextlib.contextmanager
def skipping_malformed(what: str, item: Any, log: logging.Logger) -> Iterator[None]:
    """Skip one malformed item of a sync answer, saying so, instead of dying on it."""
    try:
        yield
    except (LeavePool, RestartNode):
        raise
    except Exception:
        log.exception("skipped a malformed %s item: %.200r", what, item)


# Deletions acknowledged per sync, of each kind (the control plane's cap, agent_bodies).
MAX_DELETIONS_PER_SYNC = 1000


def acknowledge_deletions(body: dict[str, Any], done: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Put folder deletions carried out (("task", job, task) or ("job", job)) into a sync body
    as `deletedTaskDirs` / `deletedJobDirs`; returns the ones it carries, to forget once the
    sync has been answered (an unanswered one is sent again)."""
    tasks = [key for key in done if key[0] == "task"][:MAX_DELETIONS_PER_SYNC]
    jobs = [key for key in done if key[0] == "job"][:MAX_DELETIONS_PER_SYNC]
    if tasks:
        body["deletedTaskDirs"] = [[key[1], key[2]] for key in tasks]
    if jobs:
        body["deletedJobDirs"] = [key[1] for key in jobs]
    return {*tasks, *jobs}

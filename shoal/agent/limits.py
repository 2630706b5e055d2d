"""A node of size S gets S's vCPUs and memory (issue 10): its processes are confined by cgroups.

The node's agent joins a ``memory`` and a ``cpu`` cgroup named as its containment cgroup
(:mod:`shoal.agent.tree`) before it starts anything, so every task, start task and SSH session is
born inside; once the hello says the pool's VM size, the limits are written:

- memory: the size's memory (``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes`` where
  swap is accounted, so a task cannot page its way past it); past it the kernel's OOM killer
  kills within the node only, the task exits 137, as on a VM;
- CPU: a CFS quota of vCPUs × the period (``cpu.cfs_quota_us``): a 2-vCPU node's tasks together
  get at most two of the host's CPUs, however many processes they start;
- under cgroup v2, ``memory.max`` and ``cpu.max`` on the node's own cgroup, when the parent
  delegates those controllers.

The agent shares the node with its tasks, as on a VM; spawners raise their tasks'
``oom_score_adj`` so that the OOM killer takes a task before the agent.

Where this is impossible (not root, no such hierarchy), the node says so in its ``errors``
(`SizeNotEnforced`) rather than pretending.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from shoal.agent.tree import Hierarchy, NodeCgroup, containment_hierarchy, mounted_hierarchies

log = logging.getLogger("shoal.agent.limits")

CFS_PERIOD_US = 100_000
LIMIT_CONTROLLERS = ("memory", "cpu")
# The agent, its watchdog and spawners take some of the node's memory too, as a VM's agent
# does; below this a node could not even start its agent.
MIN_MEMORY_BYTES = 256 * 1024 * 1024


def _limit_hierarchies() -> list[Hierarchy]:
    """The v1 memory and cpu hierarchies, or the v2 one when the host is pure v2."""
    unified = containment_hierarchy()
    if unified is not None and unified.version == 2:
        return [unified]
    return [h for h in mounted_hierarchies() if h.version == 1 and h.controller in LIMIT_CONTROLLERS]


@dataclass
class NodeLimits:
    """The cgroups that hold one node's size."""

    cgroups: list[NodeCgroup] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def enter(cls, node_root: str | os.PathLike[str]) -> NodeLimits:
        """Join the node's memory and cpu cgroups (blocking; call before starting any child)."""
        limits = cls()
        if os.geteuid() != 0:
            limits.errors.append("the agent does not run as root")
            return limits
        for hierarchy in _limit_hierarchies():
            try:
                cgroup = NodeCgroup.beside_current(node_root, hierarchy)
                if hierarchy.version == 1:
                    cgroup.enter()
                limits.cgroups.append(cgroup)
            except (OSError, LookupError, ValueError) as exc:
                limits.errors.append(f"cannot join a {hierarchy.controller or 'v2'} cgroup: {exc}")
        controllers = {c.hierarchy.controller for c in limits.cgroups}
        if not any(c.hierarchy.version == 2 for c in limits.cgroups):
            missing = [name for name in LIMIT_CONTROLLERS if name not in controllers]
            if missing:
                limits.errors.append(f"no writable {' or '.join(missing)} cgroup hierarchy")
        return limits

    @property
    def enforced(self) -> bool:
        return not self.errors

    def apply(self, vcpus: int, memory_mib: int) -> None:
        """Write the size's limits (blocking). A failure is kept in ``errors``."""
        memory = max(MIN_MEMORY_BYTES, memory_mib * 1024 * 1024)
        quota = max(1, vcpus) * CFS_PERIOD_US
        for cgroup in self.cgroups:
            try:
                if cgroup.hierarchy.version == 2:
                    _apply_v2(cgroup.directory, memory, quota)
                elif cgroup.hierarchy.controller == "memory":
                    _apply_memory_v1(cgroup.directory, memory)
                else:
                    (cgroup.directory / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                    (cgroup.directory / "cpu.cfs_quota_us").write_text(str(quota))
            except OSError as exc:
                self.errors.append(f"cannot limit {cgroup.directory}: {exc}")
                log.error("cannot apply the node's size limits to %s: %s", cgroup.directory, exc)

    def release(self) -> None:
        """Agent exit: leave and remove the cgroups (once the containment has killed the rest)."""
        for cgroup in self.cgroups:
            with contextlib.suppress(OSError):
                cgroup.leave()
            cgroup.remove()


def _apply_memory_v1(directory: Path, limit: int) -> None:
    memsw = directory / "memory.memsw.limit_in_bytes"
    # memsw may never be below the memory limit: lower memory first when shrinking, raise memsw
    # first when growing; try both orders.
    try:
        (directory / "memory.limit_in_bytes").write_text(str(limit))
        if memsw.exists():
            memsw.write_text(str(limit))
    except OSError:
        if memsw.exists():
            memsw.write_text(str(limit))
        (directory / "memory.limit_in_bytes").write_text(str(limit))


def _apply_v2(directory: Path, memory: int, quota: int) -> None:
    available = set((directory / "cgroup.controllers").read_text().split())
    if not {"memory", "cpu"} <= available:
        with contextlib.suppress(OSError):
            (directory.parent / "cgroup.subtree_control").write_text("+memory +cpu")
        available = set((directory / "cgroup.controllers").read_text().split())
    if not {"memory", "cpu"} <= available:
        raise OSError(f"the parent cgroup does not delegate memory and cpu (has {sorted(available)})")
    (directory / "memory.max").write_text(str(memory))
    (directory / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")


def remove_for(node_root: str | os.PathLike[str]) -> None:
    """The node is gone without its agent's goodbye: remove its (empty) limit cgroups."""
    if os.geteuid() != 0:
        return
    for hierarchy in _limit_hierarchies():
        if hierarchy.version == 2:
            continue  # the containment cgroup itself: removed with it
        with contextlib.suppress(OSError, LookupError, ValueError):
            NodeCgroup.beside_current(node_root, hierarchy).remove()

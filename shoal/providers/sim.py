"""The simulated provider (`shoal up --provider sim`): node records brought up as simulated agents.

A provider like the local one (it reads the node records, starts an agent for each node that
needs one, ends agents of nodes that left, reports agents it loses and spot capacity it takes
back), but its agents are coroutines in ONE separate process (`shoal.providers.sim_agent`) that
speak the agent protocol over HTTP to this server, run tasks as timers and keep files in memory.
So one machine holds thousands of nodes, and the control plane, which only sees the protocol,
treats them as it treats real ones; the scale benchmarks (bench/scale.py) run on them.

The agents' process is this server's child, fed commands on a pipe (node tokens travel only
there); it ends when the pipe closes, so its nodes go with the server and a restarted server
finds them lost and starts them afresh. If the process dies, every node it held is lost the
same way (their running tasks are requeued) and a new process takes them over.

Task timing and exit codes come from the command line (see `sim_script`), or for command lines
it does not understand from the pool's metadata `shoal:simTaskDuration` and
`shoal:simTaskExitCode`, read when the node's agent starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from shoal.model.states import NodeState
from shoal.providers.eviction import SpotEvictor
from shoal.providers.local import agent_environment
from shoal.providers.sim_script import Defaults
from shoal.service import node_operations
from shoal.service import nodes as node_service
from shoal.service.context import Context
from shoal.store.runner import StoreRunner
from shoal.store.schema import pools

log = logging.getLogger("shoal.providers.sim")

# Nodes the simulator holds at once: far more than a machine holds real agents (each is a few
# kilobytes and a connection). The machine's node capacity (`SHOAL_MAX_NODES`) should be this
# when the simulator provides the nodes.
SIM_NODE_CAPACITY = 100_000
# Every change the simulator acts on wakes it (allocations, removals, preemptions, goodbyes, a
# node's or the process's exit). A woken pass reads only the nodes in the states it acts on and
# those whose agents it saw exit; reading every node record is the unprompted pass's, a safety
# net (at 0.5 s such full passes were a tenth of the server's idle CPU with 2,000 nodes).
SIM_RECONCILE_S = 30.0
# More exits than this since the last pass (the process died, a pool went) read everything.
MAX_SUSPECTS = 1000
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def _private_log(path: Path) -> int:
    """The agents' log: 0600, appended to, never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


class SimProvider:
    reconcile_interval_s = SIM_RECONCILE_S
    capacity = SIM_NODE_CAPACITY

    def __init__(self, ctx: Context, join_url: str, *, log_path: Path | None = None,
                 spot_eviction_rate: float = 0.0, eviction_seed: int | None = None,
                 runner: StoreRunner | None = None, batch_syncs: bool = True) -> None:
        self.ctx = ctx
        self.batch_syncs = batch_syncs
        # Store calls go through the runner (reads to a reader, writes to the one writer).
        self.runner = runner if runner is not None else StoreRunner()
        self.join_url = join_url
        self.log_path = log_path
        self.evictor = SpotEvictor(spot_eviction_rate, eviction_seed)
        # Nodes whose agent runs now, each with the number of the start command that made it,
        # so news of an earlier agent of the same node cannot pass for news of this one.
        self.alive: dict[str, int] = {}
        # Nodes whose agents exited since the last pass, and when the last full pass began.
        self._suspects: set[str] = set()
        self._last_full_pass: float | None = None
        self._starts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._events: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None

    # ---- the agents' process -----------------------------------------------------------------

    async def _ensure_process(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        log_fd = _private_log(self.log_path) if self.log_path is not None else None
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shoal.providers.sim_agent", "--join", self.join_url,
                *(() if self.batch_syncs else ("--no-batch",)),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=log_fd if log_fd is not None else asyncio.subprocess.DEVNULL,
                env=agent_environment(os.environ), start_new_session=True, limit=1 << 20)
        finally:
            if log_fd is not None:
                os.close(log_fd)
        self._process = process
        self.alive.clear()
        self._ready = asyncio.get_running_loop().create_future()
        self._events = asyncio.ensure_future(self._read_events(process, self._ready))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT_S)
        except TimeoutError:
            log.error("the simulated agents' process did not start in %s s", READY_TIMEOUT_S)
            process.kill()
            raise
        log.info("simulated agents run in process %s", process.pid)
        return process

    async def _read_events(self, process: asyncio.subprocess.Process, ready: asyncio.Future[dict[str, Any]]) -> None:
        assert process.stdout is not None
        try:
            while True:
                line = await process.stdout.readline()
                if not line:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("event") == "ready" and not ready.done():
                    ready.set_result(event)
                elif event.get("event") == "exited":
                    node_id, seq = event.get("nodeId"), event.get("seq")
                    if self.alive.get(node_id) == seq:  # type: ignore[arg-type]
                        del self.alive[node_id]  # type: ignore[arg-type]
                        self._suspects.add(node_id)  # type: ignore[arg-type]
                        self.ctx.signals.wake_provider()
        finally:
            await process.wait()
            if self._process is process:
                # Every node it held is lost; the next pass reports them and starts a new process.
                if process.returncode not in (0, None):
                    log.error("the simulated agents' process ended with %s", process.returncode)
                self.alive.clear()
                self._process = None
                self._last_full_pass = None  # every node it held must be looked at
                self.ctx.signals.wake_provider()
            if not ready.done():
                ready.set_exception(RuntimeError("the simulated agents' process ended before it was ready"))

    def _send(self, process: asyncio.subprocess.Process, command: dict[str, Any]) -> None:
        assert process.stdin is not None
        process.stdin.write(json.dumps(command).encode() + b"\n")

    # ---- the provider duty -------------------------------------------------------------------

    def _full_pass_due(self) -> bool:
        return (self._last_full_pass is None or len(self._suspects) > MAX_SUSPECTS
                or time.monotonic() - self._last_full_pass >= SIM_RECONCILE_S)

    async def reconcile(self) -> None:
        await self.evictor.run(self.ctx, self.runner)
        process = await self._ensure_process()
        full = self._full_pass_due()
        if full:
            self._last_full_pass = time.monotonic()
        suspects, self._suspects = self._suspects, set()
        records = await self.runner.read(node_service.provisioning_view, self.ctx, None if full else suspects)
        to_start = []
        for record in records:
            alive = record.node_id in self.alive
            if record.state == NodeState.PREEMPTED:
                # The VM went with its capacity: its agent vanishes with it.
                if alive:
                    self._stop(process, record.node_id)
                continue
            if record.state == NodeState.LEAVING_POOL:
                if not alive:
                    await self.runner.write(node_service.forget, self.ctx, record.node_id)
                continue
            if record.state in (NodeState.DEALLOCATING, NodeState.DEALLOCATED):
                # Stopped with its (simulated) disk kept; started again from `creating`.
                if alive:
                    self._stop(process, record.node_id)
                if record.state == NodeState.DEALLOCATING:
                    await self.runner.write(node_operations.deallocated, self.ctx, record.node_id)
                continue
            if alive:
                continue
            if record.state != NodeState.CREATING:
                # The agent died under a live node: its tasks are requeued, and it starts afresh.
                log.warning("simulated agent of node %s is gone; restarting it", record.node_id)
                await self.runner.write(node_service.agent_lost, self.ctx, record.node_id)
            to_start.append(record)
        if to_start:
            defaults = await self.runner.read(self._pool_defaults, {r.pool_id for r in to_start})
            for record in to_start:
                self._starts += 1
                self.alive[record.node_id] = self._starts
                self._send(process, {"op": "start", "seq": self._starts, "nodeId": record.node_id,
                                     "poolId": record.pool_id, "token": record.token,
                                     "defaults": defaults.get(record.pool_id, Defaults()).to_json()})
        recorded = {r.node_id for r in records}
        # A partial pass knows only of its suspects whether their records are gone.
        for node_id in [n for n in (self.alive if full else suspects) if n not in recorded]:
            # The record is gone (the node said goodbye, or was dropped): nothing may remain.
            self._stop(process, node_id)
        assert process.stdin is not None
        with contextlib.suppress(ConnectionError):
            await process.stdin.drain()

    def _stop(self, process: asyncio.subprocess.Process, node_id: str) -> None:
        self.alive.pop(node_id, None)
        self._send(process, {"op": "stop", "nodeId": node_id})

    def _pool_defaults(self, pool_ids: set[str]) -> dict[str, Defaults]:
        with self.ctx.engine.connect() as conn:
            rows = conn.execute(select(pools.c.id, pools.c.spec).where(
                pools.c.account == self.ctx.account, pools.c.id.in_(pool_ids))).all()
        return {row.id: Defaults.from_metadata((row.spec or {}).get("metadata")) for row in rows}


    async def shutdown(self, *, stop_agents: bool) -> None:
        """The agents' process ends with its pipe; simulated nodes never outlive their server."""
        process = self._process
        self._process = None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._events is not None:
            self._events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events

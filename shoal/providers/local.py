"""The local provider: every node is a `shoal agent` subprocess on this machine.

Each node gets its own node root, `<nodes dir>/<node id>/batch/tasks` (the nodes dir is outside
the private data dir when Shoal runs as root; see `shoal.config.default_nodes_dir`). Agents run in their
own session so that a crash of the server (kill -9) leaves them running; a restarted server
adopts them by pid, and the agents resend whatever was not acknowledged.

An agent gets nothing of the server's environment (which may hold `PGPASSWORD`, the database URL or
`AZURE_BATCH_ACCESS_KEY`): only the variables in `AGENT_ENV_PASSTHROUGH`. Its node token comes
through a pipe on stdin, so it is in neither its argv nor its environment (which
`/proc/<pid>/environ` keeps for the process's whole life, even after `os.environ.pop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from shoal.agent import limits as node_limits
from shoal.agent import outputs
from shoal.agent.tree import kill_node_processes
from shoal.agent.users import remove_node_users
from shoal.config import PROVIDER_RECONCILE_S
from shoal.model.states import NodeState
from shoal.providers.eviction import SpotEvictor
from shoal.service import node_copies, node_operations
from shoal.service import nodes as node_service
from shoal.service.context import Context
from shoal.store.runner import StoreRunner

log = logging.getLogger("shoal.providers.local")

LEAVE_GRACE_S = 10.0
# What an agent may inherit from the server's environment: how to find Python and its packages,
# and how to log. Everything else (credentials, database URLs) stays with the server.
AGENT_ENV_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "SHOAL_LOG_LEVEL")
DEFAULT_AGENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class _Agent:
    node_id: str
    pool_id: str
    process: psutil.Process
    popen: subprocess.Popen[bytes] | None = None
    gone_since: float | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            return self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            self.process.send_signal(sig)


def _make_traversable(directory: Path) -> None:
    """Create ``directory`` and any missing parents 0755 (the server's umask is 077): task users
    must be able to walk down to their node's folders."""
    missing = []
    current = directory.absolute()
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        path.chmod(0o755)


def agent_environment(server_env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The explicit, minimal environment of an agent process."""
    env = {name: server_env[name] for name in AGENT_ENV_PASSTHROUGH if server_env.get(name)}
    env.setdefault("PATH", DEFAULT_AGENT_PATH)
    try:
        env["HOME"] = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        env["HOME"] = "/"
    return env


def _private_log(path: Path) -> int:
    """The agent's log: 0600 whatever the umask, and never through a link a task could plant."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


class LocalProvider:
    # An agent process that dies is noticed only by polling it.
    reconcile_interval_s = PROVIDER_RECONCILE_S
    def __init__(self, ctx: Context, nodes_dir: Path, join_url: str, *, spot_eviction_rate: float = 0.0,
                 eviction_seed: int | None = None, runner: StoreRunner | None = None,
                 ca_file: Path | None = None) -> None:
        self.ctx = ctx
        # The CA of an https endpoint (`shoal up --tls`): the agents trust it for the agent protocol.
        self.ca_file = ca_file
        # Store calls go through the runner (reads to a reader, writes to the one writer).
        self.runner = runner if runner is not None else StoreRunner()
        self.evictor = SpotEvictor(spot_eviction_rate, eviction_seed)
        self.nodes_dir = nodes_dir
        _make_traversable(nodes_dir)
        self.join_url = join_url
        self.agents: dict[str, _Agent] = {}
        # Nodes whose users are being removed in a worker thread: not respawned until done.
        self._cleaning: dict[str, asyncio.Future[None]] = {}

    def node_dir(self, node_id: str) -> Path:
        return self.nodes_dir / node_id

    def node_root(self, node_id: str) -> Path:
        return self.node_dir(node_id) / "batch" / "tasks"

    async def reconcile(self) -> None:
        await self.evictor.run(self.ctx, self.runner)
        self._reap_cleanups()
        records = {r.node_id: r for r in await self.runner.read(node_service.provisioning_view, self.ctx)}
        for record in records.values():
            agent = self.agents.get(record.node_id)
            if agent is None and record.agent_pid:
                agent = self._adopt(record.node_id, record.pool_id, record.agent_pid)
            if record.state == NodeState.PREEMPTED:
                # The VM went with its capacity: no agent, no local data, until it comes back.
                if agent is not None or self.node_dir(record.node_id).exists():
                    await asyncio.to_thread(_remove_node_processes, self.node_root(record.node_id))
                    await self._keep_agent_log(record.node_id, record.pool_id)
                    self._drop(record.node_id)
                continue
            if record.state in (NodeState.DEALLOCATING, NodeState.DEALLOCATED):
                await self._deallocate(record, agent)
                continue
            if record.state == NodeState.LEAVING_POOL:
                if agent is None or not agent.alive():
                    await asyncio.to_thread(_remove_node_processes, self.node_root(record.node_id))
                    await self._keep_agent_log(record.node_id, record.pool_id)
                    self._drop(record.node_id)
                    await self.runner.write(node_service.forget, self.ctx, record.node_id)
                continue
            if agent is not None and agent.alive():
                continue
            if record.node_id in self._cleaning:
                continue  # its old users are still being removed; a new agent would race them
            restarting = record.state == NodeState.UNUSABLE and record.agent_pid is None
            if record.state != NodeState.CREATING and not restarting:
                # The agent died under a live node: its tasks are requeued and the node is
                # unusable until the next pass starts a new agent on it (as a VM whose agent
                # crashed is, until its service manager restarts it).
                log.warning("agent of node %s is gone; restarting it", record.node_id)
                # Its task trees die first: requeued, they must not run twice at once.
                await asyncio.to_thread(kill_node_processes, self.node_root(record.node_id))
                await self._keep_agent_log(record.node_id, record.pool_id)
                await self.runner.write(node_service.agent_lost, self.ctx, record.node_id)
                self.agents.pop(record.node_id, None)
                continue
            pid = self._spawn(record.node_id, record.pool_id, record.token)
            await self.runner.write(node_service.agent_spawned, self.ctx, record.node_id, pid)
        now = time.monotonic()
        for node_id in list(self.agents):
            if node_id in records:
                continue
            agent = self.agents[node_id]
            if agent.alive():
                # The record is gone (the node left); the agent was told to leave and should exit.
                agent.gone_since = agent.gone_since or now
                if now - agent.gone_since > LEAVE_GRACE_S:
                    agent.terminate(signal.SIGKILL)
                continue
            await asyncio.to_thread(_remove_node_processes, self.node_root(node_id))
            await self._keep_agent_log(node_id, agent.pool_id)
            self._drop(node_id)

    async def _keep_agent_log(self, node_id: str, pool_id: str) -> None:
        """The last of the agent's log, before the node's folder goes or a new agent appends to
        it: a killed agent could not send it (service/node_copies.py)."""
        copy = await asyncio.to_thread(outputs.file_tail, self.node_dir(node_id) / "agent.log")
        if copy is not None:
            await self.runner.write(node_copies.keep_agent_log, self.ctx, pool_id, node_id, copy)
    async def _deallocate(self, record: node_service.ProvisioningRecord, agent: _Agent | None) -> None:
        """The "VM" stops with its disk kept: SIGTERM lets the agent kill its tasks and exit;
        once it is gone, whatever is left of the node dies and the node is `deallocated`."""
        if agent is not None and agent.alive():
            agent.terminate()
            return  # the next pass finds it gone
        self.agents.pop(record.node_id, None)
        if record.state == NodeState.DEALLOCATING:
            await asyncio.to_thread(kill_node_processes, self.node_root(record.node_id))
            await self._keep_agent_log(record.node_id, record.pool_id)
            await self.runner.write(node_operations.deallocated, self.ctx, record.node_id)

    def _adopt(self, node_id: str, pool_id: str, pid: int) -> _Agent | None:
        try:
            process = psutil.Process(pid)
            cmdline = " ".join(process.cmdline())
            if node_id not in cmdline:
                return None
            if self.join_url not in cmdline:
                # An agent of an earlier server on another endpoint could never reach us.
                os.killpg(process.pid, signal.SIGKILL)
                return None
        except (psutil.Error, ProcessLookupError, PermissionError):
            return None
        agent = _Agent(node_id, pool_id, process)
        self.agents[node_id] = agent
        return agent

    def _spawn(self, node_id: str, pool_id: str, token: str) -> int:
        """Start the node's agent; its pid, for the caller to record."""
        root = self.node_root(node_id)
        # Task users walk down to their folders through these, so they are 0755 (umask is 077).
        _make_traversable(root)
        log_fd = _private_log(self.node_dir(node_id) / "agent.log")
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "shoal.agent", "--join", self.join_url, "--pool", pool_id,
                 "--node-id", node_id, "--root", str(root), "--token-stdin",
                 *(["--ca-file", str(self.ca_file)] if self.ca_file else [])],
                stdin=subprocess.PIPE, stdout=log_fd, stderr=subprocess.STDOUT, env=agent_environment(os.environ),
                start_new_session=True, close_fds=True)
        finally:
            os.close(log_fd)
        assert popen.stdin is not None
        try:
            # A few dozen bytes into an empty pipe: never blocks.
            popen.stdin.write(token.encode() + b"\n")
            popen.stdin.close()
        except BrokenPipeError:
            pass  # the agent died at once; the next pass sees it gone
        self.agents[node_id] = _Agent(node_id, pool_id, psutil.Process(popen.pid), popen)
        return popen.pid

    def _reap_cleanups(self) -> None:
        for node_id, cleaning in list(self._cleaning.items()):
            if not cleaning.done():
                continue
            del self._cleaning[node_id]
            if not cleaning.cancelled() and cleaning.exception() is not None:
                log.error("removing the users of node %s failed: %s", node_id, cleaning.exception())

    def _drop(self, node_id: str) -> None:
        agent = self.agents.pop(node_id, None)
        if agent is not None and agent.alive():
            agent.terminate(signal.SIGKILL)
        shutil.rmtree(self.node_dir(node_id), ignore_errors=True)
        if os.geteuid() == 0 and node_id not in self._cleaning:
            # A killed agent could not remove its node's users; userdel runs off the event loop.
            self._cleaning[node_id] = asyncio.ensure_future(asyncio.to_thread(remove_node_users, node_id))

    async def shutdown(self, *, stop_agents: bool) -> None:
        if not stop_agents:
            return
        for agent in self.agents.values():
            agent.terminate()
        deadline = time.monotonic() + 5
        for agent in self.agents.values():
            while agent.alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if agent.alive():
                agent.terminate(signal.SIGKILL)


def _remove_node_processes(node_root: Path) -> None:
    """The node is gone for good: its processes and its cgroups (containment and size limits)."""
    kill_node_processes(node_root, remove=True)
    node_limits.remove_for(node_root)

"""A real `shoal up` subprocess for tests: a fresh data dir, a free port, stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.config import ENDPOINT_FILE

STARTUP_TIMEOUT_S = 30.0


@dataclass
class RunningShoal:
    data_dir: Path
    process: subprocess.Popen[bytes]
    endpoint: str
    account: str
    primary_key: str
    secondary_key: str
    log_path: Path
    nodes_dir: Path
    # The CA of an https endpoint (`--tls`); None over http.
    ca_file: str | None = None

    def client(self, key: str | None = None) -> Any:
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        verify = {"connection_verify": self.ca_file} if self.ca_file else {}
        return BatchClient(self.endpoint, AzureNamedKeyCredential(self.account, key or self.primary_key), **verify)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def account_info(data_dir: Path) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "shoal.cli", "account", "show", "--data-dir", str(data_dir),
                          "--json"], capture_output=True, check=True, text=True)
    return json.loads(out.stdout)


def interpreter_for_others() -> tuple[str, str | None]:
    """A Python another user can run with this environment's packages: ours when they can reach
    it, else the system's Python of the same minor version with our site-packages on its path
    (pyenv lives in root's 0700 home)."""
    import sysconfig

    if _others_can_execute(Path(sys.executable).resolve()):
        return sys.executable, None
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        raise RuntimeError(f"no Python another user can run: {sys.executable} is private and {system} is missing")
    repo = Path(__file__).resolve().parents[2]
    return str(system), os.pathsep.join([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], str(repo)])


def _others_can_execute(path: Path) -> bool:
    for part in [path, *path.parents]:
        if not part.stat().st_mode & 0o001:
            return False
    return True


def start_shoal(data_dir: Path, *, port: int = 0, extra_args: list[str] | None = None,
                env: dict[str, str] | None = None, command: str = "up", as_user: str | None = None) -> RunningShoal:
    """Start `shoal COMMAND` on ``data_dir``; ``as_user`` runs it as that OS user (the caller is
    root and ``data_dir`` is that user's)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    endpoint_file = data_dir / ENDPOINT_FILE
    endpoint_file.unlink(missing_ok=True)
    log_path = data_dir / f"shoal-up-{int(time.time() * 1000)}.log"
    process_env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    process_env.update(env or {})
    identity: dict[str, Any] = {}
    python = sys.executable
    if as_user is not None:
        import pwd

        user = pwd.getpwnam(as_user)
        identity = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        process_env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        python, path = interpreter_for_others()
        if path:
            process_env["PYTHONPATH"] = path
    with open(log_path, "wb") as log_file:
        if identity:
            os.fchown(log_file.fileno(), identity["user"], identity["group"])
        process = subprocess.Popen(
            [python, "-m", "shoal.cli", command, "--port", str(port), "--data-dir", str(data_dir),
             *(extra_args or [])], stdout=log_file, stderr=subprocess.STDOUT, env=process_env,
            start_new_session=True, **identity)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not endpoint_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"shoal up did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    try:
        info = account_info(data_dir)
    except Exception:
        process.kill()
        process.wait()
        raise
    nodes_dir = Path(json.loads(endpoint_file.read_text()).get("nodesDir") or data_dir / "nodes")
    return RunningShoal(data_dir, process, info["endpoint"], info["name"], info["primaryKey"],
                        info["secondaryKey"], log_path, nodes_dir, info.get("caFile"))


def stop_shoal(shoal: RunningShoal, *, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    if shoal.process.poll() is None:
        shoal.process.send_signal(sig)
        try:
            shoal.process.wait(timeout)
        except subprocess.TimeoutExpired:
            shoal.process.kill()
            shoal.process.wait()


@contextlib.contextmanager
def running_shoal(data_dir: Path, *, extra_args: list[str] | None = None,
                  as_user: str | None = None) -> Iterator[RunningShoal]:
    """A `shoal up` for the length of a `with` block; its agents are gone afterwards too."""
    shoal = start_shoal(data_dir, extra_args=extra_args, as_user=as_user)
    try:
        yield shoal
    finally:
        stop_shoal(shoal)
        kill_agents(data_dir)


def _forget_nodes(data_dir: Path) -> None:
    """The node users root agents made on this host go, and the node folders (nodes of a stopped
    server never leave their pool, so nothing else removes them)."""
    from shoal.agent.users import remove_users_under
    from shoal.config import default_nodes_dir

    nodes_dir = default_nodes_dir(data_dir)
    for folder in {nodes_dir, data_dir}:
        remove_users_under(folder)
    if data_dir not in nodes_dir.parents:
        shutil.rmtree(nodes_dir, ignore_errors=True)


def kill_agents(data_dir: Path) -> None:
    """After a test: agents outlive a kill -9 of their server, and node users and folders outlive
    any stop; tests clean all of them up."""
    import psutil

    from shoal.config import default_nodes_dir

    # Agents of a provider live under the nodes dir; agents started by hand under the data dir.
    markers = (str(default_nodes_dir(data_dir)), str(data_dir))
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in process.info["cmdline"] or [] for marker in markers):
                os.killpg(process.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    _forget_nodes(data_dir)

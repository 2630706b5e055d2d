"""The README's set-up command and snippets run as pasted, twice in a row (issue 8, item 6).

A newcomer's first contact: the set-up command starts `shoal up` on its defaults (SQLite and
local nodes in the per-user data folder) and every shell/python snippet then runs against it as
written, from the root of the clone. Everything happens in a throw-away HOME, so nothing is left
in the real one; the port comes from $SHOAL_PORT=0 (a free one), as the README allows.

Two parts of the README are not run here, on purpose:
- the install half of the set-up command (`python3 -m venv .venv && .venv/bin/pip install -e .`):
  run from the clone it would recreate and reinstall the very venv this test runs in, and in a copy
  it would take minutes and the package index; what follows it runs exactly as written;
- the test-suite command (`bash scripts/test.sh`): it runs this test (recursion).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from shoal.testing.server import kill_agents

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e . && "
TEST_SUITE = "bash scripts/test.sh"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
RUNNABLE = {"sh": "shell", "bash": "shell", "shell": "shell", "console": "shell", "python": "python", "py": "python"}
STARTUP_TIMEOUT_S = 60.0
SNIPPET_TIMEOUT_S = 180.0


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(kind, body) of every fenced block in a language this test can run."""
    return [(RUNNABLE[lang], body) for lang, body in FENCE.findall(text) if lang in RUNNABLE]


def setup_section(text: str) -> str:
    start = text.index("## Set up")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_has_exactly_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    commands = [body.strip() for _, body in code_blocks(setup_section(text))]
    assert len(commands) == 2, commands
    start, suite = commands
    assert start.startswith(INSTALL) and start.endswith("shoal up"), start
    assert suite == TEST_SUITE


def newcomer_env(home: Path) -> dict[str, str]:
    """The environment of someone who has just cloned: no Shoal or XDG settings, a fresh HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHOAL_", "XDG_", "AZURE_BATCH_"))}
    env.update(HOME=str(home), SHOAL_PORT="0")
    return env


class Server:
    """The set-up command's server, started as pasted (minus the install) and read until it is up."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(command, shell=True, cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.data_dir = self._wait_until_up()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _wait_until_up(self) -> Path:
        while True:
            try:
                line = self.lines.get(timeout=STARTUP_TIMEOUT_S)
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise AssertionError("the set-up command did not bring Shoal up:\n" + "".join(self.output))
            self.output.append(line)
            if line.strip().startswith("data:"):
                return Path(line.split(":", 1)[1].strip())

    def stop(self) -> None:
        """Ctrl-C, as a user stops it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def run_snippet(kind: str, body: str, env: dict[str, str]) -> str:
    command = [sys.executable, "-c", body] if kind == "python" else ["bash", "-e", "-o", "pipefail", "-c", body]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_S)
    assert done.returncode == 0, f"README snippet failed ({kind}):\n{body}\n--- output ---\n{done.stdout}{done.stderr}"
    return done.stdout


def test_readme_runs_as_pasted_twice_in_a_row(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    setup = [body.strip() for _, body in code_blocks(setup_section(text))]
    start_command = setup[0][len(INSTALL):]
    snippets = [(kind, body) for kind, body in code_blocks(text) if body.strip() not in setup]
    assert any(kind == "python" for kind, _ in snippets), "the SDK quickstart is missing"
    env = newcomer_env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    data_dirs: set[Path] = set()
    try:
        for _ in range(2):
            server = Server(start_command, env)
            data_dirs.add(server.data_dir)
            try:
                # The default data folder is under the throw-away HOME: nothing lands in the real one.
                assert tmp_path in server.data_dir.parents
                outputs = [run_snippet(kind, body, env) for kind, body in snippets]
            finally:
                server.stop()
            # Stopped cleanly: uvicorn ends a Ctrl-C'd server by re-raising SIGINT once it has shut down.
            assert server.process.returncode in (0, -signal.SIGINT), "".join(server.output)
            assert "b'hello 7\\n'" in "".join(outputs)
    finally:
        for data_dir in data_dirs:
            kill_agents(data_dir)
    assert len(data_dirs) == 1  # the second run found the first run's state

"""The command one instance of a multi-instance task runs (semantics §3.5).

Every instance runs the coordination command first and fails with its exit code if it fails.
On success it leaves a marker (`COORDINATED`) in the task's folder, which the agent watches and
reports. The primary then waits until the agent has put `ALL_COORDINATED` there (the control
plane said every instance has coordinated) and becomes the task's command line (`exec`: the
same process, so the wall-clock limit, the kill and the exit code are the task's own). A subtask
holds its node until the agent kills its process group (when the primary ends): whatever the
coordination command left running in the background (an MPI daemon, say) lives that long and no
longer.

Both command lines are split as every Shoal command line is (`shlex`, no shell) and each word
is quoted again for `/bin/sh`, which only sequences them: no variable of either is expanded. The
sequencing runs in `/bin/sh` rather than a Python helper because it runs as the task's user,
who may not be able to read the agent's interpreter.
"""

from __future__ import annotations

import shlex

SHELL = "/bin/sh"
# Markers in the task's folder (AZ_BATCH_TASK_DIR), beside stdout.txt.
COORDINATED = ".shoal-coordinated"
ALL_COORDINATED = ".shoal-all-coordinated"
# A subtask waits in the shell itself, woken only by the kill of its process group.
_HOLD = "while :; do sleep 3600; done"
# How often the primary looks for ALL_COORDINATED.
_POLL_S = 0.1


def command_line(coordination: str, application: str | None, task_dir: str) -> str:
    """The command line of an instance: `application` is the primary's (None on a subtask).
    Raises ValueError when a command line cannot be split or is empty."""
    folder = shlex.quote(task_dir)
    script = f"{_quoted(coordination)} || exit $?; : > {folder}/{COORDINATED}; " + (
        _HOLD if application is None else
        f"while [ ! -e {folder}/{ALL_COORDINATED} ]; do sleep {_POLL_S}; done; exec {_quoted(application)}")
    return shlex.join([SHELL, "-c", script])


def _quoted(line: str) -> str:
    words = shlex.split(line)
    if not words:
        raise ValueError("the command line is empty")
    return shlex.join(words)

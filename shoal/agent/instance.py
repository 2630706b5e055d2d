"""One instance of a multi-instance task, run as the task's user in the task's process group
(`python -m shoal.agent.instance`; semantics §3.5).

Every instance runs the coordination command first and fails with its exit code if it fails.
The primary then becomes the task's command line (exec: same process, so the wall-clock limit,
the kill and the exit code are the task's own). A subtask then holds its node until the agent
kills it (when the primary ends): whatever the coordination command left running in the
background (an MPI daemon, say) lives that long, and no longer.

The command lines come in the environment, not argv, so neither can push the other past the
command-line limit; both variables are removed before anything runs.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

COORDINATION_VARIABLE = "SHOAL_INSTANCE_COORDINATION"
APPLICATION_VARIABLE = "SHOAL_INSTANCE_APPLICATION"
# What a shell answers for a program it cannot find or run.
NOT_FOUND_EXIT_CODE = 127


def _argv(command_line: str, what: str) -> list[str] | None:
    try:
        args = shlex.split(command_line)
    except ValueError as exc:
        print(f"shoal: cannot parse the {what}: {exc}", file=sys.stderr, flush=True)
        return None
    if not args:
        print(f"shoal: the {what} is empty", file=sys.stderr, flush=True)
        return None
    return args


def main() -> int:
    coordination = os.environ.pop(COORDINATION_VARIABLE, "")
    application = os.environ.pop(APPLICATION_VARIABLE, None)
    args = _argv(coordination, "coordination command line")
    if args is None:
        return NOT_FOUND_EXIT_CODE
    try:
        code = subprocess.call(args)
    except OSError as exc:
        print(f"shoal: cannot run the coordination command line: {exc}", file=sys.stderr, flush=True)
        return NOT_FOUND_EXIT_CODE
    if code != 0:
        # A signal's death reads as 128 + N, as the agent reports a killed task.
        return code if code > 0 else 128 - code
    if application is None:
        # A subtask: hold the node until the agent ends the instance (SIGTERM, then SIGKILL).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            signal.pause()
    args = _argv(application, "command line")
    if args is None:
        return NOT_FOUND_EXIT_CODE
    sys.stdout.flush()
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        print(f"shoal: cannot run the command line: {exc}", file=sys.stderr, flush=True)
    return NOT_FOUND_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())

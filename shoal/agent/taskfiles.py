"""A task's resource files and output files, on the agent's side: the transfer process
(shoal/agent/transfer.py) is started as the task's user with the request on stdin, and its
answer becomes the attempt's failureInfo. The agent itself never opens a file in a folder the
task's user controls, and the request (SAS URLs included) never appears on a command line,
where other users could read it in /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import signal
import sys
from typing import Any

from shoal.agent.layout import SYSTEM_CA_BUNDLE
from shoal.agent.process import USER_ERROR, Failure

log = logging.getLogger("shoal.agent.taskfiles")

TRANSFER_TIMEOUT_S = 6 * 3600.0
"""The longest a transfer may take before it is killed (a stuck server must not hold a slot forever)."""
_MAX_ANSWER_BYTES = 64 * 1024
_INHERITED = ("PATH", "PYTHONPATH", "LANG", "LC_ALL")


def _environment() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name in _INHERITED}
    # The task's user may not read the interpreter's own CA bundle; the system's is public.
    if os.path.exists(SYSTEM_CA_BUNDLE):
        env.setdefault("SSL_CERT_FILE", SYSTEM_CA_BUNDLE)
        env.setdefault("REQUESTS_CA_BUNDLE", SYSTEM_CA_BUNDLE)
    return env


def _identity_args(user: pwd.struct_passwd | None) -> list[str]:
    """The transfer starts as the agent and drops to ``user`` itself once it has loaded its code
    (as the spawner does): the interpreter may live where the task's user cannot read."""
    if user is None or (user.pw_uid == os.geteuid() and user.pw_gid == os.getegid()):
        return []
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    return [str(user.pw_uid), str(user.pw_gid), ",".join(str(g) for g in groups)]


async def transfer(request: dict[str, Any], folder: str, user: pwd.struct_passwd | None,
                   code_if_broken: str, code_if_timed_out: str) -> Failure | None:
    """Run one transfer in ``folder`` as ``user``; the failure it ends with, or None. It never
    raises but when cancelled (the attempt was killed): then its process group is killed first."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return Failure(USER_ERROR, code_if_broken, f"The task folder cannot be opened: {exc.strerror}")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoal.agent.transfer", str(dir_fd), *_identity_args(user),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd="/", env=_environment(), start_new_session=True, pass_fds=(dir_fd,))
    except OSError as exc:
        return Failure(USER_ERROR, code_if_broken, f"The node could not start a transfer: {exc.strerror}")
    finally:
        os.close(dir_fd)
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), TRANSFER_TIMEOUT_S)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            return Failure(USER_ERROR, code_if_timed_out,
                           f"The transfer did not finish within {TRANSFER_TIMEOUT_S:.0f} s")
        raise
    try:
        answer = json.loads(out[:_MAX_ANSWER_BYTES])
        failure = answer["failure"]
        if failure is None:
            return None
        return Failure(USER_ERROR, str(failure["code"])[:256], str(failure["message"])[:4000])
    except (ValueError, KeyError, TypeError):
        # stderr may hold a traceback with a URL in it: only its size reaches the log.
        log.warning("the transfer process ended with %s and no answer (%d bytes on stderr)",
                    proc.returncode, len(err))
        return Failure(USER_ERROR, code_if_broken, "The node could not transfer the task's files")


async def download(resource_files: list[dict[str, Any]], working_dir: str,
                   user: pwd.struct_passwd | None) -> Failure | None:
    return await transfer({"op": "download", "resourceFiles": resource_files}, working_dir, user,
                          "BlobDownloadMiscError", "BlobDownloadTimedOut")


async def upload(output_files: list[dict[str, Any]], task_dir: str, env: dict[str, str],
                 exit_code: int | None, user: pwd.struct_passwd | None) -> Failure | None:
    return await transfer({"op": "upload", "taskDir": task_dir, "environment": env, "exitCode": exit_code,
                           "outputFiles": output_files}, task_dir, user, "FileUploadMiscError", "FileUploadMiscError")

"""What every CLI command that calls the server shares: a client for the data dir's account,
and one-line errors with a hint instead of tracebacks."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from shoal.errors import BatchError

console = Console()


def client_for(data_dir: Path | None):  # type: ignore[no-untyped-def]
    from shoal.cli.client import BatchClient
    from shoal.cli.config import resolve_account

    return or_exit(lambda: BatchClient(resolve_account(data_dir)))


def or_exit(action):  # type: ignore[no-untyped-def]
    try:
        return action()
    except BatchError as error:
        hint = _HINTS.get(error.code)
        console.print(f"[red]error[/red] {error.code}: {error.message}" + (f"\n  hint: {hint}" if hint else ""),
                      highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


# What to do next, for the errors a CLI user meets first.
_HINTS = {
    "AuthenticationFailed": "the key the CLI used (the data dir's endpoint.json, or $AZURE_BATCH_ACCESS_KEY) is not "
                            "this server's: pass the right --data-dir, or unset AZURE_BATCH_*",
    "PoolNotFound": "`shoal pool list` shows the pools there are",
    "JobNotFound": "`shoal job list` shows the jobs there are",
    "NodeNotFound": "`shoal node list POOL_ID` shows a pool's nodes",
    "TaskNotFound": "`shoal task list JOB_ID` shows a job's tasks",
}

"""The Shoal node agent: runs the start task and tasks on one compute node (see README.md)."""

import sys

# Every node process (the agent, its transfer, watchdog and spawner processes, each started as
# `python -m shoal.agent…`) pays for what it imports, once per node or once per task. httpx
# imports its command-line client (rich, click, pygments: ~0.7 s and ~5 MiB) whenever those are
# installed, and uvicorn its file watcher for --reload; no node process uses either, and both
# packages carry on without them (they catch the ImportError a None entry raises).
for _unused in ("httpx._main", "watchfiles"):
    sys.modules.setdefault(_unused, None)  # type: ignore[arg-type]

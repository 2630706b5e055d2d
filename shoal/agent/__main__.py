"""``python -m shoal.agent``: run a node agent."""

import sys

# An agent runs on every node, so what it imports it pays per node. httpx imports its command-line
# client (rich, click, pygments) whenever those are installed, and uvicorn its file watcher for
# --reload; an agent uses neither, and both packages carry on without them (they catch the
# ImportError a None entry raises). About 5 MiB of each agent's memory (bench/nodes.py).
for unused in ("httpx._main", "watchfiles"):
    sys.modules.setdefault(unused, None)  # type: ignore[arg-type]

from shoal.agent.cli import cli_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(cli_main())

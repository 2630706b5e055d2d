"""``python -m shoal.agent``: run a node agent."""

from shoal.agent.cli import cli_main

if __name__ == "__main__":
    raise SystemExit(cli_main())

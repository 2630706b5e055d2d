"""Command-line entry of the node agent (``python -m shoal.agent`` and ``shoal agent``).

The node token never sits in the agent's environment, where ``/proc/<pid>/environ`` would keep
it for the agent's whole life: the local provider writes it to the agent's stdin
(``--token-stdin``), and ``--token-file`` reads it from a file that is deleted once read.
``--token`` and ``$SHOAL_NODE_TOKEN`` remain for agents started by hand; they are visible to
the agent's own user (and ``--token`` to everyone, through ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from shoal.agent.main import ORPHAN_TIMEOUT_S, run_agent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal agent", description="Run a Shoal node agent.")
    parser.add_argument("--join", required=True, help="control plane base URL")
    parser.add_argument("--pool", required=True, help="pool id")
    parser.add_argument("--node-id", help="node id (omit to register with --join-token)")
    parser.add_argument("--token-stdin", action="store_true",
                        help="read the node token from the first line of stdin (how providers pass it)")
    parser.add_argument("--token-file", help="read the node token from this file, then delete the file")
    parser.add_argument(
        "--token",
        default=os.environ.get("SHOAL_NODE_TOKEN"),
        help="node token, for agents started by hand (default $SHOAL_NODE_TOKEN); prefer --token-file",
    )
    parser.add_argument("--join-token", help="pool join token, for an agent started by hand")
    parser.add_argument("--root", required=True, help="node root directory (AZ_BATCH_NODE_ROOT_DIR)")
    parser.add_argument("--files-host", default="127.0.0.1", help="address the node file server binds")
    parser.add_argument(
        "--orphan-timeout",
        type=float,
        default=ORPHAN_TIMEOUT_S,
        help="seconds without reaching the control plane before killing tasks and exiting",
    )
    parser.add_argument("--ca-file", help="CA certificate (PEM) to trust for an https control plane "
                                           "(`shoal up --tls` prints its path)")
    parser.add_argument("--log-level", default=os.environ.get("SHOAL_LOG_LEVEL", "INFO"))
    return parser


def read_token(args: argparse.Namespace) -> str | None:
    """The node token from stdin, a file or the fallbacks; none of it stays in the environment."""
    os.environ.pop("SHOAL_NODE_TOKEN", None)
    if args.token_stdin:
        token = sys.stdin.readline().strip()
        # Nothing else comes on stdin; a task must never inherit the pipe.
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        return token or None
    if args.token_file:
        path = Path(args.token_file)
        try:
            token = path.read_text().strip()
        finally:
            path.unlink(missing_ok=True)
        return token or None
    return args.token or None


def cli_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.token = read_token(args)
    if args.node_id and not args.token:
        raise SystemExit("a node token (--token-stdin, --token-file or --token) is required with --node-id")
    if not args.node_id and not args.join_token:
        raise SystemExit("either --node-id/--token or --join-token is required")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The server runs with umask 077 and agents inherit it; tasks get the usual 022 instead, so
    # what a start task installs is readable by the pool's users (its folders set who may enter).
    os.umask(0o022)
    return asyncio.run(
        run_agent(
            args.join,
            args.pool,
            args.node_id,
            args.token,
            args.root,
            files_host=args.files_host,
            join_token=args.join_token,
            orphan_timeout_s=args.orphan_timeout,
            ca_file=args.ca_file,
        )
    )

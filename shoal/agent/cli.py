"""Command-line entry of the node agent (``python -m shoal.agent`` and ``shoal agent``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Sequence

from shoal.agent.main import ORPHAN_TIMEOUT_S, run_agent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal agent", description="Run a Shoal node agent.")
    parser.add_argument("--join", required=True, help="control plane base URL")
    parser.add_argument("--pool", required=True, help="pool id")
    parser.add_argument("--node-id", help="node id (omit to register with --join-token)")
    parser.add_argument(
        "--token",
        default=os.environ.get("SHOAL_NODE_TOKEN"),
        help="node token (required with --node-id; default $SHOAL_NODE_TOKEN, which keeps it out of ps)",
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
    parser.add_argument("--log-level", default=os.environ.get("SHOAL_LOG_LEVEL", "INFO"))
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.node_id and not args.token:
        raise SystemExit("--token is required with --node-id")
    if not args.node_id and not args.join_token:
        raise SystemExit("either --node-id/--token or --join-token is required")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
        )
    )

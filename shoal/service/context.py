"""What every service function needs: the store, the account, and the signals to the loops."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from shoal.service.folder_orders import FolderOrders
from shoal.store.sealing import Sealer
from shoal.timebase import TimeBase


def _noop(*_args: object) -> None:
    return None


@dataclass
class Signals:
    """Wake-ups from the request path to the background loops; cheap, never block."""

    wake_scheduler: Callable[[], None] = _noop
    wake_node: Callable[[str], None] = _noop
    wake_provider: Callable[[], None] = _noop


@dataclass
class Context:
    engine: Engine
    account: str
    signals: Signals = field(default_factory=Signals)
    # The externally visible base URL of the account endpoint, for `url` and `odata` fields.
    base_url: str = "http://127.0.0.1"
    # The timeline autoscale runs on (scaled with `shoal up --time-scale`).
    timebase: TimeBase = field(default_factory=TimeBase)
    # How long a metric sample takes to become visible to formulas (Batch: about a minute).
    sample_lag: timedelta = timedelta(0)
    # Latest resource readings per node, as agents report them: a cache; the durable record is
    # the metric_samples table the sampler writes every sample period.
    node_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Folder deletions ordered to nodes and not yet acknowledged (touched only on the loop).
    folder_orders: FolderOrders = field(default_factory=FolderOrders)
    # How many spot nodes the machine can hold at once (None: no limit); scarce capacity keeps
    # pools below their spot target, as on Azure.
    spot_capacity: int | None = None
    # Whether a provider runs the nodes' agents, and so can stop and start a node's "VM"
    # (deallocate/start): not on a server whose agents join by hand.
    provider_runs_nodes: bool = True
    # Hourly prices per VM size (shoal/service/prices.py) for the dashboard's usage page: the
    # data dir's prices.json, read when the page is shown (None: no prices).
    prices_file: Path | None = None
    # Seals the secrets the store keeps whole (certificates' pfx and password) when a secrets
    # key is configured, and opens them for the nodes that install them.
    sealer: Sealer = field(default_factory=Sealer)

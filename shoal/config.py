"""Settings and named defaults. The environment is read here and nowhere else (prefix SHOAL_)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from shoal.autoscale.samples import SAMPLE_LAG

MAX_RESULTS_DEFAULT = 1000
MAX_TASKS_PER_COLLECTION = 100
MAX_COLLECTION_BODY_BYTES = 1024 * 1024
# Batch refuses request bodies over 1 MB (413 RequestBodyTooLarge).
MAX_BODY_BYTES = 1024 * 1024

HEARTBEAT_TIMEOUT_S = 30.0
# Batch's metric samples reach formulas about a minute late (semantics §1.7).
SAMPLE_LAG_S = SAMPLE_LAG.total_seconds()
AGENT_POLL_TIMEOUT_S = 15.0
SCHEDULER_IDLE_WAKE_S = 1.0
PROVIDER_RECONCILE_S = 0.5
# Who brings node records up under `shoal up`: an agent process per node, or simulated agents
# (shoal/providers/sim.py) for scale tests.
PROVIDERS = ("local", "sim")


DEFAULT_PORT = 8580


def default_port() -> int:
    """The API port: $SHOAL_PORT (0 picks a free one), else DEFAULT_PORT."""
    explicit = os.environ.get("SHOAL_PORT")
    return int(explicit) if explicit else DEFAULT_PORT


def default_data_dir() -> Path:
    explicit = os.environ.get("SHOAL_DATA_DIR")
    if explicit:
        return Path(explicit)
    from platformdirs import user_data_dir

    return Path(user_data_dir("shoal", appauthor=False))


# In the data dir: where the server is and the account's name and keys, written 0600 at each start
# (server/startup.py) and read by the CLI and the test harness in place of the database.
ENDPOINT_FILE = "endpoint.json"
# In the data dir: the lock the one server holds for its life, with its pid in it (`shoal down`).
LOCK_FILE = "shoal.lock"
# In the data dir (0600): the bearer token `/metrics` is scraped with (Prometheus' credentials_file).
METRICS_TOKEN_FILE = "metrics-token"


# Where node roots live when Shoal runs as root. They cannot live in the data directory, which is
# private (0700): a task's user must be able to reach its own folder. Node ids are unique, so
# every server on the machine can share this parent; each gets a subfolder for its data dir.
SYSTEM_NODES_DIR = Path("/var/lib/shoal/nodes")


def default_nodes_dir(data_dir: Path) -> Path:
    """Node roots: $SHOAL_NODES_DIR, else beside other servers' under /var/lib when root (so task
    users can reach them), else inside the data dir (no other user runs tasks then)."""
    explicit = os.environ.get("SHOAL_NODES_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() != 0:
        return data_dir / "nodes"
    digest = hashlib.sha256(str(Path(data_dir).absolute()).encode()).hexdigest()[:16]
    return SYSTEM_NODES_DIR / digest


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _path_env(name: str) -> Path | None:
    raw = os.environ.get(name)
    return Path(raw) if raw else None


@dataclass
class Settings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    database_url: str | None = None
    heartbeat_timeout_s: float = field(default_factory=lambda: _float_env("SHOAL_HEARTBEAT_TIMEOUT_S", HEARTBEAT_TIMEOUT_S))
    time_scale: float = 1.0
    # Spot capacity of this machine (None: unlimited), evictions per spot node-hour (scaled
    # timeline), and how long a preempted node waits for capacity to come back.
    spot_capacity: int | None = None
    spot_eviction_rate: float = 0.0
    spot_recovery_s: float = 300.0
    # Seconds (on the scaled timeline) before a metric sample is visible to formulas.
    sample_lag_s: float = field(default_factory=lambda: _float_env("SHOAL_SAMPLE_LAG_S", SAMPLE_LAG_S))
    poll_timeout_s: float = field(default_factory=lambda: _float_env("SHOAL_AGENT_POLL_TIMEOUT_S", AGENT_POLL_TIMEOUT_S))
    nodes_dir: Path | None = None
    provider: str = "local"
    # Serve https with a certificate Shoal makes and signs with a CA of its own (server/tls.py).
    tls: bool = False
    # The URL tokens name as their issuer and the discovery document as the token endpoint's
    # base: the server's own endpoint unless given (replicas behind one address share it).
    authority: str | None = None
    # The simulated provider's nodes share batch-sync calls (shoal/providers/sim_batch.py);
    # SHOAL_SIM_BATCH_SYNCS=0 makes each sync its own call, as real agents make them.
    # The server's log (shoal/logs.py): a level of logs.LEVELS, a format of logs.FORMATS.
    log_level: str = field(default_factory=lambda: os.environ.get("SHOAL_LOG_LEVEL", "info"))
    log_format: str = field(default_factory=lambda: os.environ.get("SHOAL_LOG_FORMAT", "text"))
    # The key the store's secrets are sealed with (store/sealing.py); None: kept as given.
    secrets_key_file: Path | None = field(default_factory=lambda: _path_env("SHOAL_SECRETS_KEY_FILE"))
    sim_batch_syncs: bool = field(default_factory=lambda: os.environ.get("SHOAL_SIM_BATCH_SYNCS", "1") != "0")

    @property
    def effective_nodes_dir(self) -> Path:
        return self.nodes_dir or default_nodes_dir(self.data_dir)

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'shoal.db'}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or os.environ.get("SHOAL_DATABASE_URL") or self.sqlite_url


# Where the account sits in ARM's tree, for role assignment scopes and the management API
# (shoal/api/management.py): its one account lives in one subscription and resource group.
DEFAULT_SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
DEFAULT_RESOURCE_GROUP = "shoal"


def account_scope(account: str) -> str:
    """The account's ARM resource id: $SHOAL_SUBSCRIPTION_ID and $SHOAL_RESOURCE_GROUP, else the
    defaults above. Role assignments at it, its resource group or its subscription apply to it."""
    subscription = os.environ.get("SHOAL_SUBSCRIPTION_ID") or DEFAULT_SUBSCRIPTION_ID
    group = os.environ.get("SHOAL_RESOURCE_GROUP") or DEFAULT_RESOURCE_GROUP
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Batch/batchAccounts/{account}"


def auto_storage_connection_string() -> str | None:
    """The connection string of the account's linked ("auto") storage account, for
    `autoStorageContainerName` sources: $SHOAL_AUTO_STORAGE (`shoal up --auto-storage` sets it);
    None when the account has none."""
    return os.environ.get("SHOAL_AUTO_STORAGE") or None

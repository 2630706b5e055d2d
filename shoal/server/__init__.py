"""The control plane process (`shoal up`, `shoal server`).

- `startup`: the private data dir, one server per data dir and per database, the account, the socket;
- `plane`: wiring: store, API, provider, and the background duties, then serving;
- one module per background duty: `scheduling` (placement passes), `lifecycle` (allocation,
  silent nodes, spot recovery, job completion and limits, node operations, folder removal),
  `sampling` (metric samples), `autoscaling` (formula evaluations), `provisioning` (the provider),
  `schedules` (the jobs of job schedules that are due).
"""

from shoal.server.plane import ControlPlane, run
from shoal.server.startup import DEFAULT_ACCOUNT, AlreadyRunning, CannotStart, ensure_account

__all__ = ["DEFAULT_ACCOUNT", "AlreadyRunning", "CannotStart", "ControlPlane", "ensure_account", "run"]

"""The node's application packages over its life: the pool's, installed at each boot before
the start task and any task (their outcome reported to the control plane, which holds the node
in `starting` until then and makes it `unusable` when they fail), and a task's own, installed
just before it runs (a failure fails the task with `ApplicationPackageError`). Unpacking runs in
a thread (shoal/agent/packages.py); one version is unpacked once even when many tasks ask at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.agent import packages

log = logging.getLogger(__name__)

PACKAGE_ERROR = "ApplicationPackageError"
"""The failureInfo code of a task whose packages could not be installed (semantics §3.1)."""


class NodeApplications:
    def __init__(self, root: Path, on_news: Callable[[], None]) -> None:
        self.root = root
        self._on_news = on_news
        self._locks: dict[str, asyncio.Lock] = {}
        self._pool: asyncio.Task[bool] | None = None
        # The variables naming the pool's packages, for the start task and every task.
        self.pool_env: dict[str, str] = {}
        self.pool_failure: str | None = None
        self._report: dict[str, Any] | None = None
        self._report_version = 0
        self._delivered = 0

    # ---- the pool's packages, at boot ---------------------------------------------------------

    def boot(self, entries: Any) -> None:
        """A hello's packages: installed from now on, reported when done."""
        self.stop()
        self.pool_env, self.pool_failure = {}, None
        self._report, self._report_version, self._delivered = None, 0, 0
        if entries:
            self._pool = asyncio.ensure_future(self._install_pool(entries))

    def stop(self) -> None:
        if self._pool is not None and not self._pool.done():
            self._pool.cancel()
        self._pool = None

    async def _install_pool(self, entries: Any) -> bool:
        try:
            self.pool_env = await self.install(entries)
            self._set_report({"state": "installed"})
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the package, the agent lives on
            message = str(exc) if isinstance(exc, packages.PackageError) else \
                f"the packages could not be installed ({type(exc).__name__})"
            log.error("the pool's application packages failed: %s", message)
            self.pool_failure = message
            self._set_report({"state": "failed", "failure": {"code": PACKAGE_ERROR, "message": message[:2000]}})
            return False

    async def pool_ready(self) -> bool:
        """Wait for the pool's packages; False when they failed (nothing may run then)."""
        if self._pool is None:
            return self.pool_failure is None
        try:
            return await asyncio.shield(self._pool)
        except asyncio.CancelledError:
            if self._pool is not None and self._pool.cancelled():
                return False
            raise

    def _set_report(self, report: dict[str, Any]) -> None:
        self._report = report
        self._report_version += 1
        self._on_news()

    def has_news(self) -> bool:
        return self._report_version != self._delivered

    def unsent(self) -> tuple[dict[str, Any] | None, int]:
        """The report a sync carries (None when delivered), and its version."""
        return (self._report if self.has_news() else None), self._report_version

    def delivered(self, version: int) -> None:
        self._delivered = max(self._delivered, version)

    # ---- any packages ---------------------------------------------------------------------------

    async def install(self, entries: Any) -> dict[str, str]:
        """Install these packages (each once per node and upload); the variables naming them.
        PackageError when one cannot be installed."""
        wanted = packages.parse(entries)
        installed = []
        for package in wanted:
            # Shielded: a task killed while its package unpacks does not release the folder's
            # lock before the unpacking thread is done with it.
            work = asyncio.ensure_future(self._install_one(package))
            work.add_done_callback(_retrieve)
            installed.append((package, await asyncio.shield(work)))
        return packages.environment(installed)

    async def _install_one(self, package: packages.Package) -> Path:
        async with self._locks.setdefault(package.folder_name.lower(), asyncio.Lock()):
            try:
                return await asyncio.to_thread(packages.install, self.root, package)
            except OSError as exc:
                raise packages.PackageError(
                    f"Application package {package.application_id} version {package.version} could not be "
                    f"installed: {exc.strerror or type(exc).__name__}.") from exc


def _retrieve(done: asyncio.Future[Any]) -> None:
    """An install nobody awaits any more (its task was killed) ends quietly."""
    if not done.cancelled():
        done.exception()

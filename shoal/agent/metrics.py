"""Resource readings the agent reports for autoscale ($CPUPercent, memory, disk, network).

A local node shares its machine with others, so these are the machine's figures; on a real
host (or a pod) they are the node's own. Counters (disk and network bytes and operations) are
reported as the change since the previous reading, as Batch's per-sample metrics are.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

# How often readings ride along with a sync; autoscale samples every 30 s.
READING_INTERVAL_S = 5.0


class ResourceMeter:
    def __init__(self, root: str) -> None:
        self.root = root
        self.started = time.monotonic()
        self._last_at = 0.0
        self._last_counters: dict[str, float] | None = None
        psutil.cpu_percent(None)  # the first call only primes the counter

    def due(self) -> bool:
        return time.monotonic() - self._last_at >= READING_INTERVAL_S

    def _counters(self) -> dict[str, float]:
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        out: dict[str, float] = {}
        if disk is not None:
            out.update(diskReadBytes=disk.read_bytes, diskWriteBytes=disk.write_bytes,
                       diskReadOps=disk.read_count, diskWriteOps=disk.write_count)
        if net is not None:
            out.update(networkInBytes=net.bytes_recv, networkOutBytes=net.bytes_sent)
        return out

    def reading(self) -> dict[str, Any]:
        self._last_at = time.monotonic()
        counters = self._counters()
        previous = self._last_counters or counters
        self._last_counters = counters
        try:
            disk_used = psutil.disk_usage(self.root).used
        except OSError:  # the node root is not there yet
            disk_used = 0
        out: dict[str, Any] = {
            "cpuPercent": psutil.cpu_percent(None),
            "memoryMiB": psutil.virtual_memory().used / 2**20,
            "diskGiB": disk_used / 2**30,
            "wallClockSeconds": time.monotonic() - self.started,
        }
        out.update({key: max(0.0, value - previous.get(key, value)) for key, value in counters.items()})
        return out

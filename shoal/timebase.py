"""Scaled time for the timers users want to test (beyond Azure): `shoal up --time-scale K`.

With K > 1, every timer that models Batch's slow cadences (autoscale intervals, metric sample
periods, spot eviction schedules) runs K times faster, on a virtual timeline that starts at the
moment the server starts: virtual_now = start + K × (real_now − start). Samples are stamped and
formulas evaluated on that timeline, so a formula's `TimeInterval_Minute * 5` still spans ten
30-second samples. Task, node and request timestamps stay on real time.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta


class TimeBase:
    def __init__(self, scale: float = 1.0, *, origin: datetime | None = None) -> None:
        if scale <= 0:
            raise ValueError("the time scale must be positive")
        self.scale = scale
        self._origin_wall = origin or datetime.now(UTC)
        self._origin_mono = time.monotonic()

    def now(self) -> datetime:
        elapsed = time.monotonic() - self._origin_mono
        return self._origin_wall + timedelta(seconds=elapsed * self.scale)

    def real_seconds(self, virtual: timedelta | float) -> float:
        seconds = virtual.total_seconds() if isinstance(virtual, timedelta) else float(virtual)
        return seconds / self.scale

    async def sleep(self, virtual: timedelta | float) -> None:
        await asyncio.sleep(self.real_seconds(virtual))

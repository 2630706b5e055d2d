"""What a provider is: something that turns node records into running agents.

Providers only provision (ARCHITECTURE.md). They read the node records the control plane keeps,
start an agent for each node that needs one, stop agents of nodes that left, and report agents
they lose. They never schedule.
"""

from __future__ import annotations

from typing import Protocol


class Provider(Protocol):
    # Seconds between passes when nothing wakes the provider. Every change a provider acts on
    # wakes it; what it must notice unprompted (an agent process that died) sets how often.
    reconcile_interval_s: float

    async def reconcile(self) -> None:
        """Make running agents match the node records; called often and on wake-ups."""

    async def shutdown(self, *, stop_agents: bool) -> None:
        """Release what the provider holds; with stop_agents, end every agent it started."""

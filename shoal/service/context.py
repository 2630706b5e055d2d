"""What every service function needs: the store, the account, and the signals to the loops."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine


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

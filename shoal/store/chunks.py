"""Long IN lists, cut into pieces every backend binds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# A pass over 10,000 4-slot nodes places 40,000 tasks: IN lists go in chunks, well under the bound
# parameter limits of SQLite (32,766) and PostgreSQL (65,535).
IN_CHUNK = 5_000


def in_chunks(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]

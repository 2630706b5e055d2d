"""Azure RBAC's evaluation, pure: which operations a set of role assignments allows.

An operation is an action (a management operation: `Microsoft.Batch/batchAccounts/pools/write`)
or a data action (`Microsoft.Batch/batchAccounts/jobs/write`). A role grants an action when one
of its `actions` matches it and none of its own `notActions` does (data actions likewise); a
`notActions` entry only narrows its own role, it is not a deny: another role may still grant the
same operation. Patterns match without regard to case, and `*` stands for any run of characters,
`/` included (`Microsoft.Batch/*/read` matches `Microsoft.Batch/batchAccounts/pools/read`).

Scopes are ARM resource ids; an assignment applies to its scope and everything beneath it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

ACTION, DATA_ACTION = "action", "dataAction"
# Batch's catch-alls (Azure Batch documents them for custom roles): the account's read action
# allows any read operation, and listing its keys allows any operation at all, since whoever
# can read the keys can sign any request with Shared Key.
ACCOUNT_READ = "Microsoft.Batch/batchAccounts/read"
LIST_KEYS = "Microsoft.Batch/batchAccounts/listKeys/action"
BATCH_NAMESPACE = "microsoft.batch/"


@dataclass(frozen=True)
class Operation:
    """What one request needs: an action or a data action, and whether it only reads."""

    kind: str
    name: str

    @property
    def reads(self) -> bool:
        return self.name.lower().endswith("/read")


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.IGNORECASE | re.DOTALL)


def matches(pattern: str, operation: str) -> bool:
    """Whether an `actions`-style pattern covers an operation name."""
    return _compiled(pattern).fullmatch(operation) is not None


def _any(patterns: Iterable[str], operation: str) -> bool:
    return any(matches(pattern, operation) for pattern in patterns)


@dataclass(frozen=True)
class Grant:
    """One role's permissions (its actions, notActions, dataActions and notDataActions)."""

    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()

    def allows(self, kind: str, name: str) -> bool:
        if kind == ACTION:
            return _any(self.actions, name) and not _any(self.not_actions, name)
        return _any(self.data_actions, name) and not _any(self.not_data_actions, name)


@dataclass
class EffectivePermissions:
    """Everything one principal's assignments grant at one scope. Decisions are remembered:
    a principal asks for a handful of distinct operations, each decided once."""

    grants: tuple[Grant, ...] = ()
    _decided: dict[Operation, bool] = field(default_factory=dict, repr=False)

    def grants_operation(self, kind: str, name: str) -> bool:
        return any(grant.allows(kind, name) for grant in self.grants)

    def allows(self, operation: Operation) -> bool:
        decided = self._decided.get(operation)
        if decided is None:
            decided = self._decide(operation)
            self._decided[operation] = decided
        return decided

    def _decide(self, operation: Operation) -> bool:
        if self.grants_operation(operation.kind, operation.name):
            return True
        if not operation.name.lower().startswith(BATCH_NAMESPACE):
            return False
        if self.grants_operation(ACTION, LIST_KEYS):
            return True
        return operation.reads and self.grants_operation(ACTION, ACCOUNT_READ)


def within(scope: str, ancestor: str) -> bool:
    """Whether ``scope`` is ``ancestor`` or beneath it (ARM ids compare without case)."""
    scope, ancestor = scope.rstrip("/").lower(), ancestor.rstrip("/").lower()
    return ancestor == "" or scope == ancestor or scope.startswith(ancestor + "/")


def effective(assignments: Iterable[tuple[str, Grant]], scope: str) -> EffectivePermissions:
    """What the assignments (scope, role's grant) allow at ``scope``: those at it or above it."""
    return EffectivePermissions(tuple(grant for assigned, grant in assignments if within(scope, assigned)))

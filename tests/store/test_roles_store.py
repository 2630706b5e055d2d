"""Roles in a real store: built-ins written at start and corrected, Azure's limits, a principal's
permissions read through its own index, and assignments gone with their principal."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from shoal.errors import BatchError
from shoal.service import principals, roles
from shoal.service.builtin_roles import BUILTIN_ROLES
from shoal.service.permissions import DATA_ACTION, Operation
from shoal.store.schema import role_assignments, role_definitions
from tests.helpers import sqlite_plan, store_context

JOBS_WRITE = Operation(DATA_ACTION, "Microsoft.Batch/batchAccounts/jobs/write")


_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    url = (f"sqlite:///{tmp_path / 'shoal.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres").create_database(f"roles_{next(_names)}"))
    for context in store_context(url):
        with context.engine.begin() as conn:
            roles.ensure_builtin_roles(conn)
        yield context


def _role(name: str, *data_actions: str) -> dict[str, Any]:
    return {"properties": {"roleName": name, "permissions": [{"dataActions": list(data_actions)}]}}


def _assign(ctx: Any, principal: dict[str, Any], role: str) -> dict[str, Any]:
    return roles.assign(ctx, {"properties": {"principalId": principal["objectId"], "roleDefinitionId": role}})


def test_builtins_are_written_once_and_corrected(ctx: Any) -> None:
    with ctx.engine.begin() as conn:
        conn.execute(update(role_definitions).where(role_definitions.c.name == "Reader")
                     .values(permissions={"actions": ["*"]}))
        roles.ensure_builtin_roles(conn)
        rows = conn.execute(select(role_definitions)).all()
    assert len(rows) == len(BUILTIN_ROLES)
    reader = next(row for row in rows if row.name == "Reader")
    assert reader.permissions["actions"] == ["*/read"]


def test_a_principal_is_read_through_its_index(ctx: Any) -> None:
    from shoal.store.schema import role_assignments as table

    if ctx.engine.dialect.name == "sqlite":
        statement = select(table.c.scope).where(table.c.principal_id == "p")
        assert any("USING INDEX" in step for step in sqlite_plan(ctx.engine, statement))
    principal = principals.create_principal(ctx, {"displayName": "p"})
    assert not roles.grants_of(ctx, principal["objectId"]).allows(JOBS_WRITE)
    _assign(ctx, principal, "Azure Batch Job Submitter")
    assert roles.grants_of(ctx, principal["objectId"]).allows(JOBS_WRITE)


def test_limits_of_custom_roles_and_assignments(ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roles, "MAX_CUSTOM_ROLES", 2)
    monkeypatch.setattr(roles, "MAX_ROLE_ASSIGNMENTS", 1)
    roles.create_role(ctx, _role("one", "*"))
    roles.create_role(ctx, _role("two", "*"))
    with pytest.raises(BatchError) as refused:
        roles.create_role(ctx, _role("three", "*"))
    assert refused.value.code == "RoleDefinitionLimitExceeded"
    first = principals.create_principal(ctx, {"displayName": "first"})
    second = principals.create_principal(ctx, {"displayName": "second"})
    _assign(ctx, first, "one")
    with pytest.raises(BatchError) as full:
        _assign(ctx, second, "one")
    assert full.value.code == "RoleAssignmentLimitExceeded"


def test_assignments_go_with_their_principal(ctx: Any) -> None:
    principal = principals.create_principal(ctx, {"displayName": "leaving"})
    _assign(ctx, principal, "Reader")
    principals.delete_principal(ctx, principal["clientId"])
    with ctx.engine.connect() as conn:
        assert conn.execute(select(role_assignments)).all() == []
    assert roles.list_assignments(ctx) == []

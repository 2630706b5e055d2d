"""Resource groups (Microsoft.Resources) of the management API: a name, a location and tags per
subscription. The account's own group (shoal/config.py account_scope) is made at start-up and
cannot be deleted while it holds the account, which Shoal cannot delete.

Names follow ARM: 1–90 characters, each a letter or digit (any script), `_`, `-`, `.`, `(` or
`)`, and not ending in `.`; they compare without case and keep the case they were made with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update

from shoal import clock, config
from shoal.errors import BatchError
from shoal.service.context import Context
from shoal.store.schema import resource_groups

MAX_NAME_CHARS = 90
# \w is Unicode letters, digits and `_`, as ARM allows; the rest are the punctuation it allows.
_NAME = re.compile(r"[\w\-.()]+")
MAX_LOCATION_CHARS = 64
_LOCATION = re.compile(r"[A-Za-z0-9 ]+")
# ARM's limits on tags: 50 per resource, names up to 512 characters, values up to 256.
MAX_TAGS, MAX_TAG_NAME_CHARS, MAX_TAG_VALUE_CHARS = 50, 512, 256


class ManagementError(BatchError):
    """A refusal the management API answers with ARM's code (its status travels with it)."""


@dataclass(frozen=True)
class ResourceGroup:
    subscription: str
    name: str
    location: str
    tags: dict[str, str]
    created: datetime


def check_name(name: str) -> str:
    if not (1 <= len(name) <= MAX_NAME_CHARS) or not _NAME.fullmatch(name) or name.endswith("."):
        raise ManagementError(f"Resource group '{name[:MAX_NAME_CHARS]}' is not valid: a name is 1 to 90 letters, "
                              f"digits, '_', '-', '.', '(' or ')', and does not end with '.'.",
                              code="InvalidResourceGroupName", status=400)
    return name


def parse_body(body: Any) -> tuple[str, dict[str, str]]:
    """The location and tags a PUT body gives; anything else it names is refused."""
    if not isinstance(body, dict):
        raise ManagementError("The request body must be a JSON object.", code="InvalidRequestContent", status=400)
    unknown = sorted(set(body) - {"location", "tags", "name", "id", "type", "properties"})
    if unknown:
        raise ManagementError(f"The property '{unknown[0][:64]}' is not served by Shoal's resource groups.",
                              code="InvalidRequestContent", status=400)
    location = body.get("location")
    if (not isinstance(location, str) or not location or len(location) > MAX_LOCATION_CHARS
            or not _LOCATION.fullmatch(location)):
        raise ManagementError("The property 'location' must be a location name (letters, digits, spaces).",
                              code="LocationRequired" if location is None else "InvalidRequestContent", status=400)
    tags = body.get("tags") or {}
    if (not isinstance(tags, dict) or len(tags) > MAX_TAGS
            or not all(isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= MAX_TAG_NAME_CHARS
                       and len(v) <= MAX_TAG_VALUE_CHARS and "\x00" not in k + v for k, v in tags.items())):
        raise ManagementError("The property 'tags' must be at most 50 string pairs (names up to 512 characters, "
                              "values up to 256).", code="InvalidTag", status=400)
    return location, tags


def _row(conn: Connection, subscription: str, name: str) -> Any:
    return conn.execute(select(resource_groups).where(resource_groups.c.subscription == subscription.lower(),
                                                      resource_groups.c.key == name.lower())).first()


def _group(row: Any) -> ResourceGroup:
    return ResourceGroup(row.subscription, row.name, row.location, dict(row.tags), row.created)


def get(ctx: Context, subscription: str, name: str) -> ResourceGroup | None:
    with ctx.engine.connect() as conn:
        row = _row(conn, subscription, name)
    return _group(row) if row is not None else None


def create_or_update(ctx: Context, subscription: str, name: str, body: Any) -> tuple[ResourceGroup, bool]:
    """The group after the PUT, and whether it was made by it (201) rather than updated (200).
    A group's location is fixed once made, as on ARM."""
    check_name(name)
    location, tags = parse_body(body)
    with ctx.engine.begin() as conn:
        row = _row(conn, subscription, name)
        if row is None:
            conn.execute(resource_groups.insert().values(subscription=subscription.lower(), key=name.lower(),
                                                         name=name, location=location, tags=tags,
                                                         created=clock.now()))
            return _group(_row(conn, subscription, name)), True
        if row.location.replace(" ", "").lower() != location.replace(" ", "").lower():
            raise ManagementError(f"Invalid resource group location '{location}'. The Resource group already "
                                  f"exists in location '{row.location}' in resource group '{row.name}'.",
                                  code="InvalidResourceGroupLocation", status=409)
        conn.execute(update(resource_groups).where(resource_groups.c.subscription == row.subscription,
                                                   resource_groups.c.key == row.key).values(tags=tags))
        return _group(_row(conn, subscription, name)), False


def delete_group(ctx: Context, subscription: str, name: str) -> None:
    account_subscription, account_group = account_parents(ctx.account)
    if subscription.lower() == account_subscription.lower() and name.lower() == account_group.lower():
        raise ManagementError(f"The resource group '{name}' holds the Batch account '{ctx.account}', which Shoal "
                              f"cannot delete.", code="ResourceGroupDeletionBlocked", status=409)
    with ctx.engine.begin() as conn:
        gone = conn.execute(delete(resource_groups).where(resource_groups.c.subscription == subscription.lower(),
                                                          resource_groups.c.key == name.lower())).rowcount
    if not gone:
        raise not_found(name)


def not_found(name: str) -> ManagementError:
    return ManagementError(f"Resource group '{name[:MAX_NAME_CHARS]}' could not be found.",
                           code="ResourceGroupNotFound", status=404)


def account_parents(account: str) -> tuple[str, str]:
    """The subscription and resource group the account lives in (shoal/config.py account_scope)."""
    parts = config.account_scope(account).split("/")
    return parts[2], parts[4]


def ensure_account_group(conn: Connection, account: str, location: str) -> None:
    """The account's own group, made at start-up (and for stores older than groups)."""
    subscription, group = account_parents(account)
    if _row(conn, subscription, group) is None:
        conn.execute(resource_groups.insert().values(subscription=subscription.lower(), key=group.lower(), name=group,
                                                     location=location, tags={}, created=clock.now()))

"""`shoal secrets-key new FILE`: make the key the store's secrets are sealed with
(shoal/store/sealing.py; `shoal up --secrets-key-file FILE`)."""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.group("secrets-key")
def secrets_key() -> None:
    """The key that seals the store's secrets at rest."""


@secrets_key.command("new")
@click.argument("path", type=click.Path(path_type=Path))
def secrets_key_new(path: Path) -> None:
    """Write a new random key to PATH (mode 0600; an existing file is never overwritten). Keep it
    apart from the data dir and its backups: whoever holds both holds the secrets."""
    from shoal.store.sealing import new_key_text  # here: the CLI's other commands need no crypto

    try:
        # O_EXCL and 0600 from the first byte: a key is never readable by others, even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; a key is never overwritten (its secrets would be lost)") from None
    except OSError as exc:
        raise click.ClickException(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(new_key_text() + "\n")
    click.echo(f"wrote a new secrets key to {path}; start Shoal with --secrets-key-file {path}")

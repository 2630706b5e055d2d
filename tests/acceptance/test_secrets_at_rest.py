"""Secrets at rest (issue 11 item 7) against a real `shoal up --secrets-key-file`: a copy of the
store holds neither the account keys, nor the token signing keys, nor a certificate's pfx or
password, while the server signs, verifies and installs certificates on nodes as before; a store
and a key that do not go together refuse to start, saying why."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, update

from shoal.store.schema import accounts, certificates, signing_keys
from shoal.store.sealing import PREFIX, Sealer, SealingError, purpose
from shoal.testing.server import running_shoal
from tests.acceptance import rest
from tests.acceptance.test_certificates import V19, add_body, make_certificate, pool_body, send
from tests.helpers import wait_for
from tests.identity import access_token, assign_role, create_principal

SHOAL = [sys.executable, "-m", "shoal.cli"]


def new_key(path: Path) -> Path:
    subprocess.run([*SHOAL, "secrets-key", "new", str(path)], check=True, capture_output=True)
    return path


def store_bytes(data_dir: Path) -> bytes:
    """Every byte SQLite keeps: the database, its write-ahead log and shared memory."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("shoal.db*")))


def refused_start(data_dir: Path, *args: str) -> str:
    """`shoal up` on ``data_dir`` with ``args``: it must exit 1 at once; what it printed."""
    result = subprocess.run([*SHOAL, "up", "--port", "0", "--data-dir", str(data_dir), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_a_copy_of_the_store_holds_no_secret_while_everything_works(tmp_path: Path) -> None:
    key_file = new_key(tmp_path / "secrets.key")
    data_dir = tmp_path / "data"
    cert = make_certificate("sealed-pfx", "Sealed-Pfx-Pass-7")
    with running_shoal(data_dir, extra_args=["--secrets-key-file", str(key_file)]) as shoal:
        assert send(shoal, "POST", "/certificates", add_body(cert)).status_code == 201
        start = {"commandLine": "/bin/sh -c 'cd $AZ_BATCH_CERTIFICATES_DIR && sha256sum *'", "waitForSuccess": True,
                 "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}}
        refs = [{"thumbprint": cert["thumbprint"], "thumbprintAlgorithm": "sha1", "visibility": ["starttask"]}]
        created = send(shoal, "POST", "/pools", pool_body("sealed", refs, targetDedicatedNodes=1, startTask=start))
        assert created.status_code == 201, created.text
        node = wait_for(lambda: next((n for n in send(shoal, "GET", "/pools/sealed/nodes").json()["value"]
                                      if n["state"] == "idle"), None), timeout=60, message="an idle node")
        # The node got the pfx and its password, opened from the sealed store (the start task
        # prints their digests: its output is kept by the control plane too).
        out = send(shoal, "GET", f"/pools/sealed/nodes/{node['id']}/files/startup/stdout.txt")
        digests = dict(reversed(line.split()) for line in out.text.splitlines())
        stem = f"sha1-{cert['thumbprint']}"
        assert digests == {f"{stem}.pfx": hashlib.sha256(cert["pfxBytes"]).hexdigest(),
                           f"{stem}.pfx.pw": hashlib.sha256(cert["password"].encode()).hexdigest()}
        # The keys sign and verify: the account's Shared Key (above) and a principal's bearer
        # token, signed with the sealed RSA key.
        principal = create_principal(shoal, "sealed-app")
        assign_role(shoal, principal, "Reader")
        listed = rest.call(shoal, "GET", "/pools", token=access_token(shoal, principal), api_version=V19)
        assert listed.status_code == 200 and listed.json()["value"][0]["id"] == "sealed"
        secrets = [shoal.primary_key, shoal.secondary_key, cert["password"], cert["pfx"][-200:-20]]
        # The banner on the terminal shows the primary key (as `shoal up` promises); no log line does.
        log = "\n".join(line for line in shoal.log().splitlines() if not line.lstrip().startswith("key:"))
    stored = store_bytes(data_dir)
    for secret in secrets:
        assert secret.encode() not in stored
        assert secret not in log
    assert b"PRIVATE KEY" not in stored  # the token signing key's PEM
    assert PREFIX.encode() in stored


def test_a_store_and_a_key_that_do_not_go_together_refuse_to_start(tmp_path: Path) -> None:
    key_file = new_key(tmp_path / "secrets.key")
    data_dir = tmp_path / "data"
    with running_shoal(data_dir, extra_args=["--secrets-key-file", str(key_file)]) as shoal:
        primary = shoal.primary_key
    assert "--secrets-key-file" in refused_start(data_dir)
    assert "does not open" in refused_start(data_dir, "--secrets-key-file", str(new_key(tmp_path / "other.key")))
    # The refusals changed nothing: the right key still opens the same account.
    with running_shoal(data_dir, extra_args=["--secrets-key-file", str(key_file)]) as shoal:
        assert shoal.primary_key == primary
        assert shoal.client().list_pools() is not None


def test_a_store_made_without_a_key_is_sealed_when_one_is_given(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    cert = make_certificate("clear-first", "Clear-Then-Sealed-9")
    with running_shoal(data_dir) as shoal:
        primary = shoal.primary_key
        assert send(shoal, "POST", "/certificates", add_body(cert)).status_code == 201
    assert primary.encode() in store_bytes(data_dir) or _clear_in_store(data_dir, primary)
    key_file = new_key(tmp_path / "secrets.key")
    with running_shoal(data_dir, extra_args=["--secrets-key-file", str(key_file)]) as shoal:
        assert shoal.primary_key == primary
        assert send(shoal, "GET", "/certificates").json()["value"][0]["thumbprint"] == cert["thumbprint"]
    engine = create_engine(f"sqlite:///{data_dir / 'shoal.db'}")
    with engine.connect() as conn:
        values = [*conn.execute(select(accounts.c.primary_key, accounts.c.secondary_key)).one(),
                  *conn.execute(select(signing_keys.c.secret)).scalars(),
                  *conn.execute(select(certificates.c.private_data, certificates.c.password)).one()]
    engine.dispose()
    assert len(values) == 6 and all(value.startswith(PREFIX) for value in values)


def _clear_in_store(data_dir: Path, value: str) -> bool:
    engine = create_engine(f"sqlite:///{data_dir / 'shoal.db'}")
    with engine.connect() as conn:
        found = conn.execute(select(accounts.c.primary_key)).scalar_one() == value
    engine.dispose()
    return found


def test_key_files_others_can_read_or_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    key_file = new_key(tmp_path / "secrets.key")
    assert key_file.stat().st_mode & 0o777 == 0o600
    loose = tmp_path / "loose.key"
    loose.write_text(key_file.read_text())
    loose.chmod(0o644)
    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(b"x" * 16).decode())
    junk = tmp_path / "junk.key"
    junk.write_text("not base64 at all!")
    for path, reason in ((loose, "other users"), (short, "32 bytes"), (junk, "32 bytes"),
                         (tmp_path / "missing.key", "cannot read"), (tmp_path, "cannot read")):
        if path.is_file():
            path.chmod(0o600 if path != loose else 0o644)
        with pytest.raises(SealingError, match=reason):
            Sealer.from_file(path)
    # `secrets-key new` never overwrites a key (the secrets sealed with it would be lost).
    again = subprocess.run([*SHOAL, "secrets-key", "new", str(key_file)], capture_output=True, text=True)
    assert again.returncode != 0 and "never overwritten" in again.stderr


def test_a_sealed_value_opens_only_in_its_own_column_and_untampered(tmp_path: Path) -> None:
    """Swapping sealed values between columns (the task token secret into the RSA key's row, a
    key into a certificate password) or flipping a byte makes the start fail; it never opens as
    something else."""
    key_file = new_key(tmp_path / "secrets.key")
    sealer = Sealer.from_file(key_file)
    sealed = sealer.seal("a secret", purpose(accounts, "primary_key"))
    assert sealed is not None and sealed.startswith(PREFIX)
    assert sealer.unseal(sealed, purpose(accounts, "primary_key")) == "a secret"
    with pytest.raises(SealingError):
        sealer.unseal(sealed, purpose(certificates, "password"))
    raw = bytearray(base64.b64decode(sealed[len(PREFIX):]))
    raw[-1] ^= 1
    with pytest.raises(SealingError):
        sealer.unseal(PREFIX + base64.b64encode(bytes(raw)).decode(), purpose(accounts, "primary_key"))
    with pytest.raises(SealingError):
        Sealer().unseal(sealed, purpose(accounts, "primary_key"))
    assert sealer.seal(sealed, purpose(accounts, "primary_key")) == sealed  # never sealed twice
    # In a real store: the secondary key's sealed value put in the primary key's place.
    data_dir = tmp_path / "data"
    with running_shoal(data_dir, extra_args=["--secrets-key-file", str(key_file)]):
        pass
    engine = create_engine(f"sqlite:///{data_dir / 'shoal.db'}")
    with engine.begin() as conn:
        secondary = conn.execute(select(accounts.c.secondary_key)).scalar_one()
        conn.execute(update(accounts).values(primary_key=secondary))
    engine.dispose()
    assert "does not open" in refused_start(data_dir, "--secrets-key-file", str(key_file))

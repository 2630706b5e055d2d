"""The dashboard's session cookie and CSRF tokens (shoal/web/session.py), and the small pure
helpers of the dashboard that guard what reaches a page."""

from __future__ import annotations

import json

from shoal.web import session
from shoal.web.files import complete_utf8
from shoal.web.shared import json_for_script

KEY = "a2V5LW9uZQ=="
OTHER = "a2V5LXR3bw=="


def test_a_cookie_carries_no_key_and_is_accepted_under_its_key_only():
    cookie = session.issue(KEY, now=1000.0)
    assert KEY not in cookie and "a2V5" not in cookie
    assert session.verify(cookie, [OTHER, KEY], now=1001.0) is not None
    assert session.verify(cookie, [OTHER], now=1001.0) is None  # the key was regenerated


def test_a_cookie_expires_and_tampering_is_refused():
    cookie = session.issue(KEY, now=1000.0)
    assert session.verify(cookie, [KEY], now=1000.0 + session.SESSION_LIFETIME_S + 1) is None
    version, expiry, nonce, mac = cookie.split(".")
    for forged in [f"{version}.{int(expiry) + 10**6}.{nonce}.{mac}", f"{version}.{expiry}.{nonce[::-1]}.{mac}",
                   f"{version}.{expiry}.{nonce}.{'0' * 64}", f"v2.{expiry}.{nonce}.{mac}", cookie + ".x",
                   "", "...", "v1.-5.a.b", "x" * 10_000]:
        assert session.verify(forged, [KEY], now=1001.0) is None, forged


PRINCIPAL = session.Principal("1b0d2a3c-0000-4000-8000-000000000001", "0bj-1", "c1ient-1")


def test_a_principal_cookie_names_its_principal_ends_with_the_token_and_resists_tampering():
    secret = session.principal_secret(b"signing key")
    cookie = session.issue_for_principal(secret, PRINCIPAL, expires=1000.0 + 3600, now=1000.0)
    found = session.verify(cookie, [KEY], now=1001.0, principal_secret=secret)
    assert found is not None and found.principal == PRINCIPAL
    assert session.verify(cookie, [KEY], now=1001.0) is None  # a server without token signing keys
    assert session.verify(cookie, [KEY], now=1001.0, principal_secret=session.principal_secret(b"other")) is None
    assert session.verify(cookie, [KEY], now=1000.0 + 3601, principal_secret=secret) is None  # the token's end
    parts = cookie.split(".")
    for index, value in [(1, str(int(parts[1]) + 10**6)), (4, "0bj-2"), (5, "c1ient-2"), (3, "other-tenant")]:
        forged = ".".join(parts[:index] + [value] + parts[index + 1:])
        assert session.verify(forged, [KEY], now=1001.0, principal_secret=secret) is None, forged
    assert session.verify(cookie + ".x", [KEY], now=1001.0, principal_secret=secret) is None
    # The key's secret never signs a principal's session, nor the reverse.
    key_cookie = session.issue(KEY, now=1000.0)
    assert session.verify("p1." + key_cookie[3:], [KEY], now=1001.0, principal_secret=secret) is None
    # A lifetime is capped even for a long-lived token; ids Shoal never makes are refused.
    long = session.issue_for_principal(secret, PRINCIPAL, expires=10**12, now=1000.0)
    assert int(long.split(".")[1]) == 1000 + session.SESSION_LIFETIME_S
    for bad in ["a.b", "x" * 65, "", "\x00"]:
        try:
            session.issue_for_principal(secret, session.Principal(bad, "o", "c"), expires=2000.0)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_csrf_tokens_belong_to_one_session():
    one = session.verify(session.issue(KEY), [KEY])
    two = session.verify(session.issue(KEY), [KEY])
    assert one is not None and two is not None
    assert one.csrf_ok(one.csrf_token) and not one.csrf_ok(two.csrf_token)
    assert not one.csrf_ok(None) and not one.csrf_ok("") and not one.csrf_ok(one.csrf_token[:-1])


def test_key_matches_only_a_whole_key():
    assert session.key_matches(KEY, [OTHER, KEY]) == KEY
    for wrong in ["", KEY[:-1], KEY + "=", KEY.lower(), "\x00"]:
        assert session.key_matches(wrong, [OTHER, KEY]) is None


def test_json_in_a_script_block_cannot_close_it():
    text = str(json_for_script({"id": "</script><script>alert(1)</script>", "x": "<!--"}))
    assert "<" not in text and ">" not in text
    assert json.loads(text) == {"id": "</script><script>alert(1)</script>", "x": "<!--"}


def test_a_tail_never_ends_in_half_a_character():
    text = "héllo €𝄞".encode()
    for cut in range(len(text) + 1):
        kept = complete_utf8(text[:cut])
        kept.decode("utf-8")  # whole characters only
        assert text.startswith(kept) and cut - len(kept) < 4


def test_a_gone_nodes_task_is_tailed_from_its_kept_copy():
    from datetime import UTC, datetime

    import pytest

    from shoal.errors import NotFound
    from shoal.service.task_outputs import KeptFile
    from shoal.web.files import TAIL_BYTES, _tail_kept

    data = b"x" * (TAIL_BYTES + 10) + "é".encode()
    kept = [KeptFile("stdout.txt", data, len(data), datetime.now(UTC))]
    first = _tail_kept(kept, ["stdout.txt"], -1)  # a first look: the last TAIL_BYTES
    assert first["offset"] == len(data) and first["data"].endswith("é") and first["size"] == len(data)
    assert _tail_kept(kept, ["stdout.txt"], len(data))["data"] == ""
    assert _tail_kept(kept, ["stdout.txt"], 10 ** 9)["offset"] == len(data)
    with pytest.raises(NotFound):
        _tail_kept(kept, ["stderr.txt"], 0)

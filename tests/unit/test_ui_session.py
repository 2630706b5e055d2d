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

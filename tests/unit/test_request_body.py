"""The general body check (shoal/service/request_body.py) never quotes a secret back: a password,
secret or certificate with a NUL or the wrong type is refused naming the property, not its value."""

from __future__ import annotations

import pytest

from shoal.errors import InvalidProperty
from shoal.service import request_body


@pytest.mark.parametrize("body, body_name, path", [
    ({"name": "u", "password": "hunter2-is-the-password\x00"}, "node.adduser", "password"),
    ({"name": "u", "password": 12345678}, "node.adduser", "password"),
    ({"id": "p", "userAccounts": [{"name": "u", "password": "s3cret\x00"}]}, "pool.create", "userAccounts[0].password"),
])
def test_a_refused_secret_is_named_not_quoted(body, body_name, path):
    with pytest.raises(InvalidProperty) as refused:
        request_body.check(body, body_name)
    shown = str(refused.value.values)
    assert path in shown
    assert "hunter2" not in shown and "s3cret" not in shown and "12345678" not in shown


def test_other_refused_values_are_still_quoted_for_the_user_to_see():
    with pytest.raises(InvalidProperty) as refused:
        request_body.check({"name": "bad\x00name", "password": "fine"}, "node.adduser")
    assert refused.value.values["PropertyValue"] == "bad\\0name"

"""Opening a client's pfx (PKCS #12) without trusting it.

A pfx names its own key-derivation cost: an iteration count the client chooses, in parts that
are themselves encrypted, so it cannot be bounded by looking. Opening one with a count of
billions would hold a thread (and a core) for hours. So the pfx is opened in a child process,
limited in CPU time and memory and killed at a deadline; the password travels on its stdin, never
on its command line (which `ps` shows).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

OPEN_TIMEOUT_S = 3.0
_CPU_LIMIT_S = 4
_MEMORY_LIMIT_BYTES = 512 * 1024 * 1024

_CHILD = f"""
import base64, json, resource, sys
resource.setrlimit(resource.RLIMIT_CPU, ({_CPU_LIMIT_S}, {_CPU_LIMIT_S}))
resource.setrlimit(resource.RLIMIT_AS, ({_MEMORY_LIMIT_BYTES}, {_MEMORY_LIMIT_BYTES}))
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
request = json.load(sys.stdin)
password = request["password"]
try:
    _key, cert, _chain = pkcs12.load_key_and_certificates(base64.b64decode(request["data"]),
                                                           None if password is None else password.encode())
except ValueError:
    print(json.dumps({{"error": "unreadable"}}))
else:
    print(json.dumps({{"der": base64.b64encode(cert.public_bytes(Encoding.DER)).decode()}} if cert is not None
                     else {{"error": "no certificate"}}))
"""


class PfxRefused(Exception):
    """The pfx cannot be used; `reason` says why in words safe to show (never the password)."""

    def __init__(self, reason: str, *, password_wrong: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.password_wrong = password_wrong


def certificate_der(raw: bytes, password: str | None) -> bytes:
    """The certificate (DER) a pfx holds, opened with `password`; PfxRefused when it cannot be."""
    request = json.dumps({"data": base64.b64encode(raw).decode(), "password": password})
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _CHILD], input=request, capture_output=True, text=True,
                              timeout=OPEN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PfxRefused(f"The pfx cannot be opened within {OPEN_TIMEOUT_S:g} s: its key derivation is too "
                         f"costly.") from exc
    try:
        answer = json.loads(done.stdout)
    except ValueError as exc:
        # Killed at its CPU or memory limit, or it failed in a way that says nothing useful.
        raise PfxRefused("The pfx cannot be opened within the limits of time and memory it is allowed.") from exc
    if "der" in answer:
        return base64.b64decode(answer["der"])
    if answer.get("error") == "no certificate":
        raise PfxRefused("The pfx holds no certificate.")
    # cryptography cannot tell a wrong password from a damaged file; neither is quoted.
    raise PfxRefused("The pfx cannot be opened: the password is wrong or the data is not a PKCS #12 (pfx) file.",
                     password_wrong=True)

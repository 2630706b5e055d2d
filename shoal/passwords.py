"""Password hashes for node users: the control plane stores only these, and a node's SSH server
checks a login against them. Salted scrypt at 16 MiB of memory (~50 ms a hash), so a stolen
database costs a guesser dearly; standard library only, for the agent's sake."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# Hashes come from the store, which a node does not trust blindly: bound what one may ask for.
MAX_N = 2**20


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encoded[0]}${encoded[1]}"


def password_matches(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a hash made by :func:`hash_password`."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        cost, block, parallel = int(n), int(r), int(p)
        if scheme != SCHEME or not (1 < cost <= MAX_N and 0 < block <= 16 and 0 < parallel <= 4):
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=cost, r=block, p=parallel,
                             dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)

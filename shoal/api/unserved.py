"""Batch operations Shoal does not serve yet.

A client calling one of these is calling a real Batch operation: it gets 400
`FeatureNotSupported` naming the operation (after authentication, as every Batch call), not the
404 `InvalidUri` of a path Batch does not have. Paths are written as in the Batch OpenAPI
document with each path parameter as `{}`; tests/security/test_http.py checks this table is
exactly the spec's operations minus the routes Shoal serves.
"""

from __future__ import annotations

import re

from shoal.errors import BadRequest

# (method, path, Batch operationId)
OPERATIONS: tuple[tuple[str, str, str], ...] = (
    ("GET", "/pools/{}/nodes/{}/rdp", "ComputeNode_GetRemoteDesktop"),
    ("GET", "/pools/{}/nodes/{}/extensions", "ComputeNodeExtension_List"),
    ("GET", "/pools/{}/nodes/{}/extensions/{}", "ComputeNodeExtension_Get"),
)


def _pattern(template: str) -> re.Pattern[str]:
    parts = template.split("{}")
    # A path parameter is one segment; Batch paths (and their ids) are matched without case.
    return re.compile("[^/]+".join(re.escape(part) for part in parts) + "/?", re.IGNORECASE)


_COMPILED = tuple((method, _pattern(path), name) for method, path, name in OPERATIONS)


def operation_for(method: str, path: str) -> str | None:
    """The Batch operationId of an unserved operation this request calls, if any."""
    for candidate_method, pattern, name in _COMPILED:
        if candidate_method == method and pattern.fullmatch(path):
            return name
    return None


def template_of(operation: str) -> str:
    """The path of an unserved operation, as the authorization table reads route paths."""
    return next(path for _method, path, name in OPERATIONS if name == operation)


def not_supported(operation: str) -> BadRequest:
    return BadRequest(f"The operation {operation} is not supported by this Batch service yet.",
                      code="FeatureNotSupported",
                      values={"OperationName": operation,
                              "Reason": "Shoal does not implement this Batch operation."})

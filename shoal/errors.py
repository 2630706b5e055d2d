"""The one root of every error Shoal reports to a client.

Each error carries its Batch error code, HTTP status, message and the `values` list
of the OData error body. The API layer turns any `BatchError` into that body in one
place (`shoal.api.errors`); nothing else formats errors.
"""

from __future__ import annotations


class BatchError(Exception):
    status = 500
    code = "InternalError"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 values: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.values: dict[str, str] = dict(values or {})


class BadRequest(BatchError):
    status = 400
    code = "InvalidRequestBody"


class InvalidProperty(BadRequest):
    """A property has a value Batch refuses: names the property and the reason."""

    code = "InvalidPropertyValue"

    def __init__(self, name: str, value: object, reason: str) -> None:
        super().__init__("The value provided for one of the properties in the request body is invalid.",
                         values={"PropertyName": name, "PropertyValue": str(value), "Reason": reason})


class MissingProperty(BadRequest):
    code = "MissingRequiredProperty"

    def __init__(self, name: str) -> None:
        super().__init__("A required property was not specified in the request body.",
                         values={"PropertyName": name})


class InvalidQuery(BadRequest):
    code = "InvalidQueryParameterValue"

    def __init__(self, name: str, value: object, reason: str) -> None:
        super().__init__("Value for one of the query parameters specified in the request URI is invalid.",
                         values={"QueryParameterName": name, "QueryParameterValue": str(value),
                                 "Reason": reason})


class Unauthenticated(BatchError):
    status = 401
    code = "AuthenticationFailed"


class NotFound(BatchError):
    status = 404
    code = "ResourceNotFound"


class Conflict(BatchError):
    status = 409
    code = "Conflict"


class ConditionNotMet(BatchError):
    status = 412
    code = "ConditionNotMet"

    def __init__(self) -> None:
        super().__init__("The condition specified using HTTP conditional header(s) is not met.")


class BodyTooLarge(BatchError):
    status = 413
    code = "RequestBodyTooLarge"

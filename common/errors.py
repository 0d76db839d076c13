"""The one error type of servelane.

Every error a service means to show a client is a :class:`ServelaneError`. It carries the HTTP status and the
gRPC status code it maps to, so each edge (the REST middleware, the gRPC servicer) translates it in exactly one
place. Anything else that escapes a handler is a bug: the edge logs it with its traceback and answers 500 /
INTERNAL with a generic message, never the traceback.

    ServelaneError                  500  INTERNAL
    ├── InvalidInput                400  INVALID_ARGUMENT
    ├── NotFound                    404  NOT_FOUND
    │   └── ModelNotFound
    ├── Unavailable                 503  UNAVAILABLE
    │   └── ModelNotReady
    ├── PayloadTooLarge             413  RESOURCE_EXHAUSTED
    ├── Unsupported                 501  UNIMPLEMENTED
    ├── UpstreamError               502  UNAVAILABLE
    │   └── UpstreamStatus          the upstream's own status (a predictor's 404 stays 404)
    ├── UpstreamTimeout             504  DEADLINE_EXCEEDED
    └── InferenceError              500  INTERNAL
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

# What a gRPC status stands for in HTTP, and back; keyed by the status's name so that importing this module does
# not import grpc (about 9 MB of memory a process without gRPC need not pay).
HTTP_OF_GRPC = {
    "OK": 200, "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "FAILED_PRECONDITION": 400, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "ABORTED": 409, "RESOURCE_EXHAUSTED": 413,
    "CANCELLED": 499, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}
GRPC_OF_HTTP = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ABORTED",
    413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def http_status_of(code: grpc.StatusCode | str) -> int:
    return HTTP_OF_GRPC.get(code if isinstance(code, str) else code.name, 500)


def grpc_status_of(http_status: int) -> str:
    return GRPC_OF_HTTP.get(http_status, "INVALID_ARGUMENT" if http_status < 500 else "INTERNAL")


class ServelaneError(Exception):
    """Base of every error that reaches a client with a chosen status and message."""

    http_status: int = 500
    grpc_status: str = "INTERNAL"  # a grpc.StatusCode name

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    @property
    def grpc_code(self) -> grpc.StatusCode:
        import grpc

        return grpc.StatusCode[self.grpc_status]


class InvalidInput(ServelaneError):
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"


class NotFound(ServelaneError):
    http_status = 404
    grpc_status = "NOT_FOUND"


class ModelNotFound(NotFound):
    def __init__(self, name: str, version: str | None = None) -> None:
        if version:
            super().__init__(f"Model with name {name} version {version} does not exist.")
        else:
            super().__init__(f"Model with name {name} does not exist.")


class Unavailable(ServelaneError):
    http_status = 503
    grpc_status = "UNAVAILABLE"


class ModelNotReady(Unavailable):
    def __init__(self, name: str, reason: str = "") -> None:
        message = f"Model with name {name} is not ready."
        super().__init__(f"{message} {reason}" if reason else message)


class PayloadTooLarge(ServelaneError):
    http_status = 413
    grpc_status = "RESOURCE_EXHAUSTED"


class Unsupported(ServelaneError):
    http_status = 501
    grpc_status = "UNIMPLEMENTED"


class UpstreamError(ServelaneError):
    http_status = 502
    grpc_status = "UNAVAILABLE"


class UpstreamTimeout(ServelaneError):
    http_status = 504
    grpc_status = "DEADLINE_EXCEEDED"


class UpstreamStatus(UpstreamError):
    """An upstream's own error passed on as it came: its status and message (a predictor's 404 stays a 404)."""

    def __init__(self, message: str, http_status: int, grpc_status: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_status = grpc_status

    @classmethod
    def from_http(cls, status: int, message: str) -> UpstreamStatus:
        return cls(message, status, grpc_status_of(status))

    @classmethod
    def from_grpc(cls, code: grpc.StatusCode, message: str) -> UpstreamStatus:
        return cls(message, http_status_of(code), code.name)


class InferenceError(ServelaneError):
    """The model itself failed on an input that passed validation."""

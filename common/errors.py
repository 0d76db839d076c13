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
    ├── UpstreamTimeout             504  DEADLINE_EXCEEDED
    └── InferenceError              500  INTERNAL
"""

from __future__ import annotations

import grpc


class ServelaneError(Exception):
    """Base of every error that reaches a client with a chosen status and message."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidInput(ServelaneError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServelaneError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelNotFound(NotFound):
    def __init__(self, name: str, version: str | None = None) -> None:
        if version:
            super().__init__(f"Model with name {name} version {version} does not exist.")
        else:
            super().__init__(f"Model with name {name} does not exist.")


class Unavailable(ServelaneError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ModelNotReady(Unavailable):
    def __init__(self, name: str, reason: str = "") -> None:
        message = f"Model with name {name} is not ready."
        super().__init__(f"{message} {reason}" if reason else message)


class PayloadTooLarge(ServelaneError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unsupported(ServelaneError):
    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class UpstreamError(ServelaneError):
    http_status = 502
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamTimeout(ServelaneError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class InferenceError(ServelaneError):
    """The model itself failed on an input that passed validation."""

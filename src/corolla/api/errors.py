"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from corolla.errors import (
    BadRequestError,
    CorollaError,
    RemoteCallError,
    SequenceTooLongError,
    ServerBusyError,
    SwarmError,
    UnknownAdapterError,
)

RETRY_AFTER_S = 5


class APIError(Exception):
    """An error answered to the HTTP client; ``status`` is the HTTP status code."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def shutting_down() -> APIError:
    """What open and new requests get while the server shuts down (an SSE stream ends with it)."""
    return APIError(503, "the server is shutting down; retry the request on another server or once it is back",
                    type="server_error", code="server_shutting_down", headers={"Retry-After": str(RETRY_AFTER_S)})


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_exception(error: BaseException) -> APIError:
    """Map an exception raised while serving a request onto an HTTP error."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, UnknownAdapterError):  # "MODEL:NAME" with no server hosting NAME: no such model
        return APIError(404, str(error), param="model", code="model_not_found")
    if isinstance(error, SequenceTooLongError):
        return APIError(400, str(error), code="context_length_exceeded")
    if isinstance(error, BadRequestError):
        return APIError(400, str(error), code="bad_request")
    if isinstance(error, (SwarmError, ServerBusyError, RemoteCallError)) or (
        isinstance(error, CorollaError) and error.retryable
    ):
        return APIError(503, f"the swarm cannot serve this request now: {error}", type="server_error",
                        code=error.code, headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, CorollaError):
        return APIError(500, str(error), type="server_error", code=error.code)
    return APIError(500, f"internal error: {type(error).__name__}", type="server_error", code="internal_error")


def from_validation(errors: list[dict]) -> APIError:
    """A pydantic / FastAPI validation failure as a 400 naming the first bad field."""
    if not errors:
        return bad_request("invalid request body")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value")
    return bad_request(f"{param}: {message}" if param else message, param=param, code="invalid_value")

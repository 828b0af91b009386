"""The exception tree of corolla.

Every error a user can meet derives from :class:`CorollaError`; its message says what happened
and, where possible, what to do about it. Errors that travel over the wire carry a ``code``
(the class name) so a client can re-raise the same type it would have met locally.
"""

from __future__ import annotations


class CorollaError(Exception):
    """Base class of all corolla errors."""

    retryable: bool = False

    @property
    def code(self) -> str:
        return type(self).__name__


# --- models -------------------------------------------------------------------------------------
class ModelError(CorollaError):
    """A model could not be found, fetched, verified, converted or loaded."""


class UnknownModelError(ModelError):
    """The model name is not packaged, not a local folder or GGUF file, and not a Hub repo id."""


class ChecksumMismatchError(ModelError):
    """A downloaded model file does not match its pinned sha256."""


class UnsupportedModelError(ModelError):
    """The architecture has no family module in corolla yet."""


# --- wire and requests ---------------------------------------------------------------------------
class RequestError(CorollaError):
    """A request that the server refused as malformed; fix the caller, retrying will not help."""


class BadRequestError(RequestError):
    """Malformed metadata, tensors of the wrong shape or dtype, or undecodable bytes."""


class UnknownSessionError(RequestError):
    """The session id is not open on this server (it expired, was closed, or never existed)."""


class SequenceTooLongError(RequestError):
    """The session would grow past the length the server or the client allowed."""


class UnknownAdapterError(RequestError):
    """No server (or not this one) hosts the adapter named in the request."""


class TrainingUnsupportedError(RequestError):
    """This server cannot run backward passes (e.g. its weights are quantized)."""


class ServerBusyError(CorollaError):
    """The server has no room for this request right now; another server may have."""

    retryable = True


class RateLimitedError(ServerBusyError):
    """This peer sent more requests or bytes per second than the server allows one peer."""


class TooManyStreamsError(ServerBusyError):
    """This peer holds as many open streams to the server as it allows one peer."""


class SessionLostError(CorollaError):
    """The server dropped this session (it moved to other blocks, or is shutting down).

    The client rebuilds the session elsewhere by replaying its inputs.
    """

    retryable = True


class SessionEvictedError(SessionLostError):
    """The server dropped this session's KV cache to make room for others (or it sat idle too long).

    Not the server's fault: the client replays the session — on the same server or another —
    without banning it.
    """


class ServerInternalError(CorollaError):
    """The server failed while computing; the request may succeed elsewhere."""

    retryable = True


class RemoteCallError(CorollaError):
    """A call to a peer failed in transport (connection lost, timeout)."""

    retryable = True


class PeerUnresponsiveError(RemoteCallError):
    """A peer kept its connection open but did not answer: a liveness probe or the request timed out.

    (A peer that died and closed its connection is a plain RemoteCallError, noticed at once.)
    """


class PeerUnreachableError(RemoteCallError):
    """No connection to the peer could be made at all: it is gone, or the address it announced is
    stale (a dead server's DHT record outlives it by up to the record's lifetime).

    Clients route around such a peer without counting it against their retries the first time
    they meet it: it never took any work, and the records of a swarm with churn name several.
    """


class SessionClosedError(CorollaError):
    """The client closed this inference session (perhaps from another thread, mid-step); no
    server is at fault. Open a new session to go on."""


# --- swarm ---------------------------------------------------------------------------------------
class SwarmError(CorollaError):
    """The swarm cannot serve the request."""


class NoRouteError(SwarmError):
    """Some blocks of the model have no server online."""

    retryable = True

    def __init__(self, model_id: str, missing: list[tuple[int, int]]):
        self.model_id = model_id
        self.missing = missing
        spans = ", ".join(f"{a}" if b - a == 1 else f"{a}–{b - 1}" for a, b in missing)
        noun = "block" if len(missing) == 1 and missing[0][1] - missing[0][0] == 1 else "blocks"
        verb = "has" if noun == "block" else "have"
        super().__init__(f"{noun} {spans} of {model_id} {verb} no server online")


WIRE_ERRORS: dict[str, type[CorollaError]] = {
    cls.__name__: cls
    for cls in (
        BadRequestError,
        UnknownSessionError,
        SequenceTooLongError,
        UnknownAdapterError,
        TrainingUnsupportedError,
        ServerBusyError,
        RateLimitedError,
        TooManyStreamsError,
        ServerInternalError,
        SessionLostError,
        SessionEvictedError,
    )
}


def error_from_wire(code: str, message: str) -> CorollaError:
    """Rebuild a server-side error on the client; unknown codes become ServerInternalError."""
    cls = WIRE_ERRORS.get(code, ServerInternalError)
    return cls(message)

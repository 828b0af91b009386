"""Inference sessions of one server: a KV cache each, with limits checked on every step."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import torch

from corolla.errors import BadRequestError, SequenceTooLongError, ServerBusyError
from corolla.protocol.messages import SessionOpen

WIRE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass
class Session:
    id: str
    peer: str
    first: int  # local block indices this session runs
    last: int
    max_length: int
    kv: Any = None  # SessionKV, created at the first step (when the batch size is known)
    position: int = 0
    batch_size: int | None = None
    generation: int = 0  # the server's span generation this session was opened under
    inbox: Any = None  # the stream's asyncio.Queue: pushes from the previous hop land here
    push_from: str | None = None  # the only peer whose pushes this session accepts
    pushed: set[int] = dataclasses.field(default_factory=set)  # recent positions computed from a push
    done_steps: set[int] = dataclasses.field(default_factory=set)  # numbers of the recent steps computed
    # where the inputs pushed to us and not computed yet end: pushes queue in order (the pieces of a
    # pipelined prompt arrive while the one before is computing), each checked against this
    pushed_until: int = 0
    last_used: float = dataclasses.field(default_factory=time.monotonic)  # for idle expiry and LRU eviction
    closed: bool = False  # its stream ended; the batcher frees its cache once no step of it runs
    evicted: bool = False  # its cache was dropped for room: the next step tells the client to replay
    adapters: Any = None  # BlockAdapters of this session (client-owned, sent at open, or hosted), or None


class SessionTable:
    """Open sessions; thread-safe (handlers open/close, the compute thread steps)."""

    def __init__(self, *, max_sessions: int, max_per_peer: int, max_length: int):
        self.max_sessions, self.max_per_peer, self.max_length = max_sessions, max_per_peer, max_length
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def cache_bytes(self, peer: str) -> int:
        """KV cache bytes held by ``peer``'s sessions."""
        with self._lock:
            return sum(s.kv.nbytes for s in self._sessions.values() if s.peer == peer and s.kv is not None)

    def open(self, req: SessionOpen, peer: str, first: int, last: int, generation: int = 0) -> Session:
        if req.max_length > self.max_length:
            raise SequenceTooLongError(
                f"max_length {req.max_length} is more than this server allows per session ({self.max_length})"
            )
        with self._lock:
            if req.session_id in self._sessions:
                raise BadRequestError(f"session {req.session_id} is already open")
            if len(self._sessions) >= self.max_sessions:
                raise ServerBusyError(f"server is at its limit of {self.max_sessions} sessions")
            if sum(s.peer == peer for s in self._sessions.values()) >= self.max_per_peer:
                raise ServerBusyError(
                    f"peer {peer} already holds {self.max_per_peer} sessions here (the per-peer limit)")
            session = Session(req.session_id, peer, first, last, req.max_length, generation=generation)
            self._sessions[req.session_id] = session
            return session

    def count(self, predicate) -> int:
        """How many open sessions ``predicate`` holds for."""
        with self._lock:
            return sum(1 for session in self._sessions.values() if predicate(session))

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def close(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)


def check_hidden(
    hidden: torch.Tensor, *, hidden_size: int, max_batch: int, max_tokens: int
) -> torch.Tensor:
    """Validate a client's hidden states [B, T, H]; raise BadRequestError with the reason."""
    if hidden.dtype not in WIRE_DTYPES:
        raise BadRequestError(f"hidden states must be float32, float16 or bfloat16, got {hidden.dtype}")
    if hidden.dim() != 3:
        raise BadRequestError(f"hidden states must have shape [batch, tokens, {hidden_size}], got {list(hidden.shape)}")
    batch, tokens, size = hidden.shape
    if size != hidden_size:
        raise BadRequestError(f"hidden size must be {hidden_size}, got {size}")
    if batch < 1 or tokens < 1:
        raise BadRequestError(f"empty hidden states {list(hidden.shape)}")
    if batch > max_batch:
        raise BadRequestError(f"batch size {batch} is more than this server's limit of {max_batch}")
    if batch * tokens > max_tokens:
        raise BadRequestError(
            f"{batch}x{tokens} tokens in one request is more than the limit of {max_tokens}; send it in chunks"
        )
    if not torch.isfinite(hidden).all():
        raise BadRequestError("hidden states contain NaN or infinity")
    return hidden


def truncate(session: Session, length: int) -> None:
    """Roll ``session`` back to its first ``length`` tokens (keys and values past them are
    overwritten by the next steps). ``0 <= length <= session.position``, else BadRequestError."""
    if not 0 <= length <= session.position:
        raise BadRequestError(
            f"cannot truncate session {session.id} to {length} tokens: it holds {session.position}")
    session.position = length
    session.pushed = {p for p in session.pushed if p < length}


def check_step(session: Session, hidden: torch.Tensor, position: int, holds: int | None = None) -> None:
    """Refuse a step that does not come at ``holds`` (default: the session's length), changes the
    batch size or would pass the session's max_length."""
    batch, tokens, _ = hidden.shape
    holds = session.position if holds is None else holds
    if position != holds:
        raise BadRequestError(f"step at position {position}, but session {session.id} holds {holds} tokens")
    if session.batch_size is not None and batch != session.batch_size:
        raise BadRequestError(f"batch size changed from {session.batch_size} to {batch} within a session")
    if position + tokens > session.max_length:
        raise SequenceTooLongError(
            f"session {session.id} would reach {position + tokens} tokens, "
            f"past its max_length {session.max_length}"
        )

"""Per-step checks of client input and the limits of the session table."""

from __future__ import annotations

import threading

import pytest
import torch

from corolla.errors import BadRequestError, SequenceTooLongError, ServerBusyError
from corolla.protocol.messages import SessionOpen
from corolla.server.sessions import Session, SessionTable, check_hidden, check_step

H = 16
LIMITS = dict(hidden_size=H, max_batch=4, max_tokens=64)


def hidden(batch: int = 1, tokens: int = 1, size: int = H, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(batch, tokens, size, dtype=dtype)


def req(session_id: str = "session-1", max_length: int = 128) -> SessionOpen:
    return SessionOpen(model_id="m", session_id=session_id, start_block=0, end_block=2, max_length=max_length)


def table(max_sessions: int = 4, max_per_peer: int = 2, max_length: int = 1024) -> SessionTable:
    return SessionTable(max_sessions=max_sessions, max_per_peer=max_per_peer, max_length=max_length)


# --- check_hidden --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_valid_hidden_states_are_returned_unchanged(dtype):
    h = hidden(2, 3, dtype=dtype)
    assert check_hidden(h, **LIMITS) is h


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.int8, torch.bool, torch.complex64])
def test_wrong_dtype_is_refused(dtype):
    with pytest.raises(BadRequestError, match="float32, float16 or bfloat16"):
        check_hidden(hidden(dtype=dtype), **LIMITS)


@pytest.mark.parametrize("shape", [(H,), (1, H), (1, 1, 1, H), ()])
def test_wrong_number_of_dims_is_refused(shape):
    with pytest.raises(BadRequestError, match=rf"\[batch, tokens, {H}\]"):
        check_hidden(torch.zeros(shape), **LIMITS)


@pytest.mark.parametrize("size", [H - 1, H + 1, 1])
def test_wrong_hidden_size_is_refused(size):
    with pytest.raises(BadRequestError, match=f"hidden size must be {H}, got {size}"):
        check_hidden(hidden(size=size), **LIMITS)


@pytest.mark.parametrize("batch, tokens", [(0, 1), (1, 0), (0, 0)])
def test_empty_hidden_states_are_refused(batch, tokens):
    with pytest.raises(BadRequestError, match="empty"):
        check_hidden(hidden(batch, tokens), **LIMITS)


def test_batch_limit():
    assert check_hidden(hidden(batch=4), **LIMITS) is not None
    with pytest.raises(BadRequestError, match="batch size 5 .* limit of 4"):
        check_hidden(hidden(batch=5), **LIMITS)


def test_token_limit_counts_batch_times_tokens():
    check_hidden(hidden(batch=4, tokens=16), **LIMITS)  # exactly 64
    check_hidden(hidden(batch=1, tokens=64), **LIMITS)
    with pytest.raises(BadRequestError, match="limit of 64; send it in chunks"):
        check_hidden(hidden(batch=4, tokens=17), **LIMITS)
    with pytest.raises(BadRequestError, match="1x65 tokens"):
        check_hidden(hidden(batch=1, tokens=65), **LIMITS)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_values_are_refused(bad, dtype):
    h = hidden(2, 3, dtype=dtype)
    h[1, 2, 5] = bad
    with pytest.raises(BadRequestError, match="NaN or infinity"):
        check_hidden(h, **LIMITS)


# --- check_step --------------------------------------------------------------------------------------
def session(position: int = 0, max_length: int = 10, batch_size: int | None = None) -> Session:
    return Session("session-1", "peer", 0, 2, max_length, position=position, batch_size=batch_size)


def test_step_at_the_right_position_passes():
    check_step(session(position=3), hidden(1, 1), 3)
    check_step(session(position=0, batch_size=2), hidden(2, 4), 0)


@pytest.mark.parametrize("position", [0, 2, 4, 100])
def test_position_mismatch_is_refused(position):
    with pytest.raises(BadRequestError, match=f"position {position}, but session session-1 holds 3 tokens"):
        check_step(session(position=3), hidden(), position)


def test_batch_size_cannot_change_within_a_session():
    with pytest.raises(BadRequestError, match="batch size changed from 2 to 3"):
        check_step(session(batch_size=2), hidden(batch=3), 0)


def test_first_step_may_choose_any_batch_size():
    check_step(session(batch_size=None), hidden(batch=3), 0)


def test_max_length_boundary():
    check_step(session(position=7, max_length=10), hidden(tokens=3), 7)  # reaches exactly 10
    with pytest.raises(SequenceTooLongError, match="would reach 11 tokens, past its max_length 10"):
        check_step(session(position=7, max_length=10), hidden(tokens=4), 7)
    with pytest.raises(SequenceTooLongError):
        check_step(session(position=10, max_length=10), hidden(tokens=1), 10)


def test_sequence_too_long_is_not_retryable():
    with pytest.raises(SequenceTooLongError) as e:
        check_step(session(position=0, max_length=1), hidden(tokens=2), 0)
    assert not e.value.retryable


# --- SessionTable --------------------------------------------------------------------------------------
def test_open_returns_a_session_with_the_request_fields():
    t = table()
    s = t.open(req("session-abc", max_length=77), "peerA", 1, 3)
    assert (s.id, s.peer, s.first, s.last, s.max_length, s.kv) == ("session-abc", "peerA", 1, 3, 77, None)
    assert s.position == 0 and s.batch_size is None
    assert len(t) == 1


def test_max_length_above_server_limit_is_refused():
    t = table(max_length=100)
    t.open(req("session-ok", max_length=100), "p", 0, 2)  # at the limit
    with pytest.raises(SequenceTooLongError, match="max_length 101 .* allows per session \\(100\\)"):
        t.open(req("session-long", max_length=101), "p", 0, 2)
    assert len(t) == 1


def test_duplicate_session_id_is_refused():
    t = table()
    t.open(req("session-1"), "p", 0, 2)
    with pytest.raises(BadRequestError, match="already open"):
        t.open(req("session-1"), "q", 0, 2)  # not even from another peer
    assert len(t) == 1


def test_server_session_limit_is_busy_and_retryable():
    t = table(max_sessions=3, max_per_peer=3)
    for i in range(3):
        t.open(req(f"session-{i}"), f"peer{i}", 0, 2)
    with pytest.raises(ServerBusyError, match="limit of 3 sessions") as e:
        t.open(req("session-x"), "peerX", 0, 2)
    assert e.value.retryable
    assert len(t) == 3


def test_per_peer_limit_leaves_room_for_other_peers():
    t = table(max_sessions=10, max_per_peer=2)
    t.open(req("session-a1"), "alice", 0, 2)
    t.open(req("session-a2"), "alice", 0, 2)
    with pytest.raises(ServerBusyError, match="peer alice already holds 2 sessions"):
        t.open(req("session-a3"), "alice", 0, 2)
    t.open(req("session-b1"), "bob", 0, 2)
    assert len(t) == 3


def test_closing_frees_a_slot_and_is_idempotent():
    t = table(max_sessions=1, max_per_peer=1)
    s = t.open(req("session-1"), "p", 0, 2)
    t.close(s)
    t.close(s)
    assert len(t) == 0
    again = t.open(req("session-1"), "p", 0, 2)  # the same id may be reused once closed
    assert again is not s


def test_concurrent_opens_never_exceed_the_limit():
    t = table(max_sessions=5, max_per_peer=100)
    results: list[str] = []
    barrier = threading.Barrier(16)

    def worker(i: int):
        barrier.wait()
        try:
            t.open(req(f"session-{i:03d}"), "p", 0, 2)
            results.append("ok")
        except ServerBusyError:
            results.append("busy")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10)
    assert results.count("ok") == 5 and results.count("busy") == 11
    assert len(t) == 5


# --- truncate (speculative decoding's rollback) ----------------------------------------------------------
def test_truncate_rolls_back_within_the_session_and_refuses_past_it():
    from corolla.server.sessions import truncate

    s = Session("session-1", "peer", 0, 2, max_length=64, position=10, pushed={4, 8, 9})
    truncate(s, 7)
    assert s.position == 7 and s.pushed == {4}
    check_step(s, hidden(tokens=3), 7)  # the next step starts at the new length
    truncate(s, 7)  # to the current length: nothing changes
    truncate(s, 0)
    assert s.position == 0
    with pytest.raises(BadRequestError, match="holds 0"):
        truncate(s, 1)

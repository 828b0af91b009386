"""The prompt cache's choices (corolla.api.prompt_cache) on stand-in sessions; on a real swarm in
tests/api/test_prompt_cache_api.py."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corolla.api.prompt_cache import PromptCache, PromptCacheConfig, common_prefix


class Session:
    """What the cache uses of an InferenceSession."""

    def __init__(self, tokens: list[int], max_length: int = 100):
        self.position, self.max_length = len(tokens), max_length
        self.closed = False
        self.truncated_to: int | None = None

    def truncate(self, length: int) -> None:
        if self.closed:
            raise RuntimeError("closed")
        assert 0 <= length <= self.position
        self.position = self.truncated_to = length

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def kept(cache: PromptCache, tokens: list[int], adapter: str | None = None, max_length: int = 100) -> Session:
    session = Session(tokens, max_length)
    assert cache.put(session, tokens, adapter)
    return session


def test_the_longest_shared_prefix_wins_and_the_session_is_rolled_back_to_it():
    cache = PromptCache(PromptCacheConfig(max_sessions=3))
    a = kept(cache, [1, 2, 3, 4, 5])
    b = kept(cache, [1, 2, 9, 9])
    session, keep = cache.take([1, 2, 3, 4, 7, 8], need=20, adapter=None)
    assert session is a and keep == 4 and a.truncated_to == 4 and not a.closed
    assert len(cache) == 1 and cache.stats.hits == 1 and cache.stats.reused_tokens == 4
    # the whole prompt held: the last token is still sent (its logits start the generation)
    session, keep = cache.take([1, 2, 9, 9], need=20, adapter=None)
    assert session is b and keep == 3
    assert cache.take([1], need=5, adapter=None) == (None, 0) and cache.stats.opened == 1


def test_a_session_sharing_nothing_is_reused_from_the_start():
    cache = PromptCache()
    a = kept(cache, [5, 6, 7])
    assert cache.take([1, 2, 3], need=10, adapter=None) == (a, 0) and a.truncated_to == 0


def test_too_short_or_another_adapters_session_makes_room_instead():
    cache = PromptCache()
    short = kept(cache, [1, 2, 3], max_length=10)
    other = kept(cache, [1, 2, 3], adapter="sql")
    # too short for this generation: not used; the oldest kept one is closed to make room for a new one
    assert cache.take([1, 2, 3, 4], need=11, adapter=None) == (None, 0)
    assert short.closed and not other.closed and len(cache) == 1
    mine = kept(cache, [1, 2], adapter="sql")
    session, keep = cache.take([1, 2, 3, 4], need=11, adapter="sql")
    assert session is other and keep == 3 and not mine.closed


def test_bounds_idle_sessions_and_the_least_recently_kept_go_first():
    clock = Clock()
    cache = PromptCache(PromptCacheConfig(max_sessions=2, max_idle_s=60), clock=clock)
    first = kept(cache, [1])
    clock.now = 30
    second = kept(cache, [2])
    third = kept(cache, [3])
    assert first.closed and not second.closed and len(cache) == 2
    clock.now = 91  # the second kept 61 s ago, the third too: both expire
    assert cache.take([2, 5], need=10, adapter=None) == (None, 0)
    assert second.closed and third.closed and len(cache) == 0 and cache.stats.closed == 3


def test_a_session_that_cannot_be_reused_is_closed_not_kept():
    cache = PromptCache()
    moved = Session([1, 2, 3])
    assert not cache.put(moved, [1, 2], None) and moved.closed  # its servers hold other positions
    gone = Session([1, 2])
    gone.closed = True
    assert not cache.put(gone, [1, 2], None) and len(cache) == 0
    # closed behind the cache's back (the engine shut down): taking it opens a new one
    behind = kept(cache, [1, 2, 3])
    behind.closed = True
    assert cache.take([1, 2, 3, 4], need=10, adapter=None) == (None, 0)


def test_close_closes_what_is_kept_and_keeps_nothing_after():
    cache = PromptCache()
    a, b = kept(cache, [1]), kept(cache, [2])
    cache.close()
    assert a.closed and b.closed and len(cache) == 0
    late = Session([3])
    assert not cache.put(late, [3], None) and late.closed


def test_threads_never_get_the_same_session():
    cache = PromptCache(PromptCacheConfig(max_sessions=4))
    for i in range(4):
        kept(cache, [i, 1, 2])
    got: list = []
    lock = threading.Lock()

    def take(i: int) -> None:
        session, _ = cache.take([i % 4, 1, 2, 3], need=10, adapter=None)
        with lock:
            got.append(session)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [s for s in got if s is not None]
    assert len(taken) == 4 and len({id(s) for s in taken}) == 4 and got.count(None) == 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=8), min_size=1, max_size=5),
       st.lists(st.integers(0, 3), min_size=1, max_size=8))
def test_what_is_reused_is_always_a_shared_prefix_and_leaves_a_token_to_send(contents, prompt):
    cache = PromptCache(PromptCacheConfig(max_sessions=8))
    sessions = {id(kept(cache, tokens)): tokens for tokens in contents}
    session, keep = cache.take(prompt, need=20, adapter=None)
    tokens = sessions[id(session)]
    assert keep == min(common_prefix(tokens, prompt), len(prompt) - 1) == session.position
    assert keep == max(min(common_prefix(t, prompt), len(prompt) - 1) for t in contents)


def test_config_is_checked():
    with pytest.raises(ValueError):
        PromptCacheConfig(max_sessions=0)

"""The prompt cache on a real swarm (SmolLM2 on 2 servers): a chat's next turn reuses the session of the
last one and answers as a fresh session does; a cancelled generation frees its servers; kept sessions
are what the servers hold, and closing the engine frees them."""

from __future__ import annotations

import random
import threading
import time

import pytest

from corolla.api.engine import SwarmEngine
from corolla.api.generation import GenerationCancelled, GenerationOptions, run_generation
from corolla.api.prompt_cache import PromptCacheConfig
from tests.api.test_api import server_info

pytestmark = pytest.mark.slow  # a real pretrained model on real server processes

GREEDY = GenerationOptions(max_tokens=12, temperature=0.0)


def prompt(engine, turns: list[tuple[str, str]]) -> list[int]:
    messages = [{"role": role, "content": text} for role, text in turns]
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.encode(text, add_special_tokens=False)


def answer(engine, ids: list[int]) -> str:
    return "".join(engine.stream(ids, GREEDY))


def held(api_swarm) -> list[int]:
    return [server_info(api_swarm.model, peer).active_sessions for peer in api_swarm.peers]


def wait_held(api_swarm, expected: int, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (now := held(api_swarm)) != [expected] * len(api_swarm.peers):
        assert time.monotonic() < deadline, f"{what}: servers hold {now} sessions, expected {expected} each"
        time.sleep(0.1)


@pytest.fixture
def engines(api_swarm):
    """An engine with the prompt cache and one without, on the shared swarm; the shared API's kept
    sessions are closed first so the servers' session counts are these engines' alone."""
    api_swarm.engine.prompt_cache.clear()
    warm = SwarmEngine(api_swarm.model, prompt_cache=PromptCacheConfig(max_sessions=2))
    cold = SwarmEngine(api_swarm.model, prompt_cache=None)
    yield warm, cold
    warm.close(10)
    cold.close(10)


def test_the_next_turn_reuses_the_last_and_answers_as_a_fresh_session(api_swarm, engines):
    warm, cold = engines
    # sessions that may be kept are opened as long as the servers announce they allow (512 here)
    assert warm._session_length(40) == 512 and cold._session_length(40) == 40
    first = prompt(warm, [("user", "Name three colours.")])
    reply = answer(warm, first)
    assert reply == answer(cold, first)
    assert len(warm.prompt_cache) == 1 and warm.prompt_cache.stats.hits == 0
    wait_held(api_swarm, 1, "the first turn's session kept")  # the cold engine closed its own
    second = prompt(warm, [("user", "Name three colours."), ("assistant", reply), ("user", "And three fruits?")])
    assert answer(warm, second) == answer(cold, second)
    stats = warm.prompt_cache.stats
    assert stats.hits == 1 and stats.reused_tokens >= len(first)  # the first prompt was not sent again
    # the same prompt again: everything but its last token is reused
    assert answer(warm, second) == answer(cold, second)
    assert stats.hits == 2 and stats.reused_tokens >= len(first) + len(second) - 1
    wait_held(api_swarm, 1, "one session, reused each time")


def test_a_cancelled_generation_frees_its_servers_and_a_stopped_one_is_kept(api_swarm, engines):
    warm, _ = engines
    ids = prompt(warm, [("user", "Write a long story about a dragon.")])
    tokens = warm.stream(ids, GenerationOptions(max_tokens=200, temperature=0.0))
    next(tokens)
    wait_held(api_swarm, 1, "the generation's session")
    with pytest.raises(GenerationCancelled):
        tokens.throw(GenerationCancelled())
    assert len(warm.prompt_cache) == 0
    wait_held(api_swarm, 0, "the cancelled generation's session closed")
    tokens = warm.stream(ids, GenerationOptions(max_tokens=200, temperature=0.0))
    next(tokens)
    tokens.close()  # the reader stopped (a stop sequence): kept for the next prompt
    assert len(warm.prompt_cache) == 1
    wait_held(api_swarm, 1, "the stopped generation's session kept")
    warm.close(10)
    wait_held(api_swarm, 0, "closing the engine closes what it kept")


def test_cancel_at_random_moments_from_another_thread_never_leaks_or_changes_an_answer(api_swarm, engines):
    """run_generation cancelled from another thread at a random moment (while the prefill of a reused
    session runs, mid-decode) every other round; every answer that completes equals the fresh session's,
    and the servers hold no more sessions than the cache keeps."""
    warm, cold = engines
    rng = random.Random(7)
    options = GenerationOptions(max_tokens=24, temperature=0.0)
    ids = prompt(warm, [("user", "Count from one to twenty in words.")])
    expected = "".join(cold.stream(ids, options))
    finishes = []
    for round_ in range(10):
        cancel = threading.Event()
        events = []
        timer = threading.Timer(rng.uniform(0.0, 0.4), cancel.set)
        if round_ % 2:
            timer.start()
        run_generation(warm, ids, options, [], cancel, events.append)
        timer.cancel()
        done = events[-1]
        assert type(done).__name__ == "Done", done
        finishes.append(done.finish_reason)
        text = "".join(e.text for e in events[:-1])
        assert text == expected if done.finish_reason != "cancelled" else expected.startswith(text)
        wait_held(api_swarm, len(warm.prompt_cache), "kept sessions only")
    assert "cancelled" in finishes and finishes.count("length") >= 5, finishes


def test_closing_the_engine_at_random_moments_of_a_reused_session_frees_everything(api_swarm, engines):
    """The engine closed (the API shuts down) from another thread while a generation that took a kept
    session runs: the generation ends at once, nothing stays open on the servers."""
    _, cold = engines
    rng = random.Random(11)
    ids = prompt(cold, [("user", "Name the planets of the solar system.")])
    for _ in range(5):
        engine = SwarmEngine(api_swarm.model, prompt_cache=PromptCacheConfig(max_sessions=1))
        answer(engine, ids)  # kept
        events = []
        thread = threading.Thread(target=run_generation,
                                  args=(engine, ids, GREEDY, [], threading.Event(), events.append))
        thread.start()
        time.sleep(rng.uniform(0.0, 0.3))
        engine.close(10)
        thread.join(10)
        assert not thread.is_alive() and type(events[-1]).__name__ in ("Done", "Failed")
        wait_held(api_swarm, 0, "nothing kept after the engine closed")

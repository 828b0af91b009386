"""The repetition stop of the API's generations: loops are caught, legitimate repetitive text is not."""

from __future__ import annotations

import sysconfig
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corolla.api.generation import (
    Delta,
    Done,
    GenerationOptions,
    RepetitionLimits,
    RepetitionStop,
    run_generation,
)

LIMITS = RepetitionLimits()


@pytest.fixture(scope="module")
def tokens():
    """Text -> token texts, with the offline byte-level BPE (a few hundred merges: finer than a real
    model's tokenizer, so it makes more tokens of the same text and is the harder case for non-loops)."""
    from tests.offline_tokenizer import chatml_tokenizer

    tokenizer = chatml_tokenizer(tools=False, fim=False)

    def split(text: str) -> list[str]:
        return [tokenizer.decode([i]) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]

    return split


def first_stop(seq, limits: RepetitionLimits = LIMITS) -> int | None:
    """How many tokens of ``seq`` are generated before the detector stops (None: never)."""
    detector = RepetitionStop(limits)
    for i, token in enumerate(seq):
        if detector.push(token):
            return i + 1
    return None


def brute_force(seq, limits: RepetitionLimits) -> int | None:
    """The same question answered from scratch at every length (the specification)."""
    for n in range(1, len(seq) + 1):
        for p in range(1, limits.max_period + 1):
            run = 0
            while run < n - p and seq[n - 1 - run] == seq[n - 1 - run - p]:
                run += 1
            if run > 0 and run + p >= max(limits.min_tokens, limits.min_repeats * p):
                return n
    return None


# ---- loops are caught --------------------------------------------------------------------------
def test_one_token_over_and_over_stops_at_min_tokens():
    assert first_stop(["\n"] * 1000) == LIMITS.min_tokens
    assert first_stop(["intro", " text", *([" the"] * 1000)]) == 2 + LIMITS.min_tokens


def test_a_sentence_over_and_over(tokens):
    # what the 0.5B model said for 2 min 41 s (issue 20)
    intro = tokens("The function removes common leading whitespace from every line of the text. ")
    sentence = tokens("It matches the depth the project's instructions ask for. ")
    seq = intro + sentence * 100
    stopped = first_stop(seq)
    assert stopped is not None and stopped <= len(intro) + max(LIMITS.min_tokens, 3 * len(sentence))
    assert stopped >= len(intro) + 2 * len(sentence)  # the sentence said twice is not yet a loop


def test_a_long_cycle_needs_three_turns():
    cycle = [f"t{i}" for i in range(100)]  # 100 distinct tokens: a repeated paragraph or code block
    assert first_stop(cycle * 5) == 300
    too_long = [f"t{i}" for i in range(LIMITS.max_period + 1)]
    assert first_stop(too_long * 5) is None  # past max_period: not looked for


# ---- legitimate repetition is not ---------------------------------------------------------------
def test_real_code_passes(tokens):
    source = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    assert first_stop(tokens(source)) is None


@pytest.mark.parametrize("text", [
    "data = [" + ", ".join(["0"] * 60) + "]\n",  # a zero-filled array
    "\n".join(["# " + "-" * 78, "# Section", "# " + "-" * 78, "", "x = 1", ""] * 4),  # separators
    "def f():\n" + "    pass\n" * 12,  # short lines repeated
    "| name | value |\n|---|---|\n" + "".join(f"| row{i} | {i * 7 % 13} |\n" for i in range(80)),  # a long table
    "".join(f"    assert f({i}) == {i * i}\n" for i in range(60)),  # similar lines, not identical
    "=" * 120 + "\n",  # a long rule (one token per character here; a real tokenizer merges runs)
])
def test_repetitive_but_legitimate_text_passes(tokens, text):
    assert first_stop(tokens(text)) is None


def test_limits_are_checked():
    with pytest.raises(ValueError):
        RepetitionLimits(min_repeats=1)
    with pytest.raises(ValueError):
        RepetitionLimits(max_period=0)


# ---- the incremental detector answers as the specification does ---------------------------------
@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=80), st.integers(2, 4), st.integers(1, 6), st.integers(4, 24))
def test_incremental_equals_brute_force(seq, repeats, period, min_tokens):
    limits = RepetitionLimits(max_period=period, min_repeats=repeats, min_tokens=min_tokens)
    assert first_stop(seq, limits) == brute_force(seq, limits)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 1000), max_size=50), st.lists(st.integers(0, 1000), min_size=1, max_size=128))
def test_any_loop_is_caught_in_time(prefix, cycle):
    seq = prefix + cycle * 400
    stopped = first_stop(seq)
    assert stopped is not None and stopped <= len(prefix) + max(LIMITS.min_tokens, LIMITS.min_repeats * len(cycle))


# ---- in a generation ----------------------------------------------------------------------------
class LoopEngine:
    model_id, tokenizer = "loop", None

    def __init__(self, reply: list[str]):
        self.reply, self.yielded = reply, 0

    def stream(self, prompt_ids, options):
        for token in self.reply[:options.max_tokens]:
            self.yielded += 1
            yield token


def generate(engine, options: GenerationOptions) -> tuple[str, Done]:
    events = []
    run_generation(engine, [1, 2, 3], options, [], threading.Event(), events.append)
    return "".join(e.text for e in events if isinstance(e, Delta)), events[-1]


def test_a_generation_in_a_loop_stops_and_says_so():
    engine = LoopEngine(["Hello", "."] + [" Again", " and", " again", "."] * 500)
    text, done = generate(engine, GenerationOptions(max_tokens=1500))
    assert done.finish_reason == "stop" and done.looped and done.completion_tokens == engine.yielded < 300
    assert text.startswith("Hello. Again and again.")
    # turned off, it runs to the token limit
    text, done = generate(LoopEngine(engine.reply), GenerationOptions(max_tokens=1500,
                                                                      repetition=RepetitionLimits(enabled=False)))
    assert done.finish_reason == "length" and not done.looped and done.completion_tokens == 1500

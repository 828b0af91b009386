"""Pure logic of the API: stop sequences, tool calls, prompts, errors, request bodies."""

from __future__ import annotations

import json
import threading

import pytest
from pydantic import ValidationError

from corolla.api import prompts
from corolla.api.errors import APIError, from_exception, from_validation
from corolla.api.generation import Delta, Done, Failed, GenerationOptions, StopScanner, run_generation
from corolla.api.schemas import ChatCompletionRequest, CompletionRequest
from corolla.api.tools import call_prefill, history_for_template, parse_tool_calls, tools_system_prompt
from corolla.errors import BadRequestError, NoRouteError, SequenceTooLongError, ServerBusyError, UnknownModelError

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


# ---- stop sequences ------------------------------------------------------------------------------
def scan(stops, deltas):
    s = StopScanner(stops)
    out = []
    for d in deltas:
        text, hit = s.push(d)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + s.flush(), False


def test_stop_cut_within_one_delta():
    assert scan(["\n\n"], ["Hello", " world\n\nmore"]) == ("Hello world", True)


def test_stop_split_across_deltas_is_held_back_then_cut():
    s = StopScanner(["END"])
    assert s.push("abc E") == ("abc ", False)  # "E" may start "END": held
    assert s.push("N") == ("", False)
    assert s.push("D tail") == ("", True)


def test_held_text_is_released_when_it_is_not_a_stop():
    assert scan(["END"], ["abc E", "x"]) == ("abc Ex", False)
    assert scan(["END"], ["abc EN"]) == ("abc EN", False)  # flushed at the end


def test_earliest_of_several_stops_wins():
    assert scan(["b", "a"], ["xxab"]) == ("xx", True)


def test_no_stops_passes_everything():
    assert scan([], ["a", "b"]) == ("ab", False)


class ScriptEngine:
    def __init__(self, tokens, error=None):
        self.tokens, self.error, self.closed = tokens, error, False

    def stream(self, ids, options):
        try:
            yield from self.tokens[: options.max_tokens]
            if self.error:
                raise self.error
        finally:
            self.closed = True


def run(engine, max_tokens=10, stops=(), cancel=None):
    events = []
    run_generation(engine, [1], GenerationOptions(max_tokens=max_tokens), list(stops),
                   cancel or threading.Event(), events.append)
    return events


def test_finish_reasons_length_stop_and_stop_sequence():
    assert run(ScriptEngine(["a", "b"]), max_tokens=2)[-1] == Done("length", 2)
    assert run(ScriptEngine(["a", "b"]), max_tokens=5)[-1] == Done("stop", 2)  # EOS before the limit
    engine = ScriptEngine(["a", "b!", "c"])
    events = run(engine, stops=["!"])
    assert events == [Delta("a"), Delta("b"), Done("stop", 2)] and engine.closed


def test_cancel_stops_between_tokens_and_closes_the_stream():
    cancel = threading.Event()
    cancel.set()
    engine = ScriptEngine(["a", "b", "c"])
    assert run(engine, cancel=cancel) == [Delta("a"), Done("cancelled", 1)] and engine.closed


def test_slots_queue_generations_and_a_cancelled_waiter_never_starts():
    slots = threading.BoundedSemaphore(1)
    running, peak, lock = [0], [0], threading.Lock()

    class CountingEngine:
        def stream(self, ids, options):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            try:
                yield from ["a", "b", "c"]
            finally:
                with lock:
                    running[0] -= 1

    results = [[] for _ in range(4)]
    threads = [threading.Thread(target=run_generation, args=(CountingEngine(), [1], GenerationOptions(max_tokens=3),
                                                             [], threading.Event(), results[i].append, slots))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 1 and all(r[-1] == Done("length", 3) for r in results)
    slots.acquire()  # the only slot is taken: a cancelled request gives up waiting
    cancel, events = threading.Event(), []
    cancel.set()
    engine = ScriptEngine(["a"])
    run_generation(engine, [1], GenerationOptions(max_tokens=3), [], cancel, events.append, slots)
    assert events == [Done("cancelled", 0)] and not engine.closed  # its stream never started


def test_engine_errors_become_failed_events():
    error = NoRouteError("m", [(0, 3)])
    events = run(ScriptEngine(["a"], error))
    assert events == [Delta("a"), Failed(error)]


# ---- tool calls ----------------------------------------------------------------------------------
def test_parse_a_tool_call_with_content_around():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = parse_tool_calls(text, {"get_weather"})
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    call = calls[0].to_openai()
    assert call["type"] == "function" and call["id"].startswith("call_") and call["function"]["name"] == "get_weather"


def test_parse_several_calls_string_arguments_and_missing_close_tag():
    text = ('<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>\n'
            '<tool_call>{"name": "b", "parameters": {}}')
    content, calls = parse_tool_calls(text, {"a", "b"})
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {})]


@pytest.mark.parametrize("text", [
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
])
def test_a_reply_that_is_only_a_call_object_is_a_call(text):
    content, calls = parse_tool_calls(text, {"get_weather"})
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]


@pytest.mark.parametrize("text", [
    "just text",
    'Use ```{"name": "get_weather", "arguments": {}}``` like this',
    '{"name": "other", "arguments": {}}',
    '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',
    '<tool_call>["get_weather"]</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',
])
def test_what_is_not_a_valid_call_stays_content(text):
    assert parse_tool_calls(text, {"get_weather"}) == (text, [])


def test_tools_prompt_and_prefill():
    prompt = tools_system_prompt([WEATHER], "required")
    assert '"get_weather"' in prompt and "<tool_call>" in prompt and "must call" in prompt
    assert call_prefill(None) == ""
    assert call_prefill("required") == "<tool_call>\n"
    forced = call_prefill("get_weather") + '{"city": "Rome"}}\n</tool_call>'
    assert parse_tool_calls(forced, {"get_weather"})[1][0].arguments == '{"city": "Rome"}'


def test_history_without_native_tools_becomes_text():
    history = history_for_template([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ], native=False)
    assert history[1] == {"role": "assistant",
                          "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
                                     '</tool_call>'}
    assert history[2] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    native = history_for_template([{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": '{"a": 1}'}}]}], native=True)
    assert native[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


# ---- prompts -------------------------------------------------------------------------------------
def test_render_chat_keeps_the_system_prompt_and_describes_tools(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    plain = prompts.render_chat(tokenizer, messages)
    assert "Be brief." in plain and plain.endswith("<|im_start|>assistant\n")
    assert not prompts.template_knows_tools(tokenizer)  # as SmolLM2's: tools go in the system prompt
    with_tools = prompts.render_chat(tokenizer, messages, [WEATHER], "get_weather")
    assert "Be brief." in with_tools and '"get_weather"' in with_tools
    assert with_tools.endswith(call_prefill("get_weather"))
    assert prompts.render_chat(tokenizer, messages, [WEATHER], "none") == plain


class FimVocab:
    def __init__(self, tokens):
        self.tokens, self.reads = tokens, 0

    def get_vocab(self):
        self.reads += 1
        return {t: i for i, t in enumerate(self.tokens)}


def test_fim_prompt_with_qwen_tokens_and_400_without():
    vocab = FimVocab(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|endoftext|>"])
    text, tokens = prompts.fim_prompt(vocab, "def f(", "\n    return x\n")
    assert text == "<|fim_prefix|>def f(<|fim_suffix|>\n    return x\n<|fim_middle|>"
    assert tokens.extra_stops == ("<|fim_pad|>", "<|fim_prefix|>", "<|endoftext|>")
    with pytest.raises(APIError) as info:
        prompts.fim_prompt(FimVocab(["a"]), "x", "y")
    assert info.value.status == 400 and info.value.param == "suffix"


def test_fim_tokens_read_the_vocabulary_once_per_tokenizer():
    # get_vocab() builds the whole vocabulary (~0.1 s for Qwen's): a completion as you type must not pay it
    vocab = FimVocab(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"])
    first = prompts.fim_tokens(vocab)
    assert [prompts.fim_tokens(vocab) for _ in range(3)] == [first] * 3 and vocab.reads == 1
    none = FimVocab(["a"])
    assert prompts.fim_tokens(none) is None and prompts.fim_tokens(none) is None and none.reads == 1
    other = FimVocab(["<fim_prefix>", "<fim_suffix>", "<fim_middle>"])  # another tokenizer: its own answer
    assert prompts.fim_tokens(other).prefix == "<fim_prefix>" and first.prefix == "<|fim_prefix|>"


# ---- errors and bodies ---------------------------------------------------------------------------
@pytest.mark.parametrize("error, status", [
    (NoRouteError("m", [(2, 5)]), 503),
    (ServerBusyError("busy"), 503),
    (SequenceTooLongError("long"), 400),
    (BadRequestError("bad"), 400),
    (UnknownModelError("?"), 500),
    (RuntimeError("boom"), 500),
])
def test_error_mapping(error, status):
    err = from_exception(error)
    assert err.status == status
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}
    assert ("Retry-After" in err.headers) == (status == 503)
    if isinstance(error, NoRouteError):
        assert "blocks 2–4 of m have no server online" in err.message


def test_validation_errors_name_the_parameter():
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=0)
    err = from_validation(info.value.errors())
    assert err.status == 400 and err.param == "max_tokens"


def test_bodies_ignore_unknown_fields_and_normalise_stop_and_prompt():
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"}]}],
                                 stop="x", presence_penalty=0.5, user="u", logprobs=False)
    assert body.stop_list() == ["x"] and body.messages[0].text() == "a"
    assert CompletionRequest(model="m", prompt=["p"]).prompt == "p"
    for bad in ({"temperature": 2.5}, {"top_p": 0}, {"n": 2}, {"stop": ["a"] * 5}):
        with pytest.raises(ValidationError):
            CompletionRequest(model="m", prompt="p", **bad)


def test_cli_registers_api():
    from corolla.cli.main import build_parser

    args = build_parser().parse_args(["api", "smollm2-135m", "--port", "9000", "--api-key", "k",
                                      "--initial-peers", "/ip4/127.0.0.1/tcp/1/p2p/x"])
    assert (args.models, args.host, args.port, args.api_key, args.model_id) == (["smollm2-135m"], "127.0.0.1", 9000,
                                                                               "k", None)
    assert args.func.__name__ == "run_api" and args.max_concurrent == 16
    several = build_parser().parse_args(["api", "a", "b", "--initial-peers", "/ip4/127.0.0.1/tcp/1/p2p/x"])
    assert several.models == ["a", "b"]
    assert build_parser().parse_args(["api", "--initial-peers", "/ip4/127.0.0.1/tcp/1/p2p/x"]).models == []

"""Completions as you type (corolla.assistant.completions; its pure parts in corolla.assistant.fim): the
shape at the cursor, the prompt within its budget, cutting and cleaning the streamed middle, snippets from
open tabs and the repo map, and the service's ``POST /completions`` over the real API (a scripted model):
cache, skip, supersede, and a cancelled request that stops the generation and frees its session."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import pytest

from corolla.api.app import create_app
from corolla.api.server import serving
from corolla.assistant.completions import Completer, CompletionRequest
from corolla.assistant.context.budget import approx_tokens
from corolla.assistant.core import Assistant
from corolla.assistant.fim import (
    CompletionConfig,
    Cutter,
    Snippet,
    build_prompt,
    definition_text,
    finish,
    line_comment,
    near_identifiers,
    normalize_language,
    plan,
)
from corolla.assistant.llm import LLM, LLMConfig
from corolla.assistant.service import create_service
from tests.assistant.scripted import ScriptedModel

FIM = re.compile(r"<\|fim_prefix\|>(.*)<\|fim_suffix\|>(.*)<\|fim_middle\|>", re.DOTALL)


# ---- the shape at the cursor ------------------------------------------------------------------
@pytest.mark.parametrize("prefix, suffix, language, multiline, reason", [
    ("def f(x):\n    ", "\n", "python", True, "empty block"),  # Enter after a def: the body
    ("def f(x):\n    ", "\n\n\ndef g():\n    pass\n", "python", True, "empty block"),  # the next def is not in it
    ("def f(x):", "\n", "python", True, "empty block"),  # at the end of the opening line itself
    ("class A:\n    def f(self):\n        ", "\n\n    def g(self):\n", "python", True, "empty block"),
    ("if x:  # why\n    ", "", "python", True, "empty block"),  # a comment after the colon
    ("def f(x):\n    ", "\n    return x\n", "python", False, "already has a body"),
    ("x = 1\n", "\ny = 2\n", "python", False, "one line"),
    ("def f(x):\n    y = 1\n    ", "\n", "python", False, "one line"),  # inside a body, after a statement
    ("print(", ")\n", "python", False, "one line"),  # closing brackets may follow the cursor
    ("function f() {\n  ", "\n}\n", "javascript", True, "empty block"),
    ("const o = {\n  ", "\n};\n", "typescript", True, "empty block"),
    ("if (a) {\n    ", "\n", "typescriptreact", True, "empty block"),
    ("function f() {\n  ", "\n  return 1;\n}\n", "javascript", False, "already has a body"),
    ("const x = 1;\n", "\n", "typescript", False, "one line"),
    ("key:\n  ", "\n", "yaml", True, "empty block"),
    ("a = x:\n    ", "\n", "javascript", False, "one line"),  # ":" opens blocks in Python and YAML only
])
def test_plan_one_line_or_a_block(prefix, suffix, language, multiline, reason):
    shape = plan(prefix, suffix, normalize_language(language, None))
    assert not shape.skip
    assert shape.multiline is multiline and reason in shape.reason


@pytest.mark.parametrize("prefix, suffix, why", [
    ("x = fo", "o(1)\n", "inside a word"),
    ("x = ", "foo(1)\n", "code follows"),
    ("return ", "a + b\n", "code follows"),
])
def test_plan_skips_inside_words_and_before_code(prefix, suffix, why):
    shape = plan(prefix, suffix, "python")
    assert shape.skip and why in shape.reason


def test_plan_forced_by_the_editor_and_languages():
    assert plan("x = 1\n", "\n", "python", multiline=True).multiline
    assert not plan("def f():\n    ", "\n", "python", multiline=False).multiline
    assert normalize_language(None, "src/app.tsx") == "tsx" and normalize_language("typescriptreact", None) == "tsx"
    assert normalize_language("javascriptreact", "a.jsx") == "javascript"
    assert (line_comment("python"), line_comment("go"), line_comment("sql"), line_comment("markdown")) == \
        ("#", "//", "--", None)


# ---- cutting the stream ------------------------------------------------------------------------
def cut(prefix: str, suffix: str, pieces: list[str], language: str = "python", max_lines: int = 16,
        multiline: bool | None = None) -> tuple[str, str | None, int]:
    """(text kept, reason, pieces read before the cutter said stop)."""
    shape = plan(prefix, suffix, language, multiline=multiline)
    cutter = Cutter(shape, prefix, suffix, max_lines)
    for n, piece in enumerate(pieces, 1):
        if cutter.push(piece):
            return cutter.text, cutter.reason, n
    return cutter.text, cutter.reason, len(pieces)


def test_one_line_stops_at_the_newline():
    assert cut("x = ", "\n", ["compute", "(a)", "\nprint", "(x)"]) == ("compute(a)", "end_of_line", 3)


def test_one_line_stops_where_a_comment_follows_its_code():
    assert cut("    ", "\n", ["result = []", "  # Initialize", " an empty list"]) == ("result = []", "comment", 2)
    assert cut("x = ", "\n", ["f(a) ", "// note"], language="javascript") == ("f(a)", "comment", 2)
    # a comment line is completed whole; so is one the user began, and a # inside a string
    assert cut("    ", "\n", ["# Initialize the", " list", "\n"]) == ("# Initialize the list", "end_of_line", 3)
    assert cut("x = 1  # the ", "\n", ["count", "\n"]) == ("count", "end_of_line", 2)
    assert cut("c = ", "\n", ['"a  # b"', "\n"]) == ('"a  # b"', "end_of_line", 2)
    # a block's lines keep their comments
    assert cut("if x:\n", "\n", ["    y = 1  # one\n", "z = 2\n"])[0] == "    y = 1  # one"


def test_a_python_block_stops_at_the_first_line_out_of_it():
    text, reason, read = cut("def f(x):\n    ", "\n\n\ndef g():\n    pass\n",
                             ["if x:\n", "        return 1\n", "    return 2\n", "\n", "\n", "def h", "():\n"])
    assert text.rstrip() == "if x:\n        return 1\n    return 2" and reason == "block_end"
    assert read == 6  # stopped as soon as "def h" showed the dedent, not at the end of the stream


def test_a_brace_block_keeps_its_closing_line_only_when_the_suffix_lacks_it():
    pieces = ["return a", " + b;", "\n}", "\n\nfunction g() {"]
    assert cut("function f(a, b) {\n  ", "\n", pieces, "javascript")[:2] == ("return a + b;\n}", "block_end")
    assert cut("function f(a, b) {\n  ", "\n}\n", pieces, "javascript")[:2] == ("return a + b;", "block_end")


def test_a_block_is_cut_after_max_lines():
    text, reason, _ = cut("def f():\n    ", "\n", ["x = 1\n"] + ["    x += 1\n"] * 10, max_lines=4)
    assert reason == "max_lines" and text.count("\n") == 3


# ---- cleaning the result -----------------------------------------------------------------------
@pytest.mark.parametrize("prefix, suffix, raw, shown", [
    ("print(", ")\n", '"hi")', '"hi"'),  # the model closed the bracket the suffix closes already
    ("x = g(", ")\n", "f(a)", "f(a)"),  # its own bracket: kept
    ("x = g(", ")\n", "f(a))", "f(a)"),
    ("for x in xs", ":\n", "[1:]:", "[1:]"),  # a repeated colon (no brackets in the rest of the line)
    ("x = ", "\n", "1   ", "1"),
    ("x = ", "\n", "   ", ""),
])
def test_finish_trims_what_repeats_the_rest_of_the_line(prefix, suffix, raw, shown):
    assert finish(raw, plan(prefix, suffix, "python"), prefix, suffix) == shown


def test_finish_trims_a_block_that_repeats_what_follows_it():
    prefix, suffix = "function f() {\n  ", "\n}\nexport default f;\n"
    raw = "return 1;\n}\nexport default f;\n\n"
    assert finish(raw, plan(prefix, suffix, "javascript"), prefix, suffix) == "return 1;"


# ---- the prompt --------------------------------------------------------------------------------
def lines_of(n: int, name: str = "x") -> str:
    return "\n".join(f"{name}{i} = compute({i}, {i + 1})" for i in range(n))


@pytest.mark.parametrize("budget", [96, 256, 640])
def test_the_prompt_fits_its_budget_and_keeps_the_cursor(budget):
    config = CompletionConfig(budget_tokens=budget, suffix_tokens=budget // 4)
    prefix, suffix = lines_of(500) + "\ny = ", "\n" + lines_of(500, "z")
    prompt = build_prompt(prefix, suffix, approx_tokens, config, language="python")
    assert prompt.tokens <= budget
    assert prompt.prefix.endswith("x499 = compute(499, 500)\ny = ") and prompt.suffix.startswith("\nz0 = ")
    assert approx_tokens(prompt.suffix) <= config.suffix_tokens
    assert prompt.prefix_lines > prompt.suffix_lines > 1  # the prefix gets the rest of the budget
    whole = build_prompt("def f():\n    ", "\n", approx_tokens, config, language="python")
    assert (whole.prefix, whole.suffix) == ("def f():\n    ", "\n")  # a small file is sent whole


def test_a_block_gets_a_bigger_prompt_than_a_line():
    config = CompletionConfig(budget_tokens=64, suffix_tokens=16, block_budget_tokens=256, block_suffix_tokens=64)
    prefix, suffix = lines_of(500) + "\ny = ", "\n" + lines_of(500, "z")
    line = build_prompt(prefix, suffix, approx_tokens, config, language="python")
    block = build_prompt(prefix, suffix, approx_tokens, config, language="python", block=True)
    assert line.tokens <= 64 < block.tokens <= 256
    assert approx_tokens(line.suffix) <= 16 < approx_tokens(block.suffix) <= 64


def test_the_window_keeps_its_start_while_typing_so_the_prompt_grows_at_its_end():
    config = CompletionConfig(budget_tokens=96, suffix_tokens=16)
    text = lines_of(200)
    prefix, suffix = text + "\ny = ", "\n" + lines_of(50, "z")
    first = build_prompt(prefix, suffix, approx_tokens, config, language="python")
    typed = prefix + "compute(1"
    fresh = build_prompt(typed, suffix, approx_tokens, config, language="python")
    sticky = build_prompt(typed, suffix, approx_tokens, config, language="python", start_line=first.first_line)
    assert fresh.first_line > first.first_line  # without it the window slides: another prompt from its start
    assert sticky.first_line == first.first_line and sticky.prefix == first.prefix + "compute(1"
    assert sticky.suffix == first.suffix and sticky.tokens <= 96 * 1.25 + 16
    # lines later the window has grown past its slack: it starts afresh
    later = text + "\n" + "\n".join(f"w{i} = compute({i})" for i in range(12)) + "\ny = "
    moved = build_prompt(later, suffix, approx_tokens, config, language="python", start_line=first.first_line)
    assert moved.first_line > first.first_line and moved.tokens <= 96
    # above the last window (the cursor moved up): a fresh window too
    up = build_prompt(lines_of(20) + "\ny = ", suffix, approx_tokens, config, language="python",
                      start_line=first.first_line)
    assert up.first_line < first.first_line and up.tokens <= 96


def test_the_completer_remembers_each_files_window(project):
    completer = completer_for(project, budget_tokens=64, suffix_tokens=8, repo_map=False)
    prefix = lines_of(100) + "\ny = "
    first = completer.prompt(CompletionRequest(prefix, "\n", "calc.py", "python"))
    typed = prefix + "compute(1, 2) + compute("
    again = completer.prompt(CompletionRequest(typed, "\n", "calc.py", "python"))
    other = completer.prompt(CompletionRequest(typed, "\n", "other.py", "python"))
    assert again.first_line == first.first_line and again.prefix.startswith(first.prefix)
    assert other.first_line > first.first_line  # another file's window is its own


def test_an_over_long_line_is_clipped_from_its_start():
    prompt = build_prompt("x = '" + "a" * 5000, "'\n", approx_tokens, CompletionConfig(budget_tokens=128),
                          language="python")
    assert prompt.tokens <= 128 and prompt.prefix.endswith("aaaa") and prompt.prefix_lines == 1


def test_snippets_go_first_as_comments_within_their_share():
    config = CompletionConfig(budget_tokens=400, snippet_tokens=60, max_snippets=2)
    seen: list[int] = []

    def candidates(first_visible: int) -> list[Snippet]:
        seen.append(first_visible)
        return [Snippet("util.py", 3, "scale", "def scale(v, k):\n    return v * k"),
                Snippet("big.py", 1, "huge", "\n".join(f"line {i}" for i in range(60))),  # too big: skipped
                Snippet("vec.py", 9, "Vec", "class Vec:\n    def norm(self):"),
                Snippet("more.py", 1, "more", "def more():")]  # past max_snippets
    prefix = lines_of(300) + "\ny = scale("
    prompt = build_prompt(prefix, ")\n", approx_tokens, config, candidates, "python")
    assert [s.name for s in prompt.snippets] == ["scale", "Vec"]
    assert prompt.prefix.startswith("# Path: util.py\n# def scale(v, k):\n#     return v * k\n# Path: vec.py\n")
    head = prompt.prefix[: prompt.prefix.index("x")]
    assert approx_tokens(head) <= 60 and prompt.tokens <= 400
    assert len(seen) == 1 and 1 < seen[0] <= 301  # the first line of the (tentative) prefix window
    none = build_prompt("y = ", "\n", approx_tokens, config, candidates, "markdown")  # no comment syntax: none
    assert none.snippets == () and none.prefix == "y = "


def test_identifiers_near_the_cursor_closest_first():
    prefix = "import os\nfrom util import scale\n\n\ndef area(shape):\n    width = shape.width\n    return scale("
    assert near_identifiers(prefix, ")\n", lines=3)[:3] == ["scale", "width", "shape"]
    assert "import" not in near_identifiers(prefix, "", lines=8)  # keywords and short words are left out


def test_definition_text_of_a_function_a_class_and_a_brace_block():
    source = ("class Vec:\n    def __init__(self, x):\n        self.x = x\n\n    def norm(self):\n"
              "        return abs(self.x)\n\n\ndef scale(v, k):\n    '''Scale.'''\n    return v * k\n\nX = 1\n")
    lines = source.split("\n")
    from corolla.assistant.context.symbols import extract_symbols

    symbols = extract_symbols(source.encode(), "python")
    by_name = {s.name: s for s in symbols}
    assert definition_text(lines, by_name["scale"], symbols, 10) == \
        "def scale(v, k):\n    '''Scale.'''\n    return v * k"
    assert definition_text(lines, by_name["Vec"], symbols, 3) == \
        "class Vec:\n    def __init__(self, x):\n    def norm(self):"
    js = "function add(a, b) {\n  return a + b;\n}\nconst z = 1;\n".split("\n")
    symbols = extract_symbols("\n".join(js).encode(), "javascript")
    assert definition_text(js, symbols[0], symbols, 10) == "function add(a, b) {\n  return a + b;\n}"


# ---- snippets from the workspace ----------------------------------------------------------------
UTIL = "def scale(v, k):\n    return v * k\n\n\ndef unused():\n    pass\n"
GEOMETRY = "class Rect:\n    def __init__(self, w, h):\n        self.w, self.h = w, h\n"


@pytest.fixture()
def project(tmp_path):
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "util.py").write_text(UTIL)
    (root / "pkg" / "geometry.py").write_text(GEOMETRY)
    (root / "app.py").write_text("")
    return root


def completer_for(root, **config) -> Completer:
    async def never(prompt, params):  # these tests only build prompts
        raise AssertionError("no model here")
        yield ""

    return Completer(root, lambda: approx_tokens, upstream=never, config=CompletionConfig(**config))


def test_snippets_from_open_tabs_the_repo_map_and_the_current_file(project):
    completer = completer_for(project, budget_tokens=640, snippet_tokens=128)
    prefix = ("from pkg.geometry import Rect\n\n\ndef helper_far_above(a):\n    return a\n" + "\n" * 3
              + lines_of(120) + "\n\ndef area(r: Rect):\n    value = helper_far_above(1)\n    return scale(")
    request = CompletionRequest(prefix, ")\n", "app.py", "python", open_files=("pkg/util.py",))
    prompt = completer.prompt(request)
    labels = [s.label for s in prompt.snippets]
    assert labels[0] == "pkg/util.py:1 scale"  # an open tab's definition of the closest identifier
    assert "app.py:4 helper_far_above" in labels  # the current file's, above the window
    assert "pkg/geometry.py:1 Rect" in labels  # the repo map's (imported by the current file)
    assert "# Path: pkg/util.py\n# def scale(v, k):\n#     return v * k\n" in prompt.prefix
    assert "unused" not in prompt.prefix


def test_an_unsaved_buffer_wins_and_unsafe_paths_are_ignored(project):
    completer = completer_for(project)
    request = CompletionRequest("y = scale(", ")\n", "app.py", "python", open_files=("pkg/util.py", "../x.py"),
                                buffers={"pkg/util.py": "def scale(v, k, unsaved=True):\n    return v\n"})
    prompt = completer.prompt(request)
    assert "# def scale(v, k, unsaved=True):" in prompt.prefix
    visible = completer.prompt(CompletionRequest("def scale(v):\n    return v\n\ny = scale(", ")\n", "app.py"))
    assert visible.snippets == ()  # its definition is in the window already: and the repo map's is shadowed


def test_a_warm_prompt_is_quick(project):
    completer = completer_for(project)
    request = CompletionRequest(lines_of(2000) + "\ny = scale(", ")\n", "app.py", "python",
                                open_files=("pkg/util.py", "pkg/geometry.py"))
    completer.prompt(request)
    start = time.perf_counter()
    for _ in range(5):
        completer.prompt(request)
    assert (time.perf_counter() - start) / 5 < 0.5  # generous: a shared 2-core machine; ~10 ms alone


# ---- the service over the real API with a scripted model ------------------------------------------
def fim_reply(prompt: str) -> str:
    """The scripted model's answer to a FIM prompt, by what the prefix ends with."""
    match = FIM.search(prompt)
    if not match:
        return "SCRIPTED: not a FIM prompt"
    prefix = match[1]
    if prefix.endswith("return "):
        return "a + b\nprint('not this line')"
    if prefix.endswith("def double(x):\n    "):
        return "y = 2 * x\n    return y\n\n\ndef other():\n    pass\n"
    if prefix.endswith("print("):
        return '"hi")'
    if prefix.endswith("total = "):
        return "0  # the running total\nprint(total)"
    return ""


@pytest.fixture()
def fim_service(tmp_path):
    model = ScriptedModel([(lambda prompt: True, fim_reply)])
    root = tmp_path / "ws"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    with serving(create_app(model, web_dir=None), "127.0.0.1", 0) as api:
        assistant = Assistant(LLM(LLMConfig(endpoint=f"{api}/v1")), root)
        with serving(create_service(assistant), "127.0.0.1", 0) as url:
            with httpx.Client(base_url=url, timeout=60) as client:
                yield model, client


def test_service_completes_one_line_a_block_and_caches(fim_service):
    model, client = fim_service
    body = {"prefix": "def add(a, b):\n    return ", "suffix": "\n", "path": "calc.py", "language": "python"}
    first = client.post("/completions", json=body).json()
    assert first["completion"] == "a + b" and first["multiline"] is False and first["cached"] is False
    assert first["finish_reason"] == "stop" and first["first_token_s"] is not None  # the API stopped at "\\n"
    assert first["prompt_tokens"] > 0
    assert model.requests[-1].options.max_tokens == 48  # a line's budget
    again = client.post("/completions", json=body).json()
    assert again["completion"] == "a + b" and again["cached"] is True and len(model.requests) == 1
    block = client.post("/completions", json={"prefix": "def double(x):\n    ", "suffix": "\n",
                                              "path": "calc.py"}).json()
    assert block["multiline"] is True and block["completion"] == "y = 2 * x\n    return y"
    assert block["finish_reason"] == "block_end"
    commented = client.post("/completions", json={"prefix": "total = ", "suffix": "\n", "path": "calc.py"}).json()
    assert commented["completion"] == "0" and commented["finish_reason"] == "stop"  # the API stopped at "  # "
    trimmed = client.post("/completions", json={"prefix": "print(", "suffix": ")\n", "path": "calc.py"}).json()
    assert trimmed["completion"] == '"hi"'
    skipped = client.post("/completions", json={"prefix": "x = ad", "suffix": "d(1)\n"}).json()
    assert skipped["finish_reason"] == "skipped" and skipped["completion"] == ""
    stats = client.get("/completions/stats").json()
    assert stats["requests"] == 6 and stats["cached"] == 1 and stats["skipped"] == 1 and stats["upstream_open"] == 0
    assert client.post("/completions", json={"suffix": ""}).status_code == 400


def test_service_says_when_the_endpoint_is_down(tmp_path):
    assistant = Assistant(LLM(LLMConfig(endpoint="http://127.0.0.1:9/v1", model="m")), tmp_path)
    with serving(create_service(assistant), "127.0.0.1", 0) as url:
        reply = httpx.post(f"{url}/completions", json={"prefix": "x = ", "suffix": "\n"}, timeout=60)
    assert reply.status_code == 503 and reply.json()["error"]["type"] == "EndpointError"
    assert "cannot reach the model endpoint" in reply.json()["error"]["message"]


class SlowModel(ScriptedModel):
    """A model that takes ``first_s`` before its first token (a prefill) and ``step_s`` for each next one,
    and counts its open generations (as the swarm's engine counts its inference sessions)."""

    def __init__(self, first_s: float, step_s: float, tokens: int = 200):
        super().__init__()
        self.first_s, self.step_s, self.tokens = first_s, step_s, tokens
        self.open = self.yielded = 0
        self.started = threading.Event()

    def stream(self, prompt_ids, options):
        self.open += 1
        self.started.set()
        tokens = 5 if "short" in self.tokenizer.decode(prompt_ids) else self.tokens
        try:
            time.sleep(self.first_s)
            for i in range(min(tokens, options.max_tokens)):
                if i:
                    time.sleep(self.step_s)
                self.yielded += 1
                yield " word"
        finally:
            self.open -= 1


def slow_service(model: SlowModel, root):
    import contextlib

    @contextlib.contextmanager
    def served():
        with serving(create_app(model, web_dir=None), "127.0.0.1", 0) as api:
            assistant = Assistant(LLM(LLMConfig(endpoint=f"{api}/v1", model="scripted")), root)
            app = create_service(assistant)
            with serving(app, "127.0.0.1", 0) as url:
                yield url, app.state.completer

    return served()


def wait_for(predicate, what: str, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("first_s", [0.0, 1.0], ids=["while-generating", "during-the-prefill"])
def test_an_abandoned_request_stops_the_generation_and_frees_its_session(tmp_path, first_s):
    model = SlowModel(first_s=first_s, step_s=0.05)  # 200 tokens: 10 s if nobody stops it
    with slow_service(model, tmp_path) as (url, completer):
        body = {"prefix": "x = ", "suffix": "\n", "multiline": True}  # no newline comes: only a hang-up stops it
        with pytest.raises(httpx.ReadTimeout):  # the editor gives up (the user typed on): the connection closes
            httpx.post(f"{url}/completions", json=body, timeout=httpx.Timeout(10, read=0.5))
        wait_for(lambda: completer.stats.cancelled == 1, "the service to see the hang-up")
        wait_for(lambda: completer.stats.upstream_open == 0, "the service to close its stream to the endpoint", 2)
        wait_for(lambda: model.started.is_set() and model.open == 0, "the generation to stop", first_s + 5)
        assert model.yielded < 40, f"{model.yielded} tokens were generated after the hang-up"


def test_a_newer_request_for_the_same_file_supersedes_the_older(tmp_path):
    model = SlowModel(first_s=0.0, step_s=0.05)

    async def both(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            older = asyncio.create_task(client.post("/completions", json={
                "prefix": "x = ", "suffix": "\n", "path": "a.py", "multiline": True}))
            await asyncio.to_thread(model.started.wait, 20)  # the older one is generating
            newer = await client.post("/completions", json={"prefix": "short = ", "suffix": "\n", "path": "a.py"})
            return (await older).json(), newer.json()

    with slow_service(model, tmp_path) as (url, completer):
        older, newer = asyncio.run(both(url))
        assert older["finish_reason"] == "superseded" and older["completion"] == ""
        assert newer["completion"] == " word" * 5
        assert completer.stats.superseded == 1
        wait_for(lambda: model.open == 0, "every generation to stop")
        assert model.yielded < 60


# ---- on a real swarm (the packaged Qwen2.5-Coder-0.5B) ----------------------------------------------------
@pytest.mark.slow
def test_on_the_swarm_a_line_and_an_abandoned_completion_frees_its_server_session(coder_api, tmp_path):
    from tests.api.test_api import server_info

    assistant = Assistant(LLM(LLMConfig(endpoint=f"{coder_api.base}/v1", model=coder_api.model_id)), tmp_path)
    app = create_service(assistant)
    completer = app.state.completer
    peers = [s["peer_id"] for s in httpx.get(f"{coder_api.base}/api/swarm", timeout=30).json()["models"][0]["servers"]]

    def active() -> list[int]:
        return [server_info(coder_api.model, peer).active_sessions for peer in peers]

    with serving(app, "127.0.0.1", 0) as url:
        line = httpx.post(f"{url}/completions", timeout=300, json={
            "prefix": "def add(a, b):\n    return ", "suffix": "\n\n\nprint(add(1, 2))\n", "path": "calc.py"}).json()
        assert "a + b" in line["completion"] and "\n" not in line["completion"] and line["first_token_s"] > 0
        body = {"prefix": "# a long list of fruit names, one a line\nFRUIT = [\n    ", "suffix": "\n]\n",
                "path": "fruit.py", "multiline": True}
        with pytest.raises(httpx.ReadTimeout):  # the editor gives up before the block is done
            httpx.post(f"{url}/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
        wait_for(lambda: completer.stats.cancelled == 1 and completer.stats.upstream_open == 0,
                 "the service to close its stream", 10)
        # the line's session stays in the API's prompt cache (the next keystroke reuses it); the abandoned
        # block's is closed
        kept = coder_api.engine.prompt_cache
        wait_for(lambda: active() == [len(kept)] * len(peers), "the server to close the session", 120)

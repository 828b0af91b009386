"""`corolla explain textwrap.py:A-B` on the body of `dedent` without its `def` line (issue 20): the context
names the definitions the lines are inside of, and the prompt mentions only the context that exists."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from corolla.assistant.context import build_context
from corolla.assistant.context.enclosing import enclosing, scope_note, scopes_at
from corolla.assistant.context.types import EditorState

TEXTWRAP = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
LINES = TEXTWRAP.splitlines()


def line_of(prefix: str) -> int:
    return 1 + next(i for i, x in enumerate(LINES) if x.startswith(prefix))


DEDENT = line_of("def dedent(")
INDENT = line_of("def indent(")
WRAP_CHUNKS = line_of("    def _wrap_chunks(")
CLASS = line_of("class TextWrapper")
BODY = (DEDENT + 6, INDENT - 2)  # inside dedent, its def line left out (as in the issue, 425-470 there)


@pytest.fixture()
def project(tmp_path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "textwrap.py").write_text(TEXTWRAP)
    return root


def test_a_body_without_its_def_line_is_named():
    note = scope_note(TEXTWRAP, "textwrap.py", *BODY)
    assert note == f"These lines are inside `def dedent(text):` (line {DEDENT}), whose header is not part of them."
    # the range ran one line into the next function: what it starts inside of is what counts
    assert "dedent" in scope_note(TEXTWRAP, "textwrap.py", BODY[0], INDENT)


def test_a_method_names_its_class_and_itself():
    scopes = enclosing(TEXTWRAP, "textwrap.py", WRAP_CHUNKS + 20, WRAP_CHUNKS + 30)
    assert [(s.kind, s.name, s.start_line) for s in scopes] == [("class", "TextWrapper", CLASS),
                                                                ("method", "_wrap_chunks", WRAP_CHUNKS)]
    note = scope_note(TEXTWRAP, "textwrap.py", WRAP_CHUNKS + 20, WRAP_CHUNKS + 30)
    assert f"`class TextWrapper:` (line {CLASS}) > `def _wrap_chunks(self, chunks):` (line {WRAP_CHUNKS})" in note


def test_headers_inside_the_range_or_at_the_top_level_are_not_repeated():
    assert scope_note(TEXTWRAP, "textwrap.py", DEDENT, DEDENT + 10) == ""  # the def line is selected
    assert scope_note(TEXTWRAP, "textwrap.py", 1, 5) == ""  # the module's docstring
    assert scope_note(TEXTWRAP, "notes.txt", *BODY) == ""  # no grammar: nothing said


def test_multi_line_headers_and_braces():
    init = line_of("    def __init__(")
    (_, method) = scopes_at(TEXTWRAP, "textwrap.py", init + 20)
    assert method.header.startswith("def __init__(self, width=70, initial_indent=") and method.start_line == init
    js = "class Cart {\n  total(items) {\n    let t = 0;\n    return t;\n  }\n}\n"
    assert scope_note(js, "cart.js", 3, 4) == ("These lines are inside `class Cart {` (line 1) > `total(items) {` "
                                               "(line 2), whose headers are not part of them.")


def test_the_selection_part_of_the_context_carries_the_header(project):
    state = EditorState(root=project, current_file="textwrap.py", selection=BODY)
    context = build_context(state, "", budget_tokens=4000)
    (selection,) = [p for p in context.parts if p.kind == "selection"]
    assert f"`def dedent(text):` (line {DEDENT})" in selection.text
    assert selection.text.index("def dedent") < selection.text.index("```")  # before the code, not in it


# ---- through the assistant: /explain and /fix ---------------------------------------------------
@pytest.fixture()
def make_assistant(scripted, llm_model):
    from corolla.assistant.core import Assistant, AssistantConfig
    from corolla.assistant.llm import LLM, LLMConfig

    _, base = scripted
    return lambda root: Assistant(LLM(LLMConfig(endpoint=base, model=None)), root,
                                  config=AssistantConfig(edit_format="whole"))


def test_explain_names_the_function_and_no_absent_instructions(make_assistant, llm_model, project):
    llm_model.add("Explain", "It is the body of dedent.")
    assistant = make_assistant(project)
    list(assistant.respond("/explain", assistant.state(current_file="textwrap.py", selection=BODY)))
    prompt = llm_model.requests[-1].prompt
    assert f"`def dedent(text):` (line {DEDENT})" in prompt
    assert "instructions" not in prompt.lower()  # the workspace has none: nothing is said of them
    assert "for a working programmer" in prompt

    (project / "AGENTS.md").write_text("Explain for a beginner.\n")
    list(assistant.respond("/explain", assistant.state(current_file="textwrap.py", selection=BODY)))
    prompt = llm_model.requests[-1].prompt
    assert "Match the depth the project's instructions ask for" in prompt and "Explain for a beginner" in prompt


def test_fix_of_a_body_carries_the_header_outside_the_code(make_assistant, llm_model, project):
    assistant = make_assistant(project)
    body = "\n".join(LINES[BODY[0] - 1:BODY[1]])
    llm_model.queue(f"```python\n{body.replace('if margin:', 'if margin is not None:')}\n```")
    state = assistant.state(current_file="textwrap.py", selection=BODY, diagnostics=("dedent is wrong",))
    outcome = assistant.fix("", state)
    assert "+    if margin is not None:" in outcome.proposal.diff and "def dedent" not in outcome.proposal.diff
    prompt = llm_model.requests[0].prompt
    assert f"`def dedent(text):` (line {DEDENT})" in prompt
    assert prompt.index("def dedent(text):") < prompt.index(f"textwrap.py (lines {BODY[0]}-{BODY[1]})")
    assert prompt.count("dedent is wrong") == 1  # under "Problems reported", not also as a context part

"""`corolla fix` as a new user tried it: a copy of the standard library's textwrap.py with a bug injected in
`shorten` (``split(',')`` for ``split()``), and the reply the 0.5B model gave: `shorten` fixed but sent back
four spaces deeper, which nested it inside `fill`. Replayed through the scripted model; also ``--check``."""

from __future__ import annotations

import importlib.util
import shlex
import sys
import sysconfig
from pathlib import Path

import pytest

from corolla.assistant.check import CheckConfig, checked_fix
from corolla.assistant.errors import CheckFailedError
from tests.assistant.test_cli_assistant import corolla

CHECK_SCRIPT = '''\
import textwrap

got = textwrap.shorten("Hello  world!", width=12)
assert got == "Hello world!", f"textwrap.shorten('Hello  world!', width=12) returned {got!r}, not 'Hello world!'"
'''
ERROR = "AssertionError: textwrap.shorten('Hello  world!', width=12) returned 'Hello [...]', not 'Hello world!'"


class Project:
    """A folder with the standard library's textwrap.py, `shorten` broken; ``lines`` is the range of `shorten`."""

    def __init__(self, root: Path):
        self.root = root
        self.original = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
        self.buggy = self.original.replace("text.strip().split()))", "text.strip().split(',')))")
        assert self.buggy.count("split(',')") == 1  # the injection hit shorten's last line only
        lines = self.buggy.splitlines(keepends=True)
        self.start = 1 + next(i for i, x in enumerate(lines) if x.startswith("def shorten("))
        self.end = 1 + next(i for i, x in enumerate(lines) if "split(',')" in x)
        self.fill_start = 1 + next(i for i, x in enumerate(lines) if x.startswith("def fill("))
        self.file = root / "textwrap.py"
        self.file.write_text(self.buggy)
        (root / "check_shorten.py").write_text(CHECK_SCRIPT)
        self.check = f"{shlex.quote(sys.executable)} check_shorten.py"

    def block(self, start: int, end: int, fixed: bool = True) -> str:
        text = "".join(self.buggy.splitlines(keepends=True)[start - 1:end])
        return text.replace("split(',')", "split()") if fixed else text

    @property
    def spec(self) -> str:
        return f"textwrap.py:{self.start}-{self.end}"

    def disk(self) -> bytes:
        return self.file.read_bytes()


def deeper(code: str, by: str = "    ") -> str:
    """``code`` with every non-blank line indented by ``by`` (what the 0.5B model sent back)."""
    return "".join(by + x if x.strip() else x for x in code.splitlines(keepends=True))


def fenced(code: str) -> str:
    return f"Here is the fixed function:\n```python\n{code}```\n"


def load(file: Path):
    spec = importlib.util.spec_from_file_location("textwrap_under_test", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def project(tmp_path) -> Project:
    root = tmp_path / "textwrap_project"
    root.mkdir()
    return Project(root)


@pytest.fixture()
def assistant(scripted, llm_model, project):
    """The assistant over the textwrap project (not the conftest's calc.py workspace)."""
    from corolla.assistant.core import Assistant, AssistantConfig
    from corolla.assistant.llm import LLM, LLMConfig

    _, base = scripted
    return Assistant(LLM(LLMConfig(endpoint=base, model=None)), project.root,
                     config=AssistantConfig(edit_format="whole"))


def test_the_lines_are_shorten_and_the_bug_shows(project):
    assert project.block(project.start, project.end, fixed=False).startswith("def shorten(text, width, **kwargs):")
    assert load(project.file).shorten("Hello  world!", width=12) == "Hello [...]"


# --- the reply as the model gave it: re-indented to the selection's base, so `shorten` stays top-level ---
def test_the_deeper_reply_is_reindented_and_fixes_shorten(assistant, llm_model, project):
    from tests.assistant.test_assistant import events_of

    llm_model.add("Fix", fenced(deeper(project.block(project.start, project.end))))
    state = assistant.state(current_file="textwrap.py", selection=(project.start, project.end), diagnostics=(ERROR,))
    seen, _ = events_of(assistant, "/fix", state)
    assert "edit_error" not in seen, seen.get("edit_error")
    assistant.accept(seen["edit"]["edit_id"])
    assert project.file.read_text() == project.original  # exactly the standard library's again
    module = load(project.file)
    assert module.shorten("Hello  world!", width=12) == "Hello world!"
    assert "shorten" not in module.fill.__code__.co_varnames


def test_the_user_command_applies_the_deeper_reply_at_the_right_indentation(scripted, llm_model, project):
    _, base = scripted
    llm_model.add("Fix", fenced(deeper(project.block(project.start, project.end))))
    done = corolla(project.root, base, "fix", project.spec, "--error", ERROR, "--yes", "--workspace", str(project.root))
    assert done.returncode == 0, done.stderr
    assert project.file.read_text() == project.original
    assert load(project.file).shorten("Hello  world!", width=12) == "Hello world!"


# --- a re-nesting that re-indenting cannot repair is refused with the reason, the file untouched --------
def nested_reply(project: Project) -> str:
    """`fill` and `shorten` (fixed), with `shorten` indented into `fill`: the block's base is still `fill`'s."""
    return fenced(project.block(project.fill_start, project.start - 1)
                  + deeper(project.block(project.start, project.end)))


def test_nesting_shorten_inside_fill_is_refused_with_the_reason(assistant, llm_model, project):
    from tests.assistant.test_assistant import events_of

    llm_model.add("Fix", nested_reply(project))
    state = assistant.state(current_file="textwrap.py", selection=(project.fill_start, project.end),
                            diagnostics=(ERROR,))
    seen, _ = events_of(assistant, "/fix", state)
    error = seen["edit_error"]["error"]
    assert error["type"] == "StructureBreakError"
    assert "`shorten` would become nested inside `fill` (it is listed in __all__)" in error["message"]
    assert project.disk() == project.buggy.encode()
    # asked for by name, or with the explicit flag, the same reply is a proposal
    seen, _ = events_of(assistant, "/fix and move shorten into fill", state)
    assert "edit" in seen
    seen = {e["type"]: e for e in assistant.respond("/fix", state, allow_structure=True)}
    assert "edit" in seen


def test_the_user_command_refuses_the_nesting_and_leaves_the_file(scripted, llm_model, project):
    _, base = scripted
    llm_model.add("Fix", nested_reply(project))
    done = corolla(project.root, base, "fix", f"textwrap.py:{project.fill_start}-{project.end}", "--error", ERROR,
                   "--yes", "--workspace", str(project.root))
    assert done.returncode == 2 and "`shorten` would become nested inside `fill`" in done.stderr
    assert project.disk() == project.buggy.encode()


# --- --check CMD: the reproduction runs before and after; the edit is kept only when it then passes ------
def test_check_keeps_a_fix_that_makes_it_pass(scripted, llm_model, project):
    _, base = scripted
    llm_model.queue(fenced(deeper(project.block(project.start, project.end))))
    done = corolla(project.root, base, "fix", project.spec, "--error", ERROR, "--check", project.check, "--yes",
                   "--workspace", str(project.root))
    assert done.returncode == 0, done.stderr
    assert "[check before the edit]" in done.stderr and "fails (exit 1)" in done.stderr
    assert "[check with the edit]" in done.stderr and "the edit makes" in done.stderr
    assert project.file.read_text() == project.original
    prompt = llm_model.requests[0].last_message
    assert "check_shorten.py` fails (exit 1)" in prompt and "returned 'Hello [...]'" in prompt
    assert len(llm_model.requests) == 1


def test_check_sends_the_failure_back_once_and_keeps_the_second_fix(scripted, llm_model, project):
    _, base = scripted
    wrong = project.block(project.start, project.end, fixed=False).replace("split(',')", "split(', ')")
    llm_model.queue(fenced(wrong), fenced(project.block(project.start, project.end)))
    done = corolla(project.root, base, "fix", project.spec, "--check", project.check, "--yes",
                   "--workspace", str(project.root))
    assert done.returncode == 0, done.stderr
    assert project.file.read_text() == project.original
    assert len(llm_model.requests) == 2
    retry = llm_model.requests[1].last_message
    assert "still fails" in retry and "returned 'Hello [...]'" in retry


def test_check_refuses_when_both_fixes_fail_and_restores_the_file(scripted, llm_model, project):
    _, base = scripted
    wrong = project.block(project.start, project.end, fixed=False).replace("split(',')", "split(', ')")
    llm_model.queue(fenced(wrong), fenced(wrong.replace("', '", "';'")))
    done = corolla(project.root, base, "fix", project.spec, "--check", project.check, "--yes",
                   "--workspace", str(project.root))
    assert done.returncode == 2
    assert "refused:" in done.stderr and "still fails with the edit applied" in done.stderr
    assert "returned 'Hello [...]'" in done.stderr  # the failing output, for the user
    assert project.disk() == project.buggy.encode()
    assert len(llm_model.requests) == 2


def test_check_that_already_passes_says_so_and_asks_nothing(scripted, llm_model, project):
    _, base = scripted
    project.file.write_text(project.original)
    done = corolla(project.root, base, "fix", project.spec, "--check", project.check, "--yes",
                   "--workspace", str(project.root))
    assert done.returncode == 1 and "already passes before any edit" in done.stderr
    assert llm_model.requests == [] and project.file.read_text() == project.original


def test_check_restores_the_file_even_when_the_command_rewrites_it(assistant, llm_model, project):
    llm_model.queue(*[fenced(project.block(project.start, project.end))] * 2)
    state = assistant.state(current_file="textwrap.py", selection=(project.start, project.end))
    # like a formatter run by the check, it rewrites the file, here only when the fix is in it
    scribble = "grep -q 'split()))' textwrap.py && echo '# formatted' >> textwrap.py; exit 1"
    with pytest.raises(CheckFailedError) as info:
        checked_fix(assistant, "", state, CheckConfig(scribble))
    assert info.value.exit_code == 1 and info.value.command == scribble
    assert len(llm_model.requests) == 2 and project.disk() == project.buggy.encode()

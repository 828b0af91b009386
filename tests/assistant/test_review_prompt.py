"""`corolla review`'s prompt (issue 20): each change inside its whole function, numbered as in the new file,
a one-line summary of each changed line, a request for the bugs the change introduces as ``FILE:LINE:``
lines (or "No bugs found."), and nothing about context that is not there."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from corolla.assistant import git as gitfacts
from corolla.assistant.commands import COMMANDS, NO_BUGS, Finding, parse_findings
from corolla.assistant.context.diffview import MAX_SCOPE_LINES, WIDE_CONTEXT, parse_diff, render_changes
from tests.assistant.conftest import git

TEXTWRAP = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
BUGGY = TEXTWRAP.replace("text.strip().split()))", "text.strip().split(',')))")


def line_of(text: str, needle: str) -> int:
    return 1 + next(i for i, x in enumerate(text.splitlines()) if needle in x)


@pytest.fixture()
def repo(tmp_path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "textwrap.py").write_text(TEXTWRAP)
    (root / "notes.md").write_text("".join(f"line {i}\n" for i in range(1, 41)))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Add textwrap")
    return root


def view(root: Path, scope: str = "unstaged", limit: int = gitfacts.MAX_DIFF_CHARS) -> str:
    _, diff, side = gitfacts.changes(root, scope)
    return render_changes(diff, lambda path: gitfacts.new_text(root, side, path), limit)


def test_the_change_is_shown_in_its_whole_function_numbered(repo):
    (repo / "textwrap.py").write_text(BUGGY)
    shown = view(repo)
    bug = line_of(BUGGY, "split(',')")
    start = line_of(BUGGY, "def shorten(")
    assert f"{start}  def shorten(text, width, **kwargs):" in shown  # the whole function, from its def line
    assert f"{bug} +    return w.fill(' '.join(text.strip().split(',')))" in shown
    assert "-    return w.fill(' '.join(text.strip().split()))" in shown  # the old line, unnumbered
    assert f"line {bug}: `split()` became `split(',')`" in shown
    assert "def dedent" not in shown and "def fill" not in shown  # only the function around the change


def test_a_change_in_a_long_method_shows_its_headers_and_lines_around(repo):
    buggy = TEXTWRAP.replace("        if self.width <= 0:", "        if self.width < 0:")
    (repo / "textwrap.py").write_text(buggy)
    shown = view(repo)
    bug = line_of(buggy, "if self.width < 0:")
    method = line_of(buggy, "    def _wrap_chunks(")
    assert line_of(buggy, "    def _wrap_chunks") + MAX_SCOPE_LINES < line_of(buggy, "    def _split_chunks")  # long
    assert "class TextWrapper:" in shown and f"{method}      def _wrap_chunks(self, chunks):" in shown
    assert f"{bug - WIDE_CONTEXT} " in shown and f"{bug + WIDE_CONTEXT} " in shown
    assert f"\n{bug + WIDE_CONTEXT + 1} " not in shown
    assert f"line {bug}: `<=` became `<`" in shown


def test_other_files_staged_deleted_and_too_long(repo):
    (repo / "notes.md").write_text((repo / "notes.md").read_text().replace("line 20\n", "line twenty\n"))
    shown = view(repo)
    assert "20 +line twenty" in shown and "\n10  line 10" in shown and "\n30  line 30" in shown  # no function:
    assert "\n9 " not in shown and "\n31 " not in shown  # WIDE_CONTEXT lines either side
    # staged: the index's text, not the work tree's
    git(repo, "add", "notes.md")
    (repo / "notes.md").write_text("rewritten\n")
    assert "20 +line twenty" in view(repo, "staged")
    git(repo, "rm", "-q", "-f", "notes.md")
    assert "notes.md was deleted" in view(repo, "staged")
    # too long for the limit: narrower views, then files named
    (repo / "textwrap.py").write_text(BUGGY)
    narrow = view(repo, limit=450)
    assert "split(',')" in narrow and "def shorten" not in narrow
    assert "[not shown, too long: textwrap.py]" in view(repo, limit=100)


def test_parse_diff_new_and_binary_files():
    diff = ("diff --git a/new.py b/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1,2 @@\n"
            "+def f():\n+    return 1\ndiff --git a/img.png b/img.png\nBinary files a/img.png and b/img.png differ\n")
    new, image = parse_diff(diff)
    assert (new.old_path, new.new_path) == (None, "new.py")
    assert new.hunks[0].rows == [("+", "def f():"), ("+", "    return 1")]
    assert image.binary
    shown = render_changes(diff, lambda path: "def f():\n    return 1\n" if path == "new.py" else None, 10_000)
    assert "new.py (new file)" in shown and "1 +def f():" in shown and "img.png: a binary file changed" in shown


def test_findings_are_parsed_from_the_usual_spellings():
    reply = ("- textwrap.py:411: split(',') splits on commas\n**calc.py:2**: subtracts\n1. src/a.py:10-12 - wrong\n"
             "`b.py:7`: off by one\nLine 5: no file\nNo bugs found.")
    assert parse_findings(reply) == [Finding("textwrap.py", 411, "split(',') splits on commas"),
                                     Finding("calc.py", 2, "subtracts"), Finding("src/a.py", 10, "wrong"),
                                     Finding("b.py", 7, "off by one")]
    assert parse_findings(NO_BUGS) == []


# ---- through the assistant ----------------------------------------------------------------------
@pytest.fixture()
def assistant_for(scripted, llm_model):
    from corolla.assistant.core import Assistant
    from corolla.assistant.llm import LLM, LLMConfig

    _, base = scripted
    return lambda root: Assistant(LLM(LLMConfig(endpoint=base, model=None)), root)


def test_review_prompt_asks_for_bugs_of_the_change(assistant_for, llm_model, repo):
    (repo / "textwrap.py").write_text(BUGGY)
    bug = line_of(BUGGY, "split(',')")
    llm_model.add("find the bugs", f"textwrap.py:{bug}: split(',') splits on commas, not whitespace")
    llm_model.add("decide whether the change is a bug", f"line {bug}: BUG: split(',') splits on commas")
    assistant = assistant_for(repo)
    assert assistant.config.review_style == "verdicts"  # the default: a verdict on each changed line
    events = list(assistant.respond("/review unstaged", assistant.state()))
    prompt = llm_model.requests[-1].prompt
    assert f"line {bug}: `split()` became `split(',')`" in prompt and "def shorten(" in prompt
    assert "line N: BUG: what is wrong" in prompt and "line N: OK:" in prompt and NO_BUGS not in prompt
    assert "instructions" not in prompt.lower()  # there are none
    reply = "".join(e["text"] for e in events if e["type"] == "delta")
    assert reply == f"line {bug}: BUG: split(',') splits on commas"

    assistant.config.review_style = "list"  # straight to a list of FILE:LINE findings, or "No bugs found."
    events = list(assistant.respond("/review unstaged", assistant.state()))
    prompt = llm_model.requests[-1].prompt
    assert "FILE:LINE: what is wrong" in prompt and NO_BUGS in prompt
    reply = "".join(e["text"] for e in events if e["type"] == "delta")
    assert parse_findings(reply) == [Finding("textwrap.py", bug, "split(',') splits on commas, not whitespace")]
    assistant.config.review_style = "verdicts"

    (repo / "AGENTS.md").write_text("Never split on commas.\n")
    list(assistant.respond("/review unstaged", assistant.state()))
    prompt = llm_model.requests[-1].prompt
    assert "departures from the project's instructions" in prompt and "Never split on commas." in prompt


def test_commit_prompt_mentions_recent_subjects_only_when_there_are(assistant_for, llm_model, tmp_path):
    root = tmp_path / "fresh"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "a.py").write_text("x = 1\n")
    git(root, "add", "a.py")
    llm_model.add("commit message", "Add a.py")
    assistant = assistant_for(root)
    list(assistant.respond("/commit", assistant.state()))
    assert "recent commit subjects" not in llm_model.requests[-1].prompt.lower()
    assert "recent commit subjects" in COMMANDS["commit"].prompt({"subjects"}).lower()

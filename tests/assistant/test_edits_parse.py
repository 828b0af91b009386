"""Parsing model replies into edits: the whole and search_replace formats, and their instructions."""

from __future__ import annotations

import pytest

from corolla.assistant.edits import FORMATS, Edit, Target, format_instructions, parse_reply
from corolla.assistant.errors import MalformedReplyError
from corolla.assistant.fences import named_path, path_words

SOURCE = "import os\n\n\nclass A:\n    def f(self):\n        return 1\n\n    def g(self):\n        return 2\n"


# --- search_replace --------------------------------------------------------------------------------
def test_search_replace_basic_with_path():
    reply = "Here you go:\n\nsrc/a.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n"
    assert parse_reply("search_replace", reply) == [Edit("src/a.py", "x = 1\n", "x = 2\n")]


def test_search_replace_tolerant_markers_fences_crlf_and_several_files():
    reply = ("```python\nsrc/a.py\n<<<<< SEARCH\r\nx = 1\r\n=====\r\nx = 2\r\n>>>>>>>>> replace\r\n```\r\n"
             "and\n\n**src/b.py**\n```\n<<<<<<< SEARCH\ny = 1\n=======\ny = 3\n>>>>>>> REPLACE\n```\n"
             "<<<<<<< SEARCH\nz = 1\n=======\n>>>>>>> REPLACE\n")
    edits = parse_reply("search_replace", reply)
    assert edits == [Edit("src/a.py", "x = 1\n", "x = 2\n"), Edit("src/b.py", "y = 1\n", "y = 3\n"),
                     Edit("src/b.py", "z = 1\n", "")]  # no path line: the previous block's path


def test_search_replace_path_in_fence_info_prose_and_default_path():
    reply = "Change `src/e.py` like this:\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n"
    assert parse_reply("search_replace", reply)[0].path == "src/e.py"
    reply = "```src/c.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n```"
    assert parse_reply("search_replace", reply)[0].path == "src/c.py"
    reply = "<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE"
    assert parse_reply("search_replace", reply, default_path="d.py")[0].path == "d.py"
    assert parse_reply("search_replace", reply, target=Target("t.py", 1, 2))[0].path == "t.py"
    with pytest.raises(MalformedReplyError, match="no file path"):
        parse_reply("search_replace", reply)


@pytest.mark.parametrize("line, path", [
    ("src/a.py", "src/a.py"), ("**src/a.py**", "src/a.py"), ("`src/a.py`", "src/a.py"), ("src/a.py:", "src/a.py"),
    ("# File: src/a.py", "src/a.py"), ("### src/a.py", "src/a.py"), ("- src/a.py", "src/a.py"),
    ("**File: src/a.py**", "src/a.py"), ("pkg/__init__.py", "pkg/__init__.py"), ("__init__.py", "__init__.py"),
    ("Change `src/a.py` like this:", "src/a.py"), ("Change it like this:", None), ("# Notes", None),
])
def test_the_path_written_before_a_block(line, path):
    """One reading of the path line for every format that names files (search_replace here, agent code blocks)."""
    assert named_path(line) == path


def test_search_replace_path_in_an_info_string_with_a_language():
    reply = "```python src/c.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n```"
    assert parse_reply("search_replace", reply)[0].path == "src/c.py"
    assert path_words("python src/c.py") == ["src/c.py"] and path_words("python") == []


def test_search_replace_empty_search_creates():
    reply = "new/mod.py\n<<<<<<< SEARCH\n=======\ndef f():\n    return 1\n>>>>>>> REPLACE\n"
    assert parse_reply("search_replace", reply) == [Edit("new/mod.py", "", "def f():\n    return 1\n")]


@pytest.mark.parametrize("reply, problem", [
    ("a.py\n<<<<<<< SEARCH\nx\n=======\ny\n", "not terminated"),
    ("a.py\n<<<<<<< SEARCH\nx\n>>>>>>> REPLACE\n", "where '=======' was expected"),
    ("a.py\n<<<<<<< SEARCH\nx\n", "not terminated"),
    ("a.py\n<<<<<<< SEARCH\nx\n=======\ny\n<<<<<<< SEARCH\n", "found '<<<<<<< SEARCH'"),
    ("a.py\nx\n=======\ny\n>>>>>>> REPLACE\n", "without a '<<<<<<< SEARCH'"),
    ("I changed nothing.", "no SEARCH/REPLACE block"),
])
def test_search_replace_malformed(reply, problem):
    with pytest.raises(MalformedReplyError, match=problem):
        parse_reply("search_replace", reply)


def test_search_replace_markdown_rule_outside_blocks_is_prose():
    reply = "Title\n=======\n\na.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n"
    assert parse_reply("search_replace", reply) == [Edit("a.py", "x\n", "y\n")]


# --- whole -----------------------------------------------------------------------------------------
def test_whole_range_with_source_restores_indentation_and_newline():
    target = Target("a.py", 5, 6)
    reply = "Sure! Here it is:\n```python\ndef f(self):\n    return 10\n```\nDone."
    [edit] = parse_reply("whole", reply, target=target, source=SOURCE)
    assert edit.old == "    def f(self):\n        return 1\n"
    assert edit.new == "    def f(self):\n        return 10\n"
    assert edit.line == 5 and edit.target is None


def test_whole_picks_block_most_like_target():
    target = Target("a.py", 5, 6)
    reply = ("Usage:\n```python\na = A()\nprint(a.f())\nprint('more lines here')\n```\n"
             "The code:\n```python\n    def f(self):\n        return 3\n```\n")
    [edit] = parse_reply("whole", reply, target=target, source=SOURCE)
    assert edit.new == "    def f(self):\n        return 3\n"


def test_whole_keeps_blank_tail_and_missing_final_newline():
    source = "a = 1\n\nb = 2"
    [edit] = parse_reply("whole", "```\na = 5\n```", target=Target("x.py", 1, 2), source=source)
    assert (edit.old, edit.new) == ("a = 1\n\n", "a = 5\n\n")
    [edit] = parse_reply("whole", "```\nb = 3\n\n\n```", target=Target("x.py", 3, 3), source=source)
    assert (edit.old, edit.new) == ("b = 2", "b = 3")


def test_whole_file_target_and_tilde_fence():
    [edit] = parse_reply("whole", "~~~py\nx = 1\n~~~", target=Target("n.py"), source="x = 0\n")
    assert (edit.old, edit.new) == ("x = 0\n", "x = 1\n")


def test_whole_unfenced_code_accepted_only_without_prose():
    target = Target("a.py", 5, 6)
    [edit] = parse_reply("whole", "    def f(self):\n        return 4\n", target=target, source=SOURCE)
    assert edit.new == "    def f(self):\n        return 4\n"
    with pytest.raises(MalformedReplyError, match="no fenced code block"):
        parse_reply("whole", "Here is the fixed version of the method:\n    def f(self):\n        return 4",
                    target=target, source=SOURCE)
    with pytest.raises(MalformedReplyError, match="no fenced code block"):
        parse_reply("whole", "Sure", target=target, source=SOURCE)
    with pytest.raises(MalformedReplyError, match="no fenced code block"):
        parse_reply("whole", "Sure", target=target)


def test_whole_unclosed_fence_and_empty_reply_refused():
    with pytest.raises(MalformedReplyError, match="not closed"):
        parse_reply("whole", "```python\ndef f():\n    return", target=Target("a.py"), source="")
    with pytest.raises(MalformedReplyError, match="empty"):
        parse_reply("whole", "  \n", target=Target("a.py"), source="")


def test_whole_without_source_defers_to_propose():
    [edit] = parse_reply("whole", "```python\ndef f(self):\n    return 7\n```", target=Target("a.py", 5, 6))
    assert edit.target == Target("a.py", 5, 6) and edit.old == "" and edit.new == "def f(self):\n    return 7\n"


# --- instructions ----------------------------------------------------------------------------------
def test_format_instructions():
    whole = format_instructions("whole", Target("src/a.py", 3, 9))
    assert "lines 3-9 of src/a.py" in whole and "```" in whole
    assert "the whole file src/a.py" in format_instructions("whole", Target("src/a.py"))
    sr = format_instructions("search_replace", None)
    assert "<<<<<<< SEARCH" in sr and ">>>>>>> REPLACE" in sr and "=======" in sr
    # the worked example parses as the format it teaches
    example = sr.split("Example:", 1)[1].split("\n", 1)[1]
    assert parse_reply("search_replace", example)[0].path == "app.py"
    for fmt in FORMATS:
        assert len(format_instructions(fmt, Target("a.py"))) < 1000
    with pytest.raises(ValueError):
        format_instructions("udiff", None)
    with pytest.raises(ValueError):
        parse_reply("udiff", "")


def test_whole_range_reply_with_the_whole_file_replaces_the_file():
    reply = "```python\n" + SOURCE.replace("return 1", "return 11") + "```"
    [edit] = parse_reply("whole", reply, target=Target("a.py", 5, 6), source=SOURCE)
    assert edit.old == SOURCE and edit.new == SOURCE.replace("return 1", "return 11")

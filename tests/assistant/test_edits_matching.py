"""Locating the text an edit replaces (exact, ignoring whitespace, fuzzy) and proposing the change."""

from __future__ import annotations

from pathlib import Path

import pytest

from corolla.assistant.edits import Edit, Target, parse_reply, propose, replace_once
from corolla.assistant.errors import AmbiguousMatchError, NoMatchError

CODE = """\
class Shop:
    def total(self, items):
        s = 0
        for item in items:
            s += item.price
        return s

    def count(self, items):
        return len(items)
"""


def test_exact_unique():
    r = replace_once(CODE, "        return len(items)\n", "        return sum(1 for _ in items)\n", path="s.py")
    assert "sum(1 for _ in items)" in r.content and "exactly at line 9" in r.note


def test_exact_ambiguous_names_lines():
    text = "a = 1\nb = 2\na = 1\n"
    with pytest.raises(AmbiguousMatchError, match=r"s\.py.*2 times \(lines 1, 3\)"):
        replace_once(text, "a = 1\n", "a = 5\n", path="s.py")
    assert replace_once(text, "a = 1\n", "a = 5\n", path="s.py", line=3).content == "a = 1\nb = 2\na = 5\n"


def test_exact_prefers_line_aligned_occurrence():
    text = "xa = 1\na = 1\n"
    assert replace_once(text, "a = 1\n", "a = 2\n", path="s.py").content == "xa = 1\na = 2\n"


def test_whitespace_insensitive_reindents_dedented_block():
    old = "for item in items:\n    s += item.price\n"  # the model dropped 8 spaces
    new = "for item in items:\n    if item.price > 0:\n        s += item.price\n"
    r = replace_once(CODE, old, new, path="s.py")
    assert "        for item in items:\n            if item.price > 0:\n                s += item.price\n" in r.content
    assert "ignoring whitespace at line 4" in r.note and "+8 spaces" in r.note


def test_whitespace_insensitive_trailing_spaces_and_over_indent():
    text = "def f():   \n    return 1  \n"
    old = "        def f():\n            return 1\n"
    new = "        def f():\n            return 2\n"
    r = replace_once(text, old, new, path="s.py")
    assert r.content == "def f():\n    return 2\n" and "-8 spaces" in r.note


def test_whitespace_insensitive_tabs():
    text = "if x:\n\tdo()\n\tdone()\n"
    r = replace_once(text, "do()\ndone()\n", "do()\nredo()\n", path="t.go")
    assert r.content == "if x:\n\tdo()\n\tredo()\n"


def test_fuzzy_match_with_reindent():
    old = "for item in items:\n    s += item.prices\nreturn s\n"  # a typo and no indentation
    new = "for item in items:\n    s += item.price * item.qty\nreturn s\n"
    r = replace_once(CODE, old, new, path="s.py")
    assert "            s += item.price * item.qty\n        return s\n" in r.content
    assert "fuzzily" in r.note and "lines 4-6" in r.note


def test_fuzzy_threshold_is_configurable():
    old = "for item in items:\n    s += item.prices\nreturn s\n"
    with pytest.raises(NoMatchError):
        replace_once(CODE, old, "x\n", path="s.py", threshold=0.99)


def test_fuzzy_ambiguous():
    text = "def a():\n    return 1\n\ndef b():\n    pass\n\ndef a():\n    return 1\n"
    with pytest.raises(AmbiguousMatchError, match="lines 1, 7"):
        replace_once(text, "def a():\n    return 11\n", "x\n", path="s.py")


def test_no_match_shows_closest_lines_with_numbers():
    with pytest.raises(NoMatchError) as info:
        replace_once(CODE, "def count(self, things):\n    return length(things)\n", "x\n", path="shop.py")
    msg = str(info.value)
    assert "shop.py" in msg and "not found" in msg
    assert "8 |     def count(self, items):" in msg and "9 |         return len(items)" in msg


def test_no_match_far_from_anything_still_shows_lines():
    with pytest.raises(NoMatchError, match=r"closest lines in s\.py"):
        replace_once("alpha\nbeta\n", "zzzzzzzzzzzz qqqqqqqq\n", "x\n", path="s.py")


# --- propose ------------------------------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text.encode())


def test_propose_several_edits_in_order_and_several_files(tmp_path):
    _write(tmp_path, {"shop.py": CODE, "b.txt": "one\ntwo\n"})
    edits = [Edit("shop.py", "s = 0\n", "s = 0.0\n"), Edit("shop.py", "s = 0.0\n", "s = 0.5\n"),
             Edit("./b.txt", "two\n", "2\n")]
    p = propose(tmp_path, edits)
    assert [c.path for c in p.changes] == ["shop.py", "b.txt"]
    assert "        s = 0.5\n" in p.changes[0].after and p.changes[1].after == "one\n2\n"
    assert "--- a/shop.py\n+++ b/shop.py\n" in p.diff and "+        s = 0.5" in p.diff
    assert "--- a/b.txt" in p.diff and len(p.notes) == 3
    assert (tmp_path / "shop.py").read_text() == CODE  # propose never writes


def test_propose_new_file_and_empty_file_and_append(tmp_path):
    _write(tmp_path, {"empty.py": "", "log.txt": "a"})
    p = propose(tmp_path, [Edit("pkg/new.py", "", "x = 1\n"), Edit("empty.py", "", "y = 2\n"),
                           Edit("log.txt", "", "b\n")])
    changes = {c.path: c for c in p.changes}
    assert changes["pkg/new.py"].before is None and changes["pkg/new.py"].after == "x = 1\n"
    assert changes["empty.py"].after == "y = 2\n" and changes["log.txt"].after == "a\nb\n"
    assert "--- /dev/null\n+++ b/pkg/new.py" in p.diff
    assert "\\ No newline at end of file" in p.diff  # log.txt had none before


def test_propose_missing_file_with_search_text(tmp_path):
    with pytest.raises(NoMatchError, match="does not exist"):
        propose(tmp_path, [Edit("nope.py", "x\n", "y\n")])


def test_propose_buffers_override_disk(tmp_path):
    _write(tmp_path, {"a.py": "x = 1\n"})
    p = propose(tmp_path, [Edit("a.py", "x = 9\n", "x = 10\n")], buffers={"a.py": "x = 9\n"})
    assert p.changes[0].before == "x = 9\n"


def test_propose_no_change(tmp_path):
    _write(tmp_path, {"a.py": "x = 1\n"})
    p = propose(tmp_path, [Edit("a.py", "x = 1\n", "x = 1\n")])
    assert p.changes == () and p.diff == "" and "no change" in p.notes[-1]


def test_propose_crlf_file_keeps_crlf(tmp_path):
    _write(tmp_path, {"w.py": "def f():\r\n    return 1\r\n"})
    edits = parse_reply("search_replace", "w.py\n<<<<<<< SEARCH\n    return 1\n=======\n    return 2\n>>>>>>> REPLACE")
    p = propose(tmp_path, edits)
    assert p.changes[0].after == "def f():\r\n    return 2\r\n"


def test_propose_whole_deferred_target(tmp_path):
    _write(tmp_path, {"shop.py": CODE})
    target = Target("shop.py", 8, 9)
    edits = parse_reply("whole", "```python\ndef count(self, items):\n    return len(list(items))\n```", target=target)
    p = propose(tmp_path, edits)
    assert p.changes[0].after == CODE.replace("return len(items)", "return len(list(items))")


def test_propose_whole_repeated_block_uses_target_line(tmp_path):
    text = "def a():\n    return 1\n\ndef a():\n    return 1\n"
    _write(tmp_path, {"r.py": text})
    [edit] = parse_reply("whole", "```\ndef a():\n    return 2\n```", target=Target("r.py", 4, 5), source=text)
    assert propose(tmp_path, [edit]).changes[0].after == "def a():\n    return 1\n\ndef a():\n    return 2\n"


def test_propose_whole_new_file(tmp_path):
    edits = parse_reply("whole", "```python\nprint('hi')\n```", target=Target("tests/test_new.py"))
    p = propose(tmp_path, edits)
    assert p.changes[0].before is None and p.changes[0].after == "print('hi')\n"


def test_fuzzy_match_when_model_dropped_a_line():
    old = "def total(self, items):\n    s = 0\n    for item in items:\n    return s\n"  # lost a line
    new = "def total(self, items):\n    return sum(i.price for i in items)\n"
    r = replace_once(CODE, old, new, path="s.py")
    expected = "class Shop:\n    def total(self, items):\n        return sum(i.price for i in items)\n\n"
    assert r.content.startswith(expected)
    assert "lines 2-6" in r.note


def test_fuzzy_on_a_long_file_finds_the_one_place():
    lines = [f"    value_{i} = compute(x{i}, y={i * 7 % 1000})\n" for i in range(3000)]
    old = "".join(lines[1500:1510]).replace("compute", "compote")
    r = replace_once("".join(lines), old, "    done = True\n", path="big.py")
    assert "lines 1501-1510" in r.note and r.content.count("done = True") == 1

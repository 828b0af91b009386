"""The refusals of propose: lazy placeholders (and their false positives), syntax breaks, unsafe paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corolla.assistant.edits import Edit, find_placeholder, first_error, propose
from corolla.assistant.errors import PlaceholderError, SyntaxBreakError, UnsafePathError
from corolla.assistant.languages import language_of

OLD = "def f(x):\n    y = x + 1\n    return y\n"


@pytest.mark.parametrize("line", [
    "    # ... existing code ...",
    "    # ... rest of the code ...",
    "    // ... existing code",
    "    # (unchanged)",
    "    # rest of the file",
    "    # Rest of the function remains unchanged",
    "    <existing code>",
    "    ...",
    "    # ...",
    "    // ...",
    "    /* ... */",
    "    …",
    "    ... existing code ...",
    "    # other methods stay the same",
    "    # code omitted for brevity",
    "    <!-- ... -->",
])
def test_placeholders_refused(line, tmp_path):
    new = f"def f(x):\n    y = x + 2\n{line}\n"
    assert find_placeholder(OLD, new) is not None
    (tmp_path / "a.py").write_text(OLD)
    with pytest.raises(PlaceholderError, match=r"a\.py: line 3 .*placeholder"):
        propose(tmp_path, [Edit("a.py", OLD, new)])


@pytest.mark.parametrize("old, new", [
    ("", "def f(): ...\n"),                                         # one-line stub
    ("", "class P(Protocol):\n    def f(self) -> int:\n        ...\n"),  # body of a def
    ("", "def f():\n    \"\"\"Doc.\"\"\"\n    ...\n"),               # body after a docstring
    ("", "x = a[..., 0]\ny = Ellipsis\nz = a[1:...]\n"),              # ellipsis inside code
    ("", "const g = (...args) => f(...args);\nconst o = {\n  ...rest,\n};\n"),  # JS spreads
    ("", "# Read the rest of the file into a buffer for parsing\n"),  # a real comment
    ("", "# TODO: keep existing code paths working\n"),
    ("", "# returns the input unchanged\n"),
    ("", "# print('...')\nprint('...')\n"),
    ("x = 1\n# ...\n", "x = 2\n# ...\n"),                           # the old text had it already
    ("try:\n    ...\n", "try:\n    pass\n    ...\n"),              # ... already there
])
def test_placeholder_false_positives(old, new):
    assert find_placeholder(old, new) is None


# --- syntax guard --------------------------------------------------------------------------------
@pytest.mark.parametrize("path, good, bad, line", [
    ("a.py", "def f():\n    return 1\n", "def f():\n    return (1\n", 2),
    ("a.js", "function f() {\n  return 1;\n}\n", "function f() {\n  return 1;\n", None),
    ("a.ts", "const x: number = 1;\n", "const x: number = ;\n", 1),
    ("a.tsx", "const e = <div>hi</div>;\n", "const e = <div>hi</;\n", 1),
    ("a.go", "package m\n\nfunc f() int {\n\treturn 1\n}\n", "package m\n\nfunc f() int {\n\treturn 1 +\n}\n", None),
    ("a.rs", "fn f() -> i32 {\n    1\n}\n", "fn f() -> i32 {\n    let = 1;\n}\n", 2),
    ("A.java", "class A {\n  int f() { return 1; }\n}\n", "class A {\n  int f() { return 1 }\n}\n", 2),
])
def test_syntax_guard_per_language(path, good, bad, line, tmp_path):
    assert first_error(path, good) is None
    error = first_error(path, bad)
    assert error is not None and (line is None or error[0] == line)
    (tmp_path / path).write_text(good)
    with pytest.raises(SyntaxBreakError, match=rf"{path}: .* at line {error[0]}"):
        propose(tmp_path, [Edit(path, good, bad)])


def test_syntax_guard_skips_files_already_broken_and_unknown_languages(tmp_path):
    (tmp_path / "broken.py").write_text("def f(:\n    pass\n")
    p = propose(tmp_path, [Edit("broken.py", "    pass\n", "    return 1\n")])
    assert p.changes[0].after == "def f(:\n    return 1\n"
    (tmp_path / "notes.md").write_text("# Title\n")
    assert propose(tmp_path, [Edit("notes.md", "# Title\n", "def f(:\n")]).changes
    assert language_of("x.unknown") is None and first_error("x.unknown", "{{{") is None


def test_syntax_guard_checks_new_files(tmp_path):
    with pytest.raises(SyntaxBreakError, match="new.py"):
        propose(tmp_path, [Edit("new.py", "", "def f(:\n")])


# --- path safety ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.py", "a/../../outside.py", ".git/config",
                                  "sub/.git/hooks/pre-commit", "C:\\x.py", "", "..\\evil.py"])
def test_unsafe_paths_refused(path, tmp_path):
    with pytest.raises(UnsafePathError):
        propose(tmp_path, [Edit(path, "", "x = 1\n")])


def test_symlink_out_of_root_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "t.py").write_text("x = 1\n")
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafePathError, match="outside the workspace"):
        propose(root, [Edit("link/t.py", "x = 1\n", "x = 2\n")])


def test_inner_dotdot_is_normalised(tmp_path):
    Path(tmp_path / "a").mkdir()
    p = propose(tmp_path, [Edit("a/../b.py", "", "x = 1\n")])
    assert p.changes[0].path == "b.py"

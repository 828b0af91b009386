"""The context engine: instructions, file listing, references, budgets, determinism, buffers."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from corolla.assistant.context import (
    PRIORITY,
    Context,
    EditorState,
    approx_tokens,
    build_context,
    clear_cache,
    find_instructions,
    list_files,
    parse_references,
)
from corolla.assistant.context.files import walk_files
from corolla.assistant.context.instructions import applies, glob_regex, split_front_matter, split_globs
from tests.assistant.context_workspace import git_init, has_git, write


def words_counter(text: str) -> int:
    """A stand-in for a real tokenizer that is not additive over concatenation."""
    return len(re.findall(r"\w+|[^\w\s]", text)) + text.count("\n\n")


# ---- instructions -------------------------------------------------------------------------------
@pytest.mark.parametrize("glob,path,hit", [
    ("**/*.py", "src/a.py", True), ("**/*.py", "a.py", True), ("*.py", "src/deep/a.py", True),
    ("*.py", "src/a.ts", False), ("src/**/*.ts", "src/x/y/a.ts", True), ("src/**/*.ts", "lib/src/a.ts", True),
    ("/src/*.ts", "lib/src/a.ts", False), ("/src/*.ts", "src/a.ts", True), ("/src/*.ts", "src/x/a.ts", False),
    ("**/*.{ts,tsx}", "web/App.tsx", True), ("**/*.{ts,tsx}", "web/App.jsx", False),
    ("tests/**", "tests/unit/test_a.py", True), ("docs/?.md", "docs/a.md", True), ("docs/?.md", "docs/ab.md", False),
    ("**/test_[a-c]*.py", "t/test_b.py", True), ("**/test_[!a-c]*.py", "t/test_b.py", False),
])
def test_glob_semantics(glob, path, hit):
    assert bool(glob_regex(glob).match(path)) is hit


def test_front_matter_and_glob_lists():
    fields, body = split_front_matter('---\ndescription: "x"\napplyTo: "**/*.py, **/*.{ts,tsx}"\n---\n# Body\ntext\n')
    assert fields["applyTo"] == '"**/*.py, **/*.{ts,tsx}"' and body == "# Body\ntext"
    assert split_globs(fields["applyTo"]) == ["**/*.py", "**/*.{ts,tsx}"]
    assert split_globs("['a/*.md', 'b/**']") == ["a/*.md", "b/**"]
    assert split_front_matter("no front matter\n---\n") == ({}, "no front matter\n---\n")
    assert applies(None, []) and applies('"**"', []) and not applies('"**/*.go"', ["a.py"])


def instruction_workspace(root: Path) -> Path:
    return write(root, {
        ".github/copilot-instructions.md": "Use tabs.",
        ".github/instructions/python.instructions.md": '---\napplyTo: "**/*.py"\n---\nPython rules.',
        ".github/instructions/web.instructions.md": "---\napplyTo: 'web/**/*.ts,web/**/*.tsx'\n---\nWeb rules.",
        ".github/instructions/always.instructions.md": "---\ndescription: no applyTo\n---\nAlways rules.",
        ".github/instructions/star.instructions.md": '---\napplyTo: "**"\n---\nStar rules.',
        ".github/instructions/notes.md": "not an instructions file",
        "AGENTS.md": "Root agents.",
        "services/AGENTS.md": "Services agents.",
        "services/billing/AGENTS.md": "Billing agents.",
        "services/billing/core/invoice.py": "def total():\n    return 1\n",
        "services/other/x.py": "x = 1\n",
        "web/src/app.ts": "export const a = 1;\n",
        "top.md": "hello\n",
    })


def test_instructions_apply_by_glob_and_nearest_agents(tmp_path):
    root = instruction_workspace(tmp_path)
    found = find_instructions(root, "services/billing/core/invoice.py")
    assert [i.path for i in found] == [
        ".github/copilot-instructions.md", ".github/instructions/always.instructions.md",
        ".github/instructions/python.instructions.md", ".github/instructions/star.instructions.md",
        "AGENTS.md", "services/billing/AGENTS.md"]
    assert found[2].body == "Python rules."  # the front matter is not part of the text
    found = find_instructions(root, "services/other/x.py")
    assert [i.path for i in found][-1] == "services/AGENTS.md"
    found = find_instructions(root, "top.md", open_files=["web/src/app.ts"])  # open files count too
    paths = [i.path for i in found]
    assert ".github/instructions/web.instructions.md" in paths
    assert ".github/instructions/python.instructions.md" not in paths
    assert paths[-1] == "AGENTS.md"  # no nested AGENTS.md above top.md
    assert [i.path for i in find_instructions(root, None)][-1] == "AGENTS.md"


def test_instructions_go_first_and_into_the_system_prompt(tmp_path):
    root = instruction_workspace(tmp_path)
    ctx = build_context(EditorState(root, current_file="services/billing/core/invoice.py"), "hi")
    kinds = [p.kind for p in ctx.parts]
    assert kinds[:6] == ["instructions"] * 6 and "instructions" not in kinds[6:]
    assert "Billing agents." in ctx.instructions() and "Python rules." in ctx.instructions()
    assert "Billing agents." not in ctx.render() and "def total" in ctx.render()


# ---- files ------------------------------------------------------------------------------------------
IGNORE_FILES = {
    ".gitignore": "*.log\nbuild/\n/secret.txt\n",
    "src/.gitignore": "gen_*.py\n!gen_keep.py\n",
    "src/a.py": "a = 1\n", "src/gen_x.py": "x\n", "src/gen_keep.py": "k\n", "src/run.log": "log\n",
    "build/out.js": "o\n", "secret.txt": "s\n", "docs/secret.txt": "not ignored: the pattern is anchored\n",
    "docs/guide.md": "g\n", ".corolla/sessions.db": b"\0db", "deep/x/y/z.go": "package z\n",
}
EXPECTED_FILES = [".gitignore", "deep/x/y/z.go", "docs/guide.md", "docs/secret.txt", "src/.gitignore",
                  "src/a.py", "src/gen_keep.py"]


def test_walk_honours_nested_gitignore(tmp_path):
    write(tmp_path, IGNORE_FILES)
    os.symlink("/etc", tmp_path / "etc_link")
    assert list_files(tmp_path) == EXPECTED_FILES
    assert sorted(walk_files(tmp_path)) == EXPECTED_FILES  # .git/ and .corolla/ are never walked


@pytest.mark.skipif(not has_git(), reason="git is not installed")
def test_git_listing_honours_gitignore_and_untracked_files(tmp_path):
    write(tmp_path, IGNORE_FILES)
    git_init(tmp_path)
    write(tmp_path, {"new_untracked.py": "n = 1\n", "new.log": "ignored\n"})
    (tmp_path / "docs/guide.md").unlink()  # deleted from the work tree, still in the index
    files = list_files(tmp_path)
    assert files == sorted([f for f in EXPECTED_FILES if f != "docs/guide.md"] + ["new_untracked.py"])


# ---- references ------------------------------------------------------------------------------------------
def test_parse_references():
    query, refs = parse_references('explain #file:src/a.py:3-9, then #file:b.py and #selection; '
                                   'also #file:"my dir/c.py" #file:d.py:12 #file:e.py:9-4.')
    assert query == "explain src/a.py:3-9, then b.py and the selection; also my dir/c.py d.py:12-12 e.py:4-9."
    assert [(r.kind, r.path, r.start_line, r.end_line) for r in refs] == [
        ("file", "src/a.py", 3, 9), ("file", "b.py", None, None), ("selection", None, None, None),
        ("file", "my dir/c.py", None, None), ("file", "d.py", 12, 12), ("file", "e.py", 4, 9)]
    assert refs[0].raw == "#file:src/a.py:3-9"
    assert parse_references("no refs, #files here #selectionx") == ("no refs, #files here #selectionx", [])


def ref_workspace(root: Path) -> Path:
    lines = "".join(f"line {i}\n" for i in range(1, 41))
    return write(root, {"src/a.py": lines, "src/b.py": "def b():\n    return 2\n", "bin.dat": b"\x00\x01\x02",
                        "src/cur.py": "x = 1\ny = 2\nz = 3\n"})


def test_references_files_ranges_and_notes(tmp_path):
    root = ref_workspace(tmp_path)
    (tmp_path.parent / "outside.py").write_text("secret\n")
    state = EditorState(root, current_file="src/cur.py", selection=(2, 3))
    ctx = build_context(state, f"see #file:src/a.py:5-7 #file:src/b.py #file:nope.py #file:../outside.py "
                               f"#file:{tmp_path.parent / 'outside.py'} #file:bin.dat #file:src/a.py:50-60 "
                               f"#selection #file:.git/config", include_tree=False, include_repo_map=False)
    by_label = {p.label: p for p in ctx.parts}
    assert by_label["src/a.py:5-7"].text.splitlines()[2:5] == ["line 5", "line 6", "line 7"]
    assert "def b():" in by_label["src/b.py"].text
    assert "does not exist" in by_label["#file:nope.py"].text
    assert "outside the workspace" in by_label["#file:../outside.py"].text
    assert "outside the workspace" in by_label[f"#file:{tmp_path.parent / 'outside.py'}"].text
    assert "binary" in by_label["#file:bin.dat"].text
    assert "has 40 lines" in by_label["#file:src/a.py:50-60"].text
    assert "not a file of the workspace" in by_label["#file:.git/config"].text
    assert "secret" not in ctx.render()
    assert by_label["src/cur.py:2-3"].kind == "selection" and "y = 2\nz = 3" in by_label["src/cur.py:2-3"].text
    assert [p.kind for p in ctx.parts] == sorted((p.kind for p in ctx.parts), key=PRIORITY.index)


def test_selection_reference_without_selection_is_a_note(tmp_path):
    root = ref_workspace(tmp_path)
    ctx = build_context(EditorState(root, current_file="src/cur.py"), "fix #selection", include_tree=False)
    note = next(p for p in ctx.parts if p.label == "#selection")
    assert "nothing is selected" in note.text


def test_whole_file_reference_is_not_repeated_as_current_file(tmp_path):
    root = ref_workspace(tmp_path)
    ctx = build_context(EditorState(root, current_file="src/b.py"), "#file:src/b.py", include_tree=False)
    assert [p.label for p in ctx.parts if "b.py" in p.label] == ["src/b.py"]
    assert ctx.parts[0].kind == "reference"


# ---- budgets --------------------------------------------------------------------------------------------
def budget_workspace(root: Path) -> Path:
    big = "".join(f"def function_{i}(value):\n    return value * {i}  # line {2 * i + 2}\n" for i in range(400))
    files = {"AGENTS.md": "Be careful.\n" * 5, "src/big.py": big, "src/other.py": "def other():\n    pass\n" * 30,
             "src/helper.py": "class Helper:\n    def run(self):\n        pass\n"}
    files.update({f"pkg{i}/mod{j}.py": f"def f{i}_{j}():\n    pass\n" for i in range(10) for j in range(10)})
    return write(root, files)


@pytest.mark.parametrize("counter", [approx_tokens, words_counter], ids=["approx", "words"])
@pytest.mark.parametrize("budget", [40, 150, 600, 2000, 6000])
def test_never_exceeds_budget(tmp_path, counter, budget):
    root = budget_workspace(tmp_path)
    state = EditorState(root, current_file="src/big.py", cursor_line=500, selection=(500, 520),
                        open_files=("src/other.py", "src/helper.py"), diagnostics=("src/big.py:501: error: bad",) * 20)
    ctx = build_context(state, "why is function_250 wrong? #file:src/other.py", budget_tokens=budget,
                        count_tokens=counter)
    assert ctx.used_tokens <= budget
    assert sum(counter(p.text) for p in ctx.parts) + counter("\n\n") * len(ctx.parts) <= budget
    assert counter(ctx.render()) + counter(ctx.instructions()) <= budget
    assert all(p.tokens == counter(p.text) for p in ctx.parts)
    assert [p.kind for p in ctx.parts] == sorted((p.kind for p in ctx.parts), key=PRIORITY.index)
    labels = [p.label for p in ctx.parts]
    assert not set(labels) & set(ctx.dropped)
    assert set(labels) | set(ctx.dropped) >= {"AGENTS.md", "src/big.py:500-520", "src/other.py", "diagnostics",
                                               "src/big.py", "src/helper.py", "repo map", "file tree"}


def test_truncation_windows_the_current_file_around_the_cursor(tmp_path):
    root = budget_workspace(tmp_path)
    ctx = build_context(EditorState(root, current_file="src/big.py", cursor_line=600), budget_tokens=1000,
                        include_repo_map=False, include_tree=False)
    part = next(p for p in ctx.parts if p.kind == "current_file")
    assert part.truncated and "function_299" in part.text  # line 600 is in function_299
    lines = part.text.splitlines()
    assert re.match(r"### Current file: src/big\.py \(lines \d+-\d+ of 800\)", lines[0])
    assert lines[2].startswith("… (lines 1-")
    assert lines[-2].startswith("… (lines ") and lines[-2].endswith("800 omitted) …")
    assert "function_0(" not in part.text


def test_priority_drops_lowest_parts_first(tmp_path):
    root = budget_workspace(tmp_path)
    state = EditorState(root, current_file="src/big.py", selection=(1, 4), open_files=("src/other.py",))
    ctx = build_context(state, "q", budget_tokens=120)
    kinds = [p.kind for p in ctx.parts]
    assert kinds[:2] == ["instructions", "selection"]
    assert "file tree" in ctx.dropped or any(p.kind == "file_tree" and p.truncated for p in ctx.parts)
    roomy = build_context(state, "q", budget_tokens=20_000)
    assert roomy.dropped == [] and not any(p.truncated for p in roomy.parts if p.kind != "repo_map")
    tiny = build_context(state, "q", budget_tokens=5)
    assert tiny.parts == [] and tiny.dropped[0] == "AGENTS.md"


def test_instructions_are_cut_with_a_marker_when_they_alone_overflow(tmp_path):
    write(tmp_path, {"AGENTS.md": "".join(f"Rule number {i} is important.\n" for i in range(200))})
    ctx = build_context(EditorState(tmp_path), budget_tokens=100)
    assert ctx.parts[0].truncated and ctx.parts[0].text.splitlines()[-1].startswith("… (lines ")
    assert ctx.used_tokens <= 100


# ---- determinism and buffers --------------------------------------------------------------------
def test_same_inputs_same_context(tmp_path):
    root = budget_workspace(tmp_path)
    state = EditorState(root, current_file="src/big.py", cursor_line=10, open_files=("src/helper.py",))
    first = build_context(state, "Helper run function_3", budget_tokens=1500)
    second = build_context(state, "Helper run function_3", budget_tokens=1500)
    clear_cache()
    third = build_context(state, "Helper run function_3", budget_tokens=1500)
    assert first == second == third
    assert isinstance(first, Context) and first.to_json()[0].keys() == {"kind", "label", "tokens", "truncated"}


def test_buffers_override_disk(tmp_path):
    root = write(tmp_path, {"src/a.py": "on_disk = 1\n", "src/b.py": "def disk_only():\n    pass\n",
                            "src/c.py": "import os\n"})
    buffers = {"src/a.py": "unsaved = 2\n", "./src/b.py": "def from_buffer():\n    pass\n"}
    state = EditorState(root, current_file="src/a.py", selection=(1, 1), buffers=buffers)
    ctx = build_context(state, "from_buffer #file:src/b.py")
    text = ctx.render()
    assert "unsaved = 2" in text and "on_disk" not in text
    assert "from_buffer" in text and "disk_only" not in text
    state = EditorState(root, current_file="src/c.py", buffers={"src/b.py": "def from_buffer():\n    pass\n"})
    ctx = build_context(state, "where is from_buffer")
    repo_map = next(p for p in ctx.parts if p.kind == "repo_map")
    assert "def from_buffer():" in repo_map.text and "disk_only" not in repo_map.text


def test_unsaved_new_current_file_and_missing_current_file(tmp_path):
    root = write(tmp_path, {"a.py": "x = 1\n"})
    ctx = build_context(EditorState(root, current_file="new.py", buffers={"new.py": "brand_new = 1\n"}))
    assert "brand_new" in ctx.render()
    ctx = build_context(EditorState(root, current_file="gone.py", cursor_line=3))
    assert "does not exist" in next(p for p in ctx.parts if p.kind == "current_file").text


def test_real_tokenizer_budget(tmp_path):
    from tests.offline_tokenizer import chatml_tokenizer

    tokenizer = chatml_tokenizer()  # a BPE built here: its counts are nothing like the estimate's

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    root = budget_workspace(tmp_path)
    state = EditorState(root, current_file="src/big.py", selection=(100, 110), open_files=("src/other.py",))
    for budget in (80, 700, 2500):
        ctx = build_context(state, "function_52 #file:src/helper.py", budget_tokens=budget, count_tokens=count)
        assert count(ctx.render()) + count(ctx.instructions()) <= budget
        assert ctx.used_tokens <= budget and all(p.tokens == count(p.text) for p in ctx.parts)
        assert ctx.used_tokens >= budget * 0.6 or not ctx.dropped  # the budget is used, not wasted

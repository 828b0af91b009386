"""The agent's tools on a small git project: reading, listing, searching, editing, commands and tests."""

from __future__ import annotations

import json
import sys

import pytest

from corolla.assistant.agent import TOOLS, CommandPolicy, ToolContext, detect_test_command, openai_tools, run_tool
from corolla.assistant.agent.testing import summarise_tests
from corolla.assistant.edits import Allowance
from tests.assistant.conftest import CALC, git


@pytest.fixture()
def ctx(workspace) -> ToolContext:
    return ToolContext(workspace, CommandPolicy(timeout_s=120))


def call(ctx, name, **args):
    return run_tool(ctx, name, args)


# --- schemas and argument checks -------------------------------------------------------------------
def test_openai_tools_describe_every_tool():
    tools = openai_tools()
    assert [t["function"]["name"] for t in tools] == list(TOOLS)
    for t in tools:
        assert t["type"] == "function" and t["function"]["description"]
        assert t["function"]["parameters"]["type"] == "object"
        json.dumps(t)
    assert [t["function"]["name"] for t in openai_tools(["edit", "read_file"])] == ["edit", "read_file"]
    with pytest.raises(ValueError):
        openai_tools(["nope"])


@pytest.mark.parametrize("name, args, words", [
    ("read_fil", {"path": "calc.py"}, ["unknown tool", "read_file"]),
    (None, {}, ["unknown tool"]),
    ("read_file", {}, ["missing required argument 'path'", "Usage: read_file(path: string"]),
    ("read_file", {"path": "calc.py", "lines": 3}, ["unknown argument 'lines'"]),
    ("read_file", {"path": "calc.py", "start_line": "3"}, ["'start_line' must be an integer", "without quotes"]),
    ("read_file", {"path": 3}, ["'path' must be a string"]),
    ("read_file", {"path": "calc.py", "start_line": 0}, ["at least 1"]),
    ("read_file", {"path": "calc.py", "start_line": True}, ["must be an integer"]),
    ("search", {"query": "x", "kind": "regex"}, ["one of 'text', 'symbol'"]),
    ("read_file", ["calc.py"], ["must be a JSON object"]),
    ("read_file", "{not json", ["not valid JSON"]),
])
def test_model_mistakes_give_a_message_not_an_exception(ctx, name, args, words):
    res = run_tool(ctx, name, args)
    assert not res.ok
    for w in words:
        assert w in res.output


def test_arguments_may_come_as_json_text_and_null_optional(ctx):
    assert run_tool(ctx, "read_file", '{"path": "calc.py", "end_line": null}').ok
    assert run_tool(ctx, "list_dir", None).ok


# --- read_file ---------------------------------------------------------------------------------
def test_read_file_numbers_lines_and_reads_ranges(ctx):
    res = call(ctx, "read_file", path="calc.py")
    assert res.ok and "calc.py (lines 1-6 of 6" in res.output and "1\tdef add(a, b):" in res.output
    res = call(ctx, "read_file", path="./calc.py", start_line=6, end_line=99)
    assert res.ok and "6\t    return sum(values) / len(values)" in res.output and "add" not in res.output
    assert res.data["start_line"] == 6 and res.data["end_line"] == 6


def test_read_file_caps_lines_and_says_how_to_read_on(ctx):
    (ctx.root / "big.txt").write_text("".join(f"line {i}\n" for i in range(1, 1001)))
    res = call(ctx, "read_file", path="big.txt")
    assert res.ok and res.data["end_line"] == 400 and res.data["truncated"]
    assert "start_line=401" in res.output and "line 401" not in res.output
    (ctx.root / "wide.txt").write_text(("x" * 1000 + "\n") * 100)
    res = call(ctx, "read_file", path="wide.txt")
    assert len(res.output) < 17_000 and res.data["truncated"]


@pytest.mark.parametrize("path, words", [
    ("missing.py", "does not exist"), ("tests", "is a directory"), ("../outside.txt", "outside the workspace"),
    ("/etc/passwd", "outside the workspace"), (".git/config", ".git"), (".Git/config", ".git"),
])
def test_read_file_refusals(ctx, path, words):
    res = call(ctx, "read_file", path=path)
    assert not res.ok and words in res.output


def test_read_file_past_the_end_and_binary(ctx):
    assert "has 6 lines" in call(ctx, "read_file", path="calc.py", start_line=9).output
    (ctx.root / "blob.bin").write_bytes(b"\0\1\2")
    res = call(ctx, "read_file", path="blob.bin")
    assert not res.ok and "binary" in res.output


# --- list_dir --------------------------------------------------------------------------------------
def test_list_dir_honours_gitignore_and_depth(ctx):
    (ctx.root / ".gitignore").write_text("build/\n")
    (ctx.root / "build").mkdir()
    (ctx.root / "build" / "out.o").write_text("x")
    (ctx.root / "src" / "pkg" / "deep").mkdir(parents=True)
    (ctx.root / "src" / "pkg" / "deep" / "a.py").write_text("")
    (ctx.root / "src" / "pkg" / "b.py").write_text("")
    res = call(ctx, "list_dir")
    assert res.ok and "calc.py" in res.output and "build" not in res.output and ".git/" not in res.output
    assert "  pkg/ (2 files)" in res.output
    res = call(ctx, "list_dir", path="src", depth=3)
    assert "deep/" in res.output and "a.py" in res.output
    assert not call(ctx, "list_dir", path="calc.py").ok
    assert not call(ctx, "list_dir", path="nowhere").ok
    assert not call(ctx, "list_dir", path="..").ok


# --- search ----------------------------------------------------------------------------------------
def test_search_text_literal_regex_and_case(ctx):
    res = call(ctx, "search", query="sum(values)")
    assert res.ok and "calc.py:6:" in res.output
    assert "calc.py:1:" in call(ctx, "search", query=r"def \w+\(a, b\)").output
    res = call(ctx, "search", query="DEF MEAN")
    assert res.ok and "calc.py:5:" in res.output and "ignoring case" in res.output
    res = call(ctx, "search", query="no such text anywhere")
    assert res.ok and "no matches" in res.output


def test_search_caps_hits_and_filters_by_glob(ctx):
    (ctx.root / "many.txt").write_text("needle\n" * 120)
    (ctx.root / "pkg").mkdir()
    (ctx.root / "pkg" / "one.py").write_text("needle = 1\n")
    res = call(ctx, "search", query="needle")
    assert res.output.count("needle") >= 50 and "showing 50 of 121 matches in 2 files" in res.output
    res = call(ctx, "search", query="needle", glob="*.py")
    assert res.ok and res.data["files"] == ["pkg/one.py"] and "many.txt" not in res.output


def test_search_symbols(ctx):
    (ctx.root / "shapes.py").write_text("class Mean:\n    def area(self):\n        return 1\n")
    res = call(ctx, "search", query="mean", kind="symbol")
    assert res.ok and "calc.py:5:" in res.output and "shapes.py:1:" in res.output
    assert "shapes.py:2:" in call(ctx, "search", query="area", kind="symbol").output


# --- edit and write_file --------------------------------------------------------------------------
def test_edit_applies_and_records(ctx):
    res = call(ctx, "edit", path="calc.py", search="    return a + b\n", replace="    return b + a\n")
    assert res.ok and res.data["files"] == ["calc.py"] and "+    return b + a" in res.output
    assert "return b + a" in (ctx.root / "calc.py").read_text()
    assert len(ctx.applied) == 1 and ctx.applied[0].paths == ("calc.py",)


def test_edit_refusals_leave_files_alone(ctx):
    res = call(ctx, "edit", path="calc.py", search="def nowhere():\n    pass\n", replace="x = 1\n")
    assert not res.ok and "read_file" in res.output
    res = call(ctx, "edit", path="calc.py", search="", replace="x = 1\n")
    assert not res.ok and "already exists" in res.output
    res = call(ctx, "edit", path="calc.py", search="    return a + b\n", replace="    return a +\n")
    assert not res.ok and "parses" in res.output
    res = call(ctx, "edit", path=".git/config", search="", replace="x")
    assert not res.ok and ".git" in res.output
    res = call(ctx, "edit", path="../evil.py", search="", replace="x")
    assert not res.ok and "outside the workspace" in res.output
    res = call(ctx, "edit", path="calc.py", search="    return a + b\n", replace="    return a + b\n")
    assert not res.ok and res.unchanged and "change nothing" in res.output
    assert (ctx.root / "calc.py").read_text() == CALC and ctx.applied == []
    assert not (ctx.root.parent / "evil.py").exists()


def test_edit_and_write_file_create_new_files(ctx):
    res = call(ctx, "edit", path="pkg/new.py", search="", replace="VALUE = 1\n")
    assert res.ok and (ctx.root / "pkg" / "new.py").read_text() == "VALUE = 1\n"
    res = call(ctx, "write_file", path="notes/todo.md", content="# todo\n")
    assert res.ok and (ctx.root / "notes" / "todo.md").read_text() == "# todo\n"
    res = call(ctx, "write_file", path="calc.py", content="x = 1\n")
    assert not res.ok and "use edit" in res.output
    assert len(ctx.applied) == 2


def test_revert_all_restores_the_workspace(ctx):
    ctx.allow = Allowance.from_request("rename mean to average")  # what Agent.run sets from such a task
    assert call(ctx, "edit", path="calc.py", search="    return a + b\n", replace="    return a + b + 0\n").ok
    assert call(ctx, "edit", path="calc.py", search="def mean(values):\n", replace="def average(values):\n").ok
    assert call(ctx, "write_file", path="extra.py", content="E = 1\n").ok
    assert ctx.revert_all() == ["extra.py", "calc.py"]
    assert (ctx.root / "calc.py").read_text() == CALC and not (ctx.root / "extra.py").exists()
    assert ctx.applied == [] and git(ctx.root, "status", "--porcelain") == ""


def test_an_edit_renaming_a_used_function_is_refused_unless_the_task_asks(ctx):
    res = call(ctx, "edit", path="calc.py", search="def mean(values):\n", replace="def average(values):\n")
    assert not res.ok and res.data["error"] == "StructureBreakError" and "`mean` would be renamed" in res.output
    assert (ctx.root / "calc.py").read_text() == CALC


# --- run_command -----------------------------------------------------------------------------------
def test_run_command_allowed_refused_and_failing(ctx):
    res = call(ctx, "run_command", command="git log --oneline")
    assert res.ok and "Add calc" in res.output and res.data["exit_code"] == 0
    res = call(ctx, "run_command", command="rm calc.py")
    assert not res.ok and "refused" in res.output and (ctx.root / "calc.py").exists()
    res = call(ctx, "run_command", command="curl https://example.com")
    assert not res.ok and "example.com" in res.output
    res = call(ctx, "run_command", command="cat missing.txt")
    assert not res.ok and res.data["exit_code"] != 0 and "exit code" in res.output
    assert [c["command"] for c in ctx.commands] == ["git log --oneline", "cat missing.txt"]
    assert set(ctx.commands[0]) == {"command", "exit_code", "timed_out", "duration_s"}


# --- run_tests -------------------------------------------------------------------------------------
def test_run_tests_reports_passing_and_failing(ctx):
    test = ctx.root / "tests" / "test_calc.py"
    test.write_text("from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    (ctx.root / "tests" / "conftest.py").write_text("import sys, pathlib\n"
                                                   "sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))\n")
    res = call(ctx, "run_tests")
    assert res.ok and res.data["passed"] and res.data["exit_code"] == 0, res.output
    assert res.data["command"].startswith(f"{sys.executable} -m pytest -q")
    assert res.data["summary"].startswith("1 passed")
    test.write_text(test.read_text() + "\n\ndef test_bad():\n    assert add(1, 1) == 3\n")
    res = call(ctx, "run_tests")
    assert not res.ok and not res.data["passed"] and res.data["exit_code"] == 1
    assert "1 failed, 1 passed" in res.data["summary"] and "test_bad" in res.output
    res = call(ctx, "run_tests", args="-k add")
    assert res.ok and res.data["command"].endswith("-k add")
    assert ctx.commands[-1]["command"] == res.data["command"]


def test_run_tests_without_a_test_setup(tmp_path):
    res = run_tool(ToolContext(tmp_path, CommandPolicy()), "run_tests", {})
    assert not res.ok and "no test setup" in res.output


@pytest.mark.parametrize("files, expected", [
    ({"pytest.ini": "[pytest]\n"}, "pytest"),
    ({"pyproject.toml": "[tool.pytest.ini_options]\n"}, "pytest"),
    ({"setup.cfg": "[tool:pytest]\n"}, "pytest"),
    ({"conftest.py": ""}, "pytest"),
    ({"tests/test_a.py": ""}, "pytest"),
    ({"test_a.py": ""}, "pytest"),
    ({"package.json": json.dumps({"scripts": {"test": "jest"}})}, ["npm", "test"]),
    ({"package.json": json.dumps({"scripts": {"test": 'echo "Error: no test specified" && exit 1'}})}, None),
    ({"go.mod": "module x\n"}, ["go", "test", "./..."]),
    ({"Cargo.toml": "[package]\n"}, ["cargo", "test"]),
    ({"pyproject.toml": "[project]\nname = 'x'\n"}, None),
    ({}, None),
])
def test_detect_test_command(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = detect_test_command(tmp_path)
    if expected == "pytest":
        assert found == [sys.executable, "-m", "pytest", "-q"]
    else:
        assert found == expected


@pytest.mark.parametrize("output, summary", [
    ("..F\nFAILED t.py::x\n1 failed, 2 passed in 0.12s\n", "1 failed, 2 passed in 0.12s"),
    ("===== 3 passed, 1 warning in 1.00s =====\n", "3 passed, 1 warning in 1.00s"),
    ("\nno tests ran in 0.01s\n", "no tests ran in 0.01s"),
    ("running 2 tests\ntest result: ok. 2 passed; 0 failed;\n", "test result: ok. 2 passed; 0 failed;"),
    ("Tests:       1 failed, 3 passed, 4 total\nTime: 1s\n", "Tests:       1 failed, 3 passed, 4 total"),
    ("ok  \texample.com/x\t0.01s\n", "ok  \texample.com/x\t0.01s"),
])
def test_summarise_tests(output, summary):
    assert summarise_tests(output) == summary

"""The edit tasks of benchmarks/edits.py are honest: each check fails on the original file and
passes on the reference solution (``--verify``), and the runner classifies an edit's outcome right
(with a stand-in for ``corolla edit``, no model)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_edits", ROOT / "benchmarks" / "edits.py")
edits = importlib.util.module_from_spec(_spec)
sys.modules["bench_edits"] = edits  # dataclasses look the module up by name
_spec.loader.exec_module(edits)

TASKS = edits.load_tasks()
HAVE_NODE = shutil.which("node") is not None


def _usable(task) -> bool:
    return HAVE_NODE or not task.file.endswith(".js")


@pytest.fixture(scope="module")
def verified() -> dict[str, list[str]]:
    """``--verify`` of every task (two at a time, as the script does)."""
    return edits.verify([t for t in TASKS if _usable(t)], jobs=2)


def test_enough_tasks():
    assert len(TASKS) >= 12
    assert len({t.name for t in TASKS}) == len(TASKS)
    assert sum(t.lines is not None for t in TASKS) >= 4  # some edits target a line range
    assert sum(t.lines is None for t in TASKS) >= 4  # and some the whole file


@pytest.mark.slow  # every task's check runs twice, each in its own pytest process (most of this file's time)
@pytest.mark.parametrize("task", TASKS, ids=[t.name for t in TASKS])
def test_task_is_honest(task, verified):
    if not _usable(task):
        pytest.skip("node is not installed")
    assert (task.folder / task.check).is_file()
    assert task.instruction.strip()
    assert verified[task.name] == [], "\n".join(verified[task.name])


def _copy_task(tmp_path: Path, name: str) -> edits.Task:
    src = next(t for t in TASKS if t.name == name)
    shutil.copytree(src.folder, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return edits.load_tasks(tmp_path)[0]


def test_verify_flags_a_check_that_passes_on_the_original(tmp_path):
    task = _copy_task(tmp_path, "08_empty_list")
    shutil.copy(task.folder / "solution" / task.file, task.folder / task.file)
    problems = edits.verify_task(task)
    assert any("the solution is the original file" in p for p in problems)
    assert any("passes on the original" in p for p in problems)


def test_verify_flags_a_solution_outside_the_lines(tmp_path):
    task = _copy_task(tmp_path, "08_empty_list")
    spec = task.folder / "task.json"
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "lines": [11, 13]}))
    assert any("outside 11-13" in p for p in edits.verify_task(edits.load_tasks(tmp_path)[0]))


FAKE_COROLLA = '''#!{python}
"""Stand-in for `corolla edit`: FAKE_MODE=solve|break|refuse|crash."""
import os, shutil, sys
args = sys.argv[1:]
assert args[0] == "edit" and "--yes" in args and "--format" in args and "-m" in args
workspace = args[args.index("--workspace") + 1]
path = os.path.join(workspace, args[1].split(":")[0])
mode = os.environ["FAKE_MODE"]
if mode == "solve":
    shutil.copy(os.environ["FAKE_SOLUTION"], path)
elif mode == "break":
    open(path, "a").write("\\ndef broken(:\\n")
elif mode == "refuse":
    print("the model's answer holds no edit", file=sys.stderr)
    sys.exit(2)
else:
    sys.exit(1)
'''


@pytest.mark.parametrize("mode, outcome", [("solve", "solved"), ("break", "broken"), ("refuse", "refused"),
                                           ("crash", "error")])
def test_run_edit_outcomes(tmp_path, monkeypatch, mode, outcome):
    task = next(t for t in TASKS if t.name == "02_sum_off_by_one")
    fake = tmp_path / "corolla"
    fake.write_text(FAKE_COROLLA.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_MODE", mode)
    monkeypatch.setenv("FAKE_SOLUTION", str(task.folder / "solution" / task.file))
    result = edits.run_edit(task, "whole", endpoint="http://127.0.0.1:9/v1", model="m", corolla=str(fake),
                            timeout_s=60)
    assert result["outcome"] == outcome, result
    assert result["changed"] == (mode in ("solve", "break"))


def test_summary_and_best_format():
    results = [{"format": "whole", "outcome": "solved", "wall_s": 1.0},
               {"format": "whole", "outcome": "broken", "wall_s": 3.0},
               {"format": "search_replace", "outcome": "solved", "wall_s": 2.0},
               {"format": "search_replace", "outcome": "refused", "wall_s": 2.0}]
    summary = edits.summarize(results, ["whole", "search_replace"], 2)
    assert summary["whole"]["solved"] == 1 and summary["whole"]["broken"] == 1
    assert summary["search_replace"]["share_solved"] == 0.5
    assert edits.best_format(summary) == "search_replace"  # as many solved, none broken

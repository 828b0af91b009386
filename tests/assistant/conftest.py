"""Assistant fixtures: one scripted model served for the whole module, and a fresh workspace per test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.assistant.scripted import scripted_server

CALC = '''\
def add(a, b):
    return a + b


def mean(values):
    return sum(values) / len(values)
'''


@pytest.fixture(scope="module")
def scripted():
    """(ScriptedModel, base_url ending in /v1); tests reset it before scripting."""
    with scripted_server() as served:
        yield served


@pytest.fixture()
def llm_model(scripted):
    model, _ = scripted
    model.reset()
    return model


@pytest.fixture()
def workspace(tmp_path) -> Path:
    """A small git project: calc.py, AGENTS.md, one commit."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "calc.py").write_text(CALC)
    (root / "AGENTS.md").write_text("Explain things for a beginner. Raise ValueError for bad input.\n")
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text("[tool.pytest.ini_options]\ntestpaths = ['tests']\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Add calc")
    return root


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def assistant(scripted, llm_model, workspace):
    from corolla.assistant.core import Assistant, AssistantConfig
    from corolla.assistant.llm import LLM, LLMConfig

    _, base = scripted
    return Assistant(LLM(LLMConfig(endpoint=base, model=None)), workspace, config=AssistantConfig(edit_format="whole"))


# --- the agent's tests: the scripted model through corolla.assistant.llm, and a project with a failing test ---
TESTS = '''\
import pytest

from calc import add, mean


def test_add():
    assert add(2, 3) == 5


def test_mean_of_empty_list_raises():
    with pytest.raises(ValueError):
        mean([])
'''


@pytest.fixture()
def llm(scripted, llm_model):
    from corolla.assistant.llm import LLM, LLMConfig

    _, base = scripted
    return LLM(LLMConfig(endpoint=base, model=None))


@pytest.fixture()
def project(workspace):
    """The workspace with a test that fails until mean() raises on an empty list."""
    (workspace / "tests" / "test_calc.py").write_text(TESTS)
    git(workspace, "add", "-A")
    git(workspace, "commit", "-q", "-m", "Add tests")
    return workspace

"""Finding a project's test command and reading the verdict out of its output.

Detection looks only at files at the workspace root (and ``tests/``): pytest configuration or
``conftest.py`` first, then ``package.json``'s ``scripts.test`` (not npm's "no test specified"
stub), ``go.mod``, ``Cargo.toml``, and last weaker Python signs (a ``tests/`` folder with Python
files, ``test_*.py`` files). Python runs with the workspace's ``.venv`` interpreter when it has one,
else the interpreter running corolla, as ``-m pytest -q``, so the tests see that environment's
packages.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from corolla.assistant.workspace import peek_text

NPM_STUB = "no test specified"
_TEST_NAME = re.compile(r"^test_|_test\.|\.(test|spec)\.")  # test_x.py, x_test.py, x_test.go, x.test.ts, x.spec.js
_SUMMARY_PATTERNS = (
    re.compile(r"^=*\s*((?:\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|warnings?|deselected)"
               r"(?:, )?)+(?: in [\d.]+s(?: \([\d:]+\))?)?)\s*=*$"),          # pytest
    re.compile(r"^=*\s*(no tests ran.*?)\s*=*$"),                 # pytest, nothing collected
    re.compile(r"^(test result: .*)$"),                           # cargo
    re.compile(r"^(Tests?:\s+.*total.*)$"),                       # jest
    re.compile(r"^((?:ok|FAIL|---)\s+\S+.*)$"),                   # go
    re.compile(r"^(\s*\d+ (?:passing|failing|pending).*)$"),      # mocha
)


def _python(root: Path) -> str:
    venv = root.resolve() / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def _npm_test(root: Path) -> bool:
    try:
        data = json.loads(peek_text(root, "package.json") or "{}")
    except ValueError:
        return False
    script = data.get("scripts", {}).get("test") if isinstance(data, dict) and isinstance(data.get("scripts"), dict) \
        else None
    return isinstance(script, str) and bool(script.strip()) and NPM_STUB not in script


def is_test_file(path: str) -> bool:
    """Whether ``path`` is named as a test file of its language."""
    return _TEST_NAME.search(path.rsplit("/", 1)[-1]) is not None


def detect_test_command(root: Path) -> list[str] | None:
    """The argv that runs ``root``'s tests, or None when no test setup is recognised."""
    root = Path(root)
    pytest_cmd = [_python(root), "-m", "pytest", "-q"]
    if ((root / "pytest.ini").is_file() or (root / "conftest.py").is_file()
            or "[tool.pytest" in peek_text(root, "pyproject.toml") or "[tool:pytest]" in peek_text(root, "setup.cfg")
            or "[pytest]" in peek_text(root, "tox.ini")):
        return pytest_cmd
    if _npm_test(root):
        return ["npm", "test"]
    if (root / "go.mod").is_file():
        return ["go", "test", "./..."]
    if (root / "Cargo.toml").is_file():
        return ["cargo", "test"]
    tests = root / "tests"
    if tests.is_dir() and any(tests.rglob("*.py")):
        return pytest_cmd
    if any(root.glob("test_*.py")) or any(root.glob("*_test.py")):
        return pytest_cmd
    return None


_PYTEST_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+?)(?: - .*)?$")


def failing_tests(output: str, exit_code: int | None) -> frozenset[str] | None:
    """The tests a pytest run reports failing or erroring (its short summary's ``FAILED``/``ERROR`` lines), an
    empty set when it passed; None when the output does not say (another runner, a run cut short)."""
    if exit_code == 0:
        return frozenset()
    found = frozenset(m.group(1) for line in output.splitlines() if (m := _PYTEST_FAILED.match(line.rstrip())))
    return found or None


def summarise_tests(output: str) -> str:
    """The line of a test run's output that says how it went (the last one that looks like a verdict)."""
    lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        for pattern in _SUMMARY_PATTERNS:
            m = pattern.match(line)
            if m:
                return m.group(1).strip()
    return lines[-1].strip()[:200] if lines else ""

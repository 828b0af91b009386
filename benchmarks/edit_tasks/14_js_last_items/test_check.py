"""Runs the JavaScript module with node and compares what it prints."""

import json
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def js(expression):
    """The JSON value of ``expression`` evaluated by node with ``l`` = require("./list.js")."""
    script = f'const l = require("./list.js"); console.log(JSON.stringify({expression}));'
    out = subprocess.run(["node", "-e", script], cwd=HERE, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_last():
    assert js("l.last([1, 2, 3, 4], 2)") == [3, 4]
    assert js("l.last([1, 2, 3], 1)") == [3]
    assert js("l.last([1, 2, 3], 3)") == [1, 2, 3]
    assert js("l.last([1, 2], 5)") == [1, 2]


def test_existing_behaviour():
    assert js("l.last([1, 2, 3], 0)") == []
    assert js("l.last([1, 2, 3], -1)") == []
    assert js("l.first([1, 2, 3], 2)") == [1, 2]
    assert js("l.chunk([1, 2, 3, 4, 5], 2)") == [[1, 2], [3, 4], [5]]

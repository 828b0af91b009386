"""The web pages of a swarm serving two models (``multi_swarm``: `corolla swarm up` with a tiny Llama and a
tiny Qwen2 on one bootstrap peer), in headless Chromium: the dashboard draws one block strip and one
server table per model, and the chat page offers both models."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def web_app_url(multi_swarm) -> str:  # the pages of `swarm up --api-port` (instead of the one-model app)
    return multi_swarm.base


def test_dashboard_shows_a_block_strip_per_model(web, multi_swarm):
    page = web.page
    page.goto(web.url + "/swarm.html")
    page.wait_for_selector("body[data-loaded=true]")
    sections = page.get_by_test_id("model")
    models = list(multi_swarm.folders)
    assert sections.evaluate_all("els => els.map(e => e.dataset.modelId)") == models
    for i, model_id in enumerate(models):
        section = sections.nth(i)
        assert section.get_by_test_id("model-id").inner_text() == model_id
        blocks = section.get_by_test_id("block").evaluate_all("els => els.map(e => Number(e.dataset.coverage))")
        assert blocks == [1] * 6, f"{model_id}: {blocks}"
        assert section.get_by_test_id("summary").get_attribute("data-uncovered") == "0"
        rows = section.get_by_test_id("server-row")
        assert rows.count() == 1 and rows.first.get_attribute("data-state") == "online"
    assert "2 models" in page.get_by_test_id("overview").inner_text()
    assert not web.errors, web.errors


def test_dashboard_strips_follow_each_models_own_coverage(web):
    """Two made-up models, one with a hole: each strip shows its own model's blocks."""
    server = {"peer_id": "A", "start_block": 0, "end_block": 4, "state": "online", "inference_rps": 1.0,
              "forward_tps": 10.0, "active_sessions": 0, "queued_requests": 0, "cache_tokens_left": 10,
              "dtype": "float32", "quant": "none", "public_name": None, "version": "0.1.0"}
    models = [{"model_id": "big", "num_blocks": 8, "coverage": [1, 1, 1, 1, 0, 0, 0, 0], "servers": [server]},
              {"model_id": "small", "num_blocks": 4, "coverage": [2, 2, 2, 2],
               "servers": [server, {**server, "peer_id": "B"}]}]
    page = web.page
    page.route("**/api/swarm", lambda route: route.fulfill(json={"models": models}))
    page.goto(web.url + "/swarm.html")
    page.wait_for_selector("body[data-loaded=true]")
    sections = page.get_by_test_id("model")
    assert sections.count() == 2
    big, small = sections.nth(0), sections.nth(1)
    assert big.get_by_test_id("block").evaluate_all("els => els.map(e => e.className.split(' ').pop())") == \
        ["cov-1"] * 4 + ["cov-0"] * 4
    assert small.get_by_test_id("block").count() == 4
    assert big.get_by_test_id("summary").get_attribute("data-uncovered") == "4"
    assert small.get_by_test_id("summary").get_attribute("data-uncovered") == "0"
    assert small.get_by_test_id("server-row").count() == 2
    assert "1 fully covered" in page.get_by_test_id("overview").inner_text()
    assert not web.errors, web.errors


def test_chat_page_offers_every_model(web, multi_swarm):
    page = web.page
    page.goto(web.url + "/")
    options = page.get_by_test_id("model").locator("option")
    options.first.wait_for(state="attached")
    assert options.evaluate_all("els => els.map(e => e.value)") == list(multi_swarm.folders)
    assert not web.errors, web.errors

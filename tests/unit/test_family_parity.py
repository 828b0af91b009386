"""In-process parity: our spans + head reproduce the full Hugging Face model (no swarm)."""

import pytest
import torch

from corolla.models.loading import load_config, load_head, load_span
from corolla.models.registry import family_for
from tests.tiny_models import TINY, save_tiny_model


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request, tmp_path_factory):
    folder = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    from transformers import AutoModelForCausalLM

    return folder, AutoModelForCausalLM.from_pretrained(folder).eval()


def _split(n):
    return [(0, n)], [(0, n // 2), (n // 2, n)], [(0, 1), (1, n - 1), (n - 1, n)]


@pytest.mark.parametrize("split", [0, 1, 2])
def test_spans_match_full_model(tiny, split):
    folder, ref = tiny
    config = load_config(folder)
    spans = [load_span(folder, config, a, b, torch.float32) for a, b in _split(config.num_hidden_layers)[split]]
    head = load_head(folder, config)
    ids = torch.randint(0, config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids).logits
        # stateless pass
        hidden = head.embed(ids)
        for span in spans:
            hidden = span(hidden)
        assert torch.allclose(head.logits(hidden), expected, atol=1e-4)
        # prefill 7 then decode one token at a time with per-span caches
        caches = [span.new_cache() for span in spans]
        outs = []
        for start, stop in [(0, 7)] + [(t, t + 1) for t in range(7, 11)]:
            hidden = head.embed(ids[:, start:stop])
            for span, cache in zip(spans, caches):
                hidden = span(hidden, cache, start)
            outs.append(head.logits(hidden))
        assert torch.allclose(torch.cat(outs, dim=1), expected, atol=1e-4)


def test_span_loads_only_its_blocks(tiny):
    folder, _ = tiny
    config = load_config(folder)
    span = load_span(folder, config, 1, 3, torch.float32)
    assert len(span.layers) == 2
    n_params = sum(p.numel() for p in span.parameters())
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(folder)
    prefix = family_for(config).block_prefix(1)
    per_block = sum(p.numel() for name, p in full.named_parameters() if name.startswith(prefix))
    assert per_block > 0
    assert n_params == 2 * per_block


def test_sub_span_of_a_loaded_span(tiny):
    """A route may use only part of a server's span (e.g. after a failover)."""
    folder, ref = tiny
    config = load_config(folder)
    n = config.num_hidden_layers
    whole = load_span(folder, config, 0, n, torch.float32)
    head = load_head(folder, config)
    ids = torch.randint(0, config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(ids).logits
        caches = [whole.new_cache(), whole.new_cache()]
        outs = []
        for start, stop in [(0, 5), (5, 6), (6, 9)]:
            hidden = head.embed(ids[:, start:stop])
            hidden = whole(hidden, caches[0], start, 0, 2)
            hidden = whole(hidden, caches[1], start, 2, n)
            outs.append(head.logits(hidden))
    assert torch.allclose(torch.cat(outs, dim=1), expected, atol=1e-4)

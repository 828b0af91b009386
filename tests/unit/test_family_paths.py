"""Every family, in-process, on the paths a server runs: batched steps of many sessions equal solo
runs, every precision stays close to float32 (or the server refuses it at start), and the training
path (LoRA through ``Span.step`` under autograd) gives the gradients of transformers' own model
with the same LoRA hooked onto its modules."""

from __future__ import annotations

import contextlib

import pytest
import torch

from corolla.errors import ModelError
from corolla.models.adapters import BlockAdapters
from corolla.models.kv import GrowingKV
from corolla.models.loading import block_sizes, load_config, load_head, load_span, module_bytes
from corolla.models.quant import quantize_span
from corolla.models.registry import family_for
from tests.tiny_models import TINY, save_tiny_model


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    ref = AutoModelForCausalLM.from_pretrained(folder).eval().requires_grad_(False)
    return folder, load_config(folder), ref


def _ids(seed: int, length: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, 320, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_batched_sessions_equal_solo_runs(tiny):
    """Sessions at different positions, lengths and batch sizes in one step, against each alone."""
    folder, config, _ = tiny
    span = load_span(folder, config, 0, config.num_hidden_layers, torch.float32)
    head = load_head(folder, config)
    prompts = [_ids(1, 5), _ids(2, 9, batch=2), _ids(3, 3)]
    solo_caches = [GrowingKV() for _ in prompts]
    batch_caches = [GrowingKV() for _ in prompts]
    with torch.no_grad():
        hidden = [head.embed(p) for p in prompts]
        solo = [span.step([(h, kv, 0)])[0] for h, kv in zip(hidden, solo_caches)]
        batched = span.step([(h, kv, 0) for h, kv in zip(hidden, batch_caches)])
        for _ in range(3):  # decode steps: one new token each, at each session's own position
            new = [head.embed(_ids(10 + i, 1, batch=p.shape[0])) for i, p in enumerate(prompts)]
            positions = [len(kv.keys[0][0, 0]) for kv in solo_caches]
            solo = [span.step([(h, kv, pos)])[0] for h, kv, pos in zip(new, solo_caches, positions)]
            batched = span.step([(h, kv, pos) for h, kv, pos in zip(new, batch_caches, positions)])
            for a, b in zip(solo, batched):
                assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "int8", "fp16-decode"])
def test_every_precision_stays_close_or_is_refused(tiny, dtype):
    folder, config, ref = tiny
    family = family_for(config)
    quant = dtype if isinstance(dtype, str) else "none"
    load_dtype = torch.float32 if isinstance(dtype, str) else dtype
    try:
        family.check_precision(config, load_dtype, quant)
    except ModelError as e:
        assert config.model_type == "mixtral" and quant in ("int8", "fp16-decode"), e  # only MoE x quantized is refused
        return
    span = quantize_span(load_span(folder, config, 0, config.num_hidden_layers, load_dtype), quant, load_dtype)
    if quant == "int8":
        assert not any(type(m) is torch.nn.Linear for m in span.modules())
    if quant == "fp16-decode":  # every linear layer has its float16 copy; a decode step uses it and stays close
        linears = [m for m in span.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(m.weight16.dtype == torch.float16 and m.weight.dtype == torch.float32
                               for m in linears)
        exact = load_span(folder, config, 0, config.num_hidden_layers, torch.float32)
        with torch.no_grad():
            x = load_head(folder, config).embed(_ids(1, 1))
            few, want = span(x), exact(x)
            for m in linears:
                m.weight16 = torch.zeros_like(m.weight16)  # what a decode step reads: the copy
            zeroed = span(x)
        assert few.dtype == torch.float32 and 0 < (few - want).norm() / want.norm() < 0.01
        assert not torch.allclose(zeroed, few)
    head = load_head(folder, config)
    exact = load_span(folder, config, 0, config.num_hidden_layers, torch.float32)
    ids = _ids(4, 24)
    with torch.no_grad():
        x = head.embed(ids)
        hidden, want = span(x.to(load_dtype)).float(), exact(x)
        logits, expected = head.logits(hidden), ref(ids).logits
    # rounding, not a broken block (int8 quantizes activations per tensor: coarser on tiny random models)
    assert (hidden - want).norm() / want.norm() < (0.15 if quant == "int8" else 0.05)
    error = (logits - expected).abs().max()
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * error  # where rounding cannot flip the choice, it must not
    assert torch.equal(logits.argmax(-1)[clear], expected.argmax(-1)[clear])


@contextlib.contextmanager
def _hf_lora(ref, family, adapters: BlockAdapters):
    """The same LoRA on transformers' model, added by hooks to its projections' outputs."""
    handles = []
    for (block, target), (a, b) in adapters.lora.items():
        module = ref.get_submodule(family.block_prefix(block) + family.lora_modules[target])

        def hook(_module, args, out, a=a, b=b):
            return out + adapters.scale * ((args[0] @ a.t()) @ b.t())

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def test_training_path_gives_transformers_gradients(tiny):
    folder, config, ref = tiny
    family = family_for(config)
    n = config.num_hidden_layers
    span = load_span(folder, config, 0, n, torch.float32)
    head = load_head(folder, config)
    shapes = family.lora_shapes(config)
    g = torch.Generator().manual_seed(7)
    adapters = BlockAdapters(scale=2.0)
    for block in range(n):
        for target, (out_f, in_f) in shapes.items():
            adapters.lora[(block, target)] = (torch.randn(3, in_f, generator=g).mul_(0.1).requires_grad_(),
                                              torch.randn(out_f, 3, generator=g).mul_(0.1).requires_grad_())
    ids = _ids(5, 10, batch=2)
    params = [t for pair in adapters.lora.values() for t in pair]
    out = span.step([(head.embed(ids), None, 0)], adapters=[adapters])[0]
    head.logits(out).logsumexp(-1).sum().backward()
    got = [t.grad for t in params]
    for t in params:
        t.grad = None
    with _hf_lora(ref, family, adapters):
        ref(ids).logits.logsumexp(-1).sum().backward()
    for t, mine in zip(params, got):
        assert t.grad.abs().max() > 0
        assert ((mine - t.grad).abs().max() / t.grad.abs().max()).item() < 1e-4


@pytest.mark.parametrize("quant", ["none", "int8", "fp16-decode"])
def test_block_sizes_from_headers_are_what_loading_takes(tiny, quant):
    """Placement's per-block bytes (checkpoint headers, nothing loaded) = the loaded blocks' bytes."""
    folder, config, _ = tiny
    if quant != "none" and config.model_type == "mixtral":
        pytest.skip(f"Mixtral x {quant} is refused at start")
    sizes = block_sizes(folder, config, torch.float32, quant)
    assert len(sizes) == config.num_hidden_layers and min(sizes) > 0
    span = quantize_span(load_span(folder, config, 1, 3, torch.float32), quant, torch.float32)
    assert module_bytes(span.layers) == sum(sizes[1:3])


def test_a_mixture_of_experts_block_weighs_its_experts(tmp_path):
    """Mixtral's block holds every expert: about num_local_experts times a dense block's MLP."""
    from transformers import MistralConfig, MixtralConfig

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=320)
    sizes = {}
    for name, config in {"dense": MistralConfig(**common),
                         "moe": MixtralConfig(num_local_experts=8, num_experts_per_tok=2, **common)}.items():
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
        sizes[name] = block_sizes(tmp_path / name, load_config(tmp_path / name), torch.float32)[0]
    mlp = 3 * 64 * 128 * 4  # gate, up, down in float32
    assert sizes["moe"] - sizes["dense"] == 7 * mlp + 8 * 64 * 4  # seven more experts and the router


def test_head_fp16_copy_serves_decode_steps_only(tiny):
    folder, config, _ = tiny
    head = load_head(folder, config)
    hidden = torch.randn(1, 5, config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        one, many = head.logits(hidden[:, :1]), head.logits(hidden)
        head.add_fp16_copy()
        one16, many16 = head.logits(hidden[:, :1]), head.logits(hidden)
    assert head.weight16.dtype == torch.float16 and one16.dtype == torch.float32
    assert torch.equal(many16, many)  # a prefill's logits: the float32 weights, unchanged
    assert not torch.equal(one16, one) and (one16 - one).abs().max() < 0.01 * one.abs().max()


def test_head_fp16_copy_falls_back_to_float32_past_float16s_range(tiny):
    folder, config, _ = tiny
    head = load_head(folder, config)
    head.add_fp16_copy()
    with torch.no_grad():
        head.norm.weight.mul_(1e6)  # normed rows of ~1e6: past float16's 65504
        hidden = torch.randn(1, 1, config.hidden_size, generator=torch.Generator().manual_seed(4))
        got = head.logits(hidden)
        weight = head.embed_tokens.weight if head.tied else head.lm_head.weight
        exact = torch.nn.functional.linear(head.norm(hidden), weight)
    assert torch.isfinite(got).all() and torch.allclose(got, exact, rtol=1e-4, atol=1e-2 * exact.abs().max().item())

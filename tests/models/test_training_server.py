"""The server's training path in-process: per-block tasks behind inference, nothing kept after a request."""

from __future__ import annotations

import asyncio
import gc
import threading

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from corolla.models.adapters import BlockAdapters
from corolla.models.decoder import DecoderSpan
from corolla.models.llama import LlamaFamily
from corolla.server.priority import INFERENCE, TRAINING, PriorityExecutor
from corolla.server.training import TrainingRunner


def tiny_span(blocks: int = 4) -> DecoderSpan:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=blocks,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    span = LlamaFamily().build_span(cfg, 0, blocks)
    span.load_weights({k[len("model.layers."):]: v for k, v in model.state_dict().items()
                       if k.startswith("model.layers.")})
    return span.eval().requires_grad_(False)


def lora(span: DecoderSpan, rank: int = 2) -> BlockAdapters:
    g = torch.Generator().manual_seed(1)
    adapters = BlockAdapters(scale=2.0)
    for b in range(span.num_blocks):
        out_f, in_f = span.lora_shape("v")
        adapters.lora[(b, "v")] = (torch.randn(rank, in_f, generator=g), torch.randn(out_f, rank, generator=g))
    return adapters


def test_inference_tasks_go_before_queued_training_tasks():
    executor = PriorityExecutor()
    order: list[str] = []
    gate = threading.Event()
    executor.submit_with_priority(TRAINING, gate.wait)
    futures = [executor.submit_with_priority(TRAINING, order.append, "training-1"),
               executor.submit_with_priority(TRAINING, order.append, "training-2"),
               executor.submit_with_priority(INFERENCE, order.append, "inference-1"),
               executor.submit(order.append, "inference-2")]  # run_in_executor's submit is inference
    gate.set()
    for f in futures:
        f.result(timeout=5)
    assert order == ["inference-1", "inference-2", "training-1", "training-2"]
    executor.shutdown()


def test_a_backward_call_is_one_task_per_block_each_way_so_inference_waits_one_block_at_most():
    span = tiny_span(4)
    executor = PriorityExecutor()
    submitted: list[int] = []
    original = executor.submit_with_priority

    def counting(priority, fn, *args, **kwargs):
        submitted.append(priority)
        return original(priority, fn, *args, **kwargs)

    executor.submit_with_priority = counting
    runner = TrainingRunner(executor, lambda: span, torch.float32)
    x = torch.randn(2, 5, 32)
    grad_in, grads = asyncio.run(runner.backward(x, torch.randn(2, 5, 32), lora(span), 0, 4))
    assert submitted == [TRAINING] * 8
    assert grad_in.shape == x.shape and len(grads) == 8
    executor.shutdown()


def test_backward_equals_autograd_through_the_whole_span_and_frees_everything():
    span = tiny_span(4)
    executor = PriorityExecutor()
    runner = TrainingRunner(executor, lambda: span, torch.float32)
    x, g = torch.randn(2, 5, 32), torch.randn(2, 5, 32)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    # the reference: one autograd graph over all blocks
    adapters = lora(span)
    leaves = [t.clone().requires_grad_(True) for t in adapters.tensors()]
    ref = BlockAdapters(lora={k: (leaves[2 * i], leaves[2 * i + 1]) for i, k in enumerate(sorted(adapters.lora))},
                        scale=adapters.scale)
    xr = x.clone().requires_grad_(True)
    want = torch.autograd.grad(span.step([(xr, None, 0)], adapters=[ref])[0], [xr, *leaves], g)
    del ref, leaves, xr
    asyncio.run(runner.backward(x, g, lora(span), 0, 4))  # warm-up: torch and asyncio keep a few things once
    baseline = live_tensors()
    for _ in range(3):
        grad_in, grads = asyncio.run(runner.backward(x, g, lora(span), 0, 4))
        for got, expected in zip([grad_in, *grads], want):
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
        del grad_in, grads, got, expected
        assert live_tensors() == baseline  # no activation, graph or adapter tensor outlives the request
    executor.shutdown()

"""Training work of a server: stateless forward and backward with a client's trainable tensors.

Nothing is kept between requests: a backward call brings the span's input again and the server
recomputes the forward under autograd (its own weights frozen), then differentiates to the input
and to the request's adapter tensors. Every block is its own task on the compute thread at
training priority, so inference steps waiting meanwhile run between two blocks
(:mod:`corolla.server.priority`). When a request ends, every tensor of its graph goes with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import torch

from corolla.models.adapters import BlockAdapters
from corolla.models.registry import Span
from corolla.server.priority import TRAINING, PriorityExecutor


class TrainingRunner:
    def __init__(self, executor: PriorityExecutor, span_getter: Callable[[], Span], dtype: torch.dtype):
        self.executor, self._span, self.dtype = executor, span_getter, dtype
        self.active = 0  # training requests being computed now
        self.held_tokens = 0  # batch x tokens x blocks of the graphs streaming calls hold now

    async def _task(self, fn, *args):
        future = self.executor.submit_with_priority(TRAINING, fn, *args)
        return await asyncio.wrap_future(future)

    async def forward(self, hidden: torch.Tensor, adapters: BlockAdapters | None, first: int,
                      last: int) -> torch.Tensor:
        """``hidden`` through local blocks ``first:last`` with ``adapters``, block by block, no graph."""
        span = self._span()

        def block(x: torch.Tensor, i: int) -> torch.Tensor:
            with torch.inference_mode():
                ad = adapters.to(self.dtype) if adapters is not None else None
                return span.step([(x, None, 0)], i, i + 1, [ad])[0]

        self.active += 1
        try:
            x = hidden.to(self.dtype)
            for i in range(first, last):
                x = await self._task(block, x, i)
            return x.float()
        finally:
            self.active -= 1

    async def backward(self, hidden: torch.Tensor, grad_out: torch.Tensor, adapters: BlockAdapters | None,
                       first: int, last: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Gradients of ``sum(output * grad_out)`` for the input and each adapter tensor (wire
        order): the forward is recomputed under autograd, then differentiated."""
        graph = Graph(self, adapters)
        try:
            await graph.forward(hidden, first, last)
            return await graph.backward(grad_out)
        finally:
            graph.free()


class Graph:
    """One request's autograd graph over local blocks, block by block: each block's input is a
    fresh leaf, so each block's graph stands alone and is differentiated (and freed) in turn.

    The stateless backward call builds one and differentiates it at once; the streaming training
    call (``rpc_train``) answers the forward's output and keeps the graph until the same call
    brings the output's gradient — no longer than that call lives.
    """

    def __init__(self, runner: TrainingRunner, adapters: BlockAdapters | None):
        self.runner, self.adapters = runner, adapters
        self.segments: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []  # (input, output, leaves)
        for t in adapters.tensors() if adapters is not None else []:
            t.requires_grad_(True)
        self.tokens = 0

    async def forward(self, hidden: torch.Tensor, first: int, last: int) -> torch.Tensor:
        span, dtype = self.runner._span(), self.runner.dtype
        self.tokens = hidden.shape[0] * hidden.shape[1] * (last - first)

        def block_forward(x: torch.Tensor, i: int) -> torch.Tensor:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                ad = _only_block(self.adapters, i)
                out = span.step([(x, None, 0)], i, i + 1, [ad.to(dtype) if ad is not None else None])[0]
                self.segments.append((x, out, ad.tensors() if ad is not None else []))
                return out.detach()

        self.runner.active += 1
        try:
            x = hidden.to(dtype)
            for i in range(first, last):
                x = await self.runner._task(block_forward, x, i)
            return x.float()
        finally:
            self.runner.active -= 1

    async def backward(self, grad_out: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        def block_backward(grad: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            x, out, block_leaves = self.segments.pop()
            grads = torch.autograd.grad(out, [x, *block_leaves], grad.to(out.dtype), allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [x, *block_leaves])]
            return grads[0], [g.float() for g in grads[1:]]

        self.runner.active += 1
        try:
            grad, per_block = grad_out, []
            while self.segments:
                grad, block_grads = await self.runner._task(block_backward, grad)
                per_block.append(block_grads)
            return grad.float(), [g for block_grads in reversed(per_block) for g in block_grads]
        finally:
            self.runner.active -= 1

    def free(self) -> None:
        self.segments.clear()
        self.adapters = None


def _only_block(adapters: BlockAdapters | None, block: int) -> BlockAdapters | None:
    if adapters is None:
        return None
    prompts = {b: p for b, p in adapters.prompts.items() if b == block}
    lora = {k: v for k, v in adapters.lora.items() if k[0] == block}
    return BlockAdapters(prompts, lora, adapters.scale) if prompts or lora else None

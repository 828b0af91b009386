"""Fine-tuning through the swarm: adapters the client owns, and autograd over remote blocks.

The client holds every trainable tensor (:class:`SwarmAdapter`): a soft prompt at the input,
deep prompts for every block, LoRA pairs for chosen projections of every block. Servers keep
their weights frozen and keep nothing between calls: the forward pass goes hop by hop through
stateless ``rpc_forward`` calls (each carrying the tensors of that hop's blocks), and the
backward pass goes through ``rpc_backward`` in reverse, each server recomputing its span under
autograd and returning the gradients of its input and of the tensors it was sent
(:class:`RemoteBlocks`). A server that fails during either pass is banned and its blocks are
routed around; in backward, the replacement hops' inputs are recomputed first, so the step's
gradients are those of an undisturbed step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from corolla.client.remote import SwarmClient, costs_a_retry
from corolla.errors import CorollaError, NoRouteError, ServerBusyError, SessionEvictedError
from corolla.models.peft import LoraWeights, load_lora, save_lora
from corolla.models.registry import family_for
from corolla.protocol.messages import LORA_TARGETS, AdapterSpec
from corolla.protocol.rpc import RpcStream
from corolla.swarm.routing import Hop

log = logging.getLogger(__name__)

METHODS = ("prompt", "deep-prompt", "lora")
PROMPTS_FILE, PROMPTS_CONFIG = "corolla_prompts.safetensors", "corolla_prompts.json"


class SwarmAdapter(nn.Module):
    """Trainable tensors of a client: ``prompt [P, H]`` (input soft prompt), ``deep_prompts
    [blocks, P, H]`` (added to the first P positions before every block) and LoRA pairs
    ``lora_A[f"{block}_{target}"] [r, in]`` / ``lora_B[...] [out, r]`` on remote blocks."""

    def __init__(self, config: Any, *, prompt_len: int = 0, deep: bool = False, lora_rank: int = 0,
                 lora_alpha: float | None = None, lora_targets: Sequence[str] = (), seed: int | None = None,
                 embeddings: torch.Tensor | None = None):
        super().__init__()
        unknown = [t for t in lora_targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"unknown LoRA targets {unknown}; choose among {', '.join(LORA_TARGETS)}")
        if bool(lora_rank) != bool(lora_targets):
            raise ValueError("LoRA needs both a rank and targets")
        if deep and not prompt_len:
            raise ValueError("deep prompts need a prompt length")
        self.num_blocks, self.hidden_size = config.num_hidden_layers, config.hidden_size
        self.prompt_len, self.deep = prompt_len, deep
        self.lora_rank, self.lora_alpha = lora_rank, float(lora_alpha if lora_alpha is not None else 2 * lora_rank)
        self.lora_targets = tuple(t for t in LORA_TARGETS if t in lora_targets)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.prompt = None
        if prompt_len:
            if embeddings is not None:  # start from the embeddings of random vocabulary tokens (as PEFT may)
                ids = torch.randint(0, embeddings.shape[0], (prompt_len,), generator=generator)
                init = embeddings[ids].detach().float().clone()
            else:
                init = torch.randn(prompt_len, self.hidden_size, generator=generator) * 0.02
            self.prompt = nn.Parameter(init)
        self.deep_prompts = nn.Parameter(torch.zeros(self.num_blocks, prompt_len, self.hidden_size)) if deep else None
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        shapes = family_for(config).lora_shapes(config)
        missing = [t for t in self.lora_targets if t not in shapes]
        if missing:
            raise ValueError(f"{config.model_type} blocks have no LoRA target {', '.join(missing)} "
                             f"(they have {', '.join(shapes)})")
        for b in range(self.num_blocks):
            for t in self.lora_targets:
                out_f, in_f = shapes[t]
                a = torch.empty(lora_rank, in_f)
                bound = 1 / math.sqrt(in_f)  # nn.Linear's (and PEFT's) kaiming_uniform(a=sqrt(5)) bound
                a.uniform_(-bound, bound, generator=generator)
                self.lora_A[f"{b}_{t}"] = nn.Parameter(a)
                self.lora_B[f"{b}_{t}"] = nn.Parameter(torch.zeros(out_f, lora_rank))  # starts as a no-op

    @classmethod
    def create(cls, config: Any, method: str, *, prompt_len: int = 16, rank: int = 8, alpha: float | None = None,
               targets: Sequence[str] = ("q", "v"), seed: int | None = None,
               embeddings: torch.Tensor | None = None) -> SwarmAdapter:
        """A fresh adapter for ``method`` (one of :data:`METHODS`)."""
        if method == "prompt":
            return cls(config, prompt_len=prompt_len, seed=seed, embeddings=embeddings)
        if method == "deep-prompt":
            return cls(config, prompt_len=prompt_len, deep=True, seed=seed, embeddings=embeddings)
        if method == "lora":
            return cls(config, lora_rank=rank, lora_alpha=alpha, lora_targets=targets, seed=seed)
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")

    # ---- what travels ------------------------------------------------------------------------
    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 1.0

    @property
    def spec(self) -> AdapterSpec | None:
        """What remote blocks apply (None for a soft prompt alone: that stays on the client)."""
        if not self.deep and not self.lora_rank:
            return None
        return AdapterSpec(prompt_len=self.prompt_len if self.deep else 0, lora_rank=self.lora_rank,
                           lora_scale=self.lora_scale, lora_targets=self.lora_targets)

    def block_tensors(self, start: int = 0, end: int | None = None) -> list[torch.Tensor]:
        """The tensors of blocks ``start:end`` in the wire order of :class:`AdapterSpec`."""
        out: list[torch.Tensor] = []
        for b in range(start, self.num_blocks if end is None else end):
            if self.deep:
                out.append(self.deep_prompts[b : b + 1])
            for t in self.lora_targets:
                out += [self.lora_A[f"{b}_{t}"], self.lora_B[f"{b}_{t}"]]
        return out

    # ---- saving and loading ------------------------------------------------------------------
    def lora_weights(self, base_model: str | None = None) -> LoraWeights:
        pairs = {(b, t): (self.lora_A[f"{b}_{t}"].detach(), self.lora_B[f"{b}_{t}"].detach())
                 for b in range(self.num_blocks) for t in self.lora_targets}
        return LoraWeights(self.lora_rank, self.lora_alpha, self.lora_targets, pairs, self.lora_scale, base_model)

    def save_pretrained(self, folder: str | Path, config: Any, base_model: str | None = None) -> None:
        """LoRA as a PEFT adapter folder; prompts as ``corolla_prompts.safetensors`` beside it."""
        import json

        from safetensors.torch import save

        from corolla.cache import atomic_write

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.lora_rank:
            save_lora(folder, config, self.lora_weights(base_model))
        if self.prompt_len:
            tensors = {"prompt": self.prompt.detach().contiguous()}
            if self.deep:
                tensors["deep_prompts"] = self.deep_prompts.detach().contiguous()
            atomic_write(folder / PROMPTS_FILE, save(tensors))
            atomic_write(folder / PROMPTS_CONFIG, json.dumps(
                {"prompt_len": self.prompt_len, "deep": self.deep, "base_model": base_model}, indent=2).encode())

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: Any) -> SwarmAdapter:
        """Read what :meth:`save_pretrained` wrote, or any PEFT LoRA folder for this model."""
        import json

        from safetensors.torch import load_file

        folder = Path(folder)
        lora = load_lora(folder, config) if (folder / "adapter_config.json").exists() else None
        prompts = None
        if (folder / PROMPTS_CONFIG).exists():
            prompts = json.loads((folder / PROMPTS_CONFIG).read_text()), load_file(folder / PROMPTS_FILE)
        if lora is None and prompts is None:
            raise CorollaError(f"{folder} holds no adapter (no adapter_config.json, no {PROMPTS_CONFIG})")
        prompt_len, deep = (int(prompts[0]["prompt_len"]), bool(prompts[0]["deep"])) if prompts else (0, False)
        adapter = cls(config, prompt_len=prompt_len, deep=deep, lora_rank=lora.rank if lora else 0,
                      lora_alpha=lora.alpha if lora else None, lora_targets=lora.targets if lora else ())
        with torch.no_grad():
            if lora is not None:
                if abs(lora.scale - adapter.lora_scale) > 1e-9:  # rsLoRA: keep its scale
                    adapter.lora_alpha = lora.scale * lora.rank
                for b in range(adapter.num_blocks):
                    for t in adapter.lora_targets:
                        pair = lora.pairs.get((b, t))
                        if pair is None:  # PEFT may leave blocks out (layers_to_transform): a no-op there
                            adapter.lora_B[f"{b}_{t}"].zero_()
                            continue
                        adapter.lora_A[f"{b}_{t}"].copy_(pair[0])
                        adapter.lora_B[f"{b}_{t}"].copy_(pair[1])
            if prompts is not None:
                adapter.prompt.copy_(prompts[1]["prompt"])
                if deep:
                    adapter.deep_prompts.copy_(prompts[1]["deep_prompts"])
        return adapter


# ---- autograd through the swarm -------------------------------------------------------------------
@dataclasses.dataclass
class _HopInput:
    hop: Hop
    hidden: torch.Tensor  # what this hop received (kept for its backward call)
    stream: RpcStream | None = None  # a streaming training call whose server keeps the graph


class RemoteBlocks:
    """Stateless forward and backward through every block of the swarm, with failover."""

    def __init__(self, client: SwarmClient):
        self.client = client
        self.recoveries = 0  # failed calls routed around (forward or backward)
        self.last_forward: list[list[_HopInput]] = []  # the hops of the last forward pass, per row chunk
        self._unreachable: set[str] = set()  # servers no connection could be made to (see _failed)

    def _slice(self, spec: AdapterSpec | None, tensors: Sequence[torch.Tensor], hop: Hop) -> list[torch.Tensor]:
        k = spec.tensors_per_block if spec is not None else 0
        return list(tensors[hop.start * k : hop.end * k])

    def _failed(self, hop: Hop, error: CorollaError, failures: int) -> int:
        """Route around ``hop``'s server after ``error``, or raise it; returns the failures counted so
        far (a server that could not be reached at all is not counted the first time: a stale record)."""
        failures += costs_a_retry(error, hop.peer_id, self._unreachable)
        if not getattr(error, "retryable", False) or isinstance(error, NoRouteError) \
                or failures > self.client.config.max_retries:
            raise error
        log.warning("server %s failed (%s); re-routing blocks %d:%d", hop.peer_id, error, hop.start, hop.end)
        self.client.ban(hop.peer_id)
        self.recoveries += 1
        threading.Event().wait(0.0 if failures <= 1 else min(0.25 * 2 ** (failures - 2), 4.0))
        return failures

    def forward_range(self, start: int, end: int, hidden: torch.Tensor, spec: AdapterSpec | None,
                      tensors: Sequence[torch.Tensor], need_output: bool = True, trainable: bool = True,
                      streams: bool = False) -> tuple[torch.Tensor | None, list[_HopInput]]:
        """``hidden`` through blocks ``start:end``; the output and what each hop received.
        ``need_output=False``: the last hop is planned but not called (backward recomputes it).
        ``trainable``: route only through servers that run backward passes. ``streams``: open a
        streaming training call per hop (the server keeps the graph for the backward), falling
        back to a stateless forward where a server has no room for it."""
        records: list[_HopInput] = []
        block, failures, x = start, 0, hidden
        while block < end:
            hops = self.client.plan(block, end, forward_tokens=x.shape[0] * x.shape[1], trainable=trainable)
            for hop in hops:
                if not need_output and hop.end == end:
                    records.append(_HopInput(hop, x))
                    return None, records
                hop_tensors, stream = self._slice(spec, tensors, hop), None
                try:
                    if streams:
                        try:
                            y, stream = self.client.loop.run(self.client.train_forward(hop, x, spec, hop_tensors))
                        except ServerBusyError:  # no room to keep a graph there: it will recompute
                            y = self.client.loop.run(self.client.call_forward(hop, x, spec, hop_tensors))
                    else:
                        y = self.client.loop.run(self.client.call_forward(hop, x, spec, hop_tensors))
                except CorollaError as e:
                    failures = self._failed(hop, e, failures)
                    break  # re-plan from `block`
                records.append(_HopInput(hop, x, stream))
                x, block = y, hop.end
        return x, records

    def backward(self, records: list[_HopInput], grad: torch.Tensor, spec: AdapterSpec | None,
                 tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Gradients of the chain's input and of every tensor, given the output's gradient."""
        k = spec.tensors_per_block if spec is not None else 0
        grads = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
        records, i, failures = list(records), len(records) - 1, 0
        while i >= 0:
            hop, x, stream = records[i].hop, records[i].hidden, records[i].stream
            records[i].stream = None  # a stream serves one backward (a retry recomputes), and is closed by it
            hop_tensors = self._slice(spec, tensors, hop)
            try:
                if stream is not None:
                    try:
                        grad_x, hop_grads = self.client.loop.run(
                            self.client.train_backward(hop, stream, grad, hop_tensors))
                    except (SessionEvictedError, ServerBusyError):  # the server let the graph go: it recomputes
                        grad_x, hop_grads = self.client.loop.run(
                            self.client.call_backward(hop, x, grad, spec, hop_tensors))
                else:
                    grad_x, hop_grads = self.client.loop.run(self.client.call_backward(hop, x, grad, spec, hop_tensors))
            except CorollaError as e:
                failures = self._failed(hop, e, failures)
                _, replacement = self.forward_range(hop.start, hop.end, x, spec, tensors, need_output=False)
                records[i : i + 1] = replacement
                i += len(replacement) - 1
                continue
            for j, g in enumerate(hop_grads):
                grads[hop.start * k + j] += g
            grad, i = grad_x, i - 1
        return grad, grads

    def run(self, hidden: torch.Tensor, adapter: SwarmAdapter | None = None) -> torch.Tensor:
        """``hidden [B, T, H]`` through every block, differentiable to ``hidden`` and the
        adapter's remote tensors when autograd is on."""
        spec = adapter.spec if adapter is not None else None
        tensors = adapter.block_tensors() if spec is not None else []
        return _ThroughSwarm.apply(self, spec, hidden, *tensors)

    def rows_per_call(self, hidden: torch.Tensor) -> int:
        """Rows per call (micro-batch). At most ``max_train_tokens`` tokens, and no more than any
        server of the swarm takes in one backward call (a row is never split); and at least
        ``train_pipeline`` micro-batches when there are rows enough, so that while one micro-batch
        is on the second server the next one is on the first (servers of a chain work at once)."""
        state = self.client.swarm_state(self.client.config.state_max_age_s)
        limit = min([self.client.config.max_train_tokens, *(s.info.max_backward_tokens for s in state.servers)])
        rows = max(1, limit // max(hidden.shape[1], 1))
        return max(1, min(rows, math.ceil(hidden.shape[0] / max(1, self.client.config.train_pipeline))))

    def each(self, fn, *arg_lists):
        """``fn`` over the micro-batches at once, one thread each (their calls interleave on the
        servers: a pipeline); the results in order, or the first error."""
        jobs = list(zip(*arg_lists))
        if len(jobs) == 1:
            return [fn(*jobs[0])]
        with concurrent.futures.ThreadPoolExecutor(len(jobs), thread_name_prefix="corolla-train") as pool:
            return [f.result() for f in [pool.submit(fn, *job) for job in jobs]]


class _StreamCloser:
    """Closes the training streams of records still holding one when it is garbage collected."""

    def __init__(self, client: SwarmClient, records: list[_HopInput]):
        if records:
            weakref.finalize(self, _close_streams, client, records)


def _close_streams(client: SwarmClient, records: list[_HopInput]) -> None:
    for record in records:
        if record.stream is not None and client.loop.loop.is_running():
            asyncio.run_coroutine_threadsafe(record.stream.close(), client.loop.loop)  # from any thread, no wait


class _ThroughSwarm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks: RemoteBlocks, spec: AdapterSpec | None, hidden: torch.Tensor, *tensors: torch.Tensor):
        tensors = [t.detach() for t in tensors]
        trainable = any(ctx.needs_input_grad[2:])  # a backward pass will follow: plan servers that run it
        streams = trainable and blocks.client.config.train_streams
        rows = blocks.rows_per_call(hidden)
        pieces = hidden.detach().split(rows, dim=0)
        results = blocks.each(
            lambda piece: blocks.forward_range(0, blocks.client.num_blocks, piece, spec, tensors,
                                               trainable=trainable, streams=streams), pieces)
        ctx.blocks, ctx.spec, ctx.tensors, ctx.rows = blocks, spec, tensors, rows
        ctx.records = blocks.last_forward = [records for _, records in results]
        # a graph dropped without a backward: close its streams, so the servers free theirs now
        ctx.closer = _StreamCloser(blocks.client, [r for chunk in ctx.records for r in chunk if r.stream is not None])
        return torch.cat([out for out, _ in results], dim=0)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grads = [g.contiguous() for g in grad_out.split(ctx.rows, dim=0)]
        results = ctx.blocks.each(lambda rec, grad: ctx.blocks.backward(rec, grad, ctx.spec, ctx.tensors),
                                  ctx.records, grads)
        ctx.records = ctx.closer = None  # the kept hidden states go now (their streams are closed)
        totals = [sum(parts) for parts in zip(*(g for _, g in results))] if ctx.tensors else []
        return (None, None, torch.cat([g for g, _ in results], dim=0), *totals)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hugging Face's causal LM loss: position t predicts label t+1; -100 is ignored."""
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                       labels[:, 1:].reshape(-1), ignore_index=-100)

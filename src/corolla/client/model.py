"""``DistributedModelForCausalLM``: a Hugging Face-like causal LM whose blocks live on a swarm.

The client holds only the embeddings, the final norm and the LM head; hidden states travel
through a chain of servers found in the DHT.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutput

from corolla.client.config import ClientConfig
from corolla.client.head_batching import HeadBatcher
from corolla.client.remote import SwarmClient
from corolla.client.sampling import Sampler, SamplingParams
from corolla.client.session import InferenceSession
from corolla.client.speculative import DraftConfig, SpeculationStats, make_drafter, speculate
from corolla.client.training import RemoteBlocks, SwarmAdapter, causal_lm_loss
from corolla.models.loading import load_config, load_head
from corolla.models.manifest import block_hashes, manifest_of, split_key, swarm_key
from corolla.models.resolve import resolve_model


class DistributedModelForCausalLM:
    """Use like ``AutoModelForCausalLM``: ``from_pretrained(...)``, ``generate(...)``, ``model(ids)``."""

    def __init__(self, path: Path, model_id: str, config: Any, head: torch.nn.Module, client: SwarmClient):
        self.path, self.model_id, self.config, self.head, self.client = path, model_id, config, head, client
        self.name = split_key(model_id)[0]  # the model's name; model_id is its key in the swarm: name@digest
        self._head_batcher = HeadBatcher(lambda hidden: self.head.logits(hidden[:, None, :])[:, 0, :],
                                         cohort_wait_s=client.config.cohort_wait_s,
                                         parts=lambda destination: destination[1])  # a micro-batch per hop
        self._tokenizer = None
        self._active: InferenceSession | None = None
        self.adapter: SwarmAdapter | None = None  # client-owned trainable tensors (see corolla.client.training)
        self.blocks = RemoteBlocks(client)
        self.draft_config = DraftConfig()  # speculative decoding's draft lengths (generate(draft=...))
        self.last_speculation: SpeculationStats | None = None  # acceptance of the last speculative generate

    @classmethod
    def from_pretrained(
        cls, model: str | Path, *, initial_peers: Sequence[str] = (), dht=None,
        adapter: str | Path | SwarmAdapter | None = None, **client_options: Any
    ) -> DistributedModelForCausalLM:
        """``model``: a packaged name, a local HF folder, a GGUF file or a Hub repo id.

        ``adapter``: a :class:`SwarmAdapter`, a folder holding one (a PEFT LoRA adapter, or what
        ``corolla finetune`` saved) that travels with this client's requests, or the name of an
        adapter servers host. ``client_options`` are fields of :class:`~corolla.client.config.ClientConfig`.
        """
        ref = resolve_model(str(model))
        config = load_config(ref.path)
        owned = None
        if isinstance(adapter, SwarmAdapter):
            owned = adapter
        elif adapter is not None and Path(adapter).is_dir():
            owned = SwarmAdapter.from_pretrained(adapter, config).requires_grad_(False)
        elif adapter is not None:
            client_options["adapter"] = str(adapter)
        if "allowed_servers" in client_options and client_options["allowed_servers"] is not None:
            client_options["allowed_servers"] = frozenset(client_options["allowed_servers"])
        cfg = ClientConfig(initial_peers=tuple(initial_peers), **client_options)
        manifest = manifest_of(ref.path)  # what the servers' blocks must hash to (read once, then cached)
        model_id = swarm_key(cfg.model_id or ref.model_id, manifest)
        head = load_head(ref.path, config)
        if cfg.head_fp16_decode:
            head.add_fp16_copy()
        client = SwarmClient(model_id, config.num_hidden_layers, config.hidden_size, cfg, dht=dht,
                             block_hashes=block_hashes(manifest, 0, config.num_hidden_layers))
        model = cls(ref.path, model_id, config, head, client)
        model.adapter = owned
        return model

    # ---- conveniences ----------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        return self._tokenizer

    @functools.cached_property
    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.config, _generation_config(self.path)):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return frozenset(ids)

    def eos_token_ids(self) -> set[int]:
        """End-of-sequence ids from the model's config and generation config."""
        return set(self._eos_ids)

    # ---- forward ------------------------------------------------------------------------------------
    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> CausalLMOutput:
        return self.forward(input_ids, **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_: Any) -> CausalLMOutput:
        """Logits for every position [B, T, V] through a stateless pass over the swarm, and with
        ``labels`` the causal LM loss (Hugging Face's: -100 is ignored). With a client-owned
        adapter and autograd on, ``loss.backward()`` reaches the adapter's parameters through the
        remote blocks. Padding may be on either side of ``attention_mask``."""
        if self.adapter is None and labels is None:
            with torch.inference_mode():
                hidden = self.client.forward(self.head.embed(input_ids))
                return CausalLMOutput(logits=self.head.logits(hidden))
        input_ids, labels, shifts = _right_pad(input_ids, attention_mask, labels)
        adapter = self.adapter
        hidden = self.head.embed(input_ids)
        prompt_len = adapter.prompt_len if adapter is not None else 0
        if prompt_len:
            hidden = torch.cat([adapter.prompt[None].expand(hidden.shape[0], -1, -1).to(hidden.dtype), hidden], 1)
        logits = self.head.logits(self.blocks.run(hidden, adapter))[:, prompt_len:]
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        if shifts is not None:
            logits = torch.stack([row.roll(int(s), 0) for row, s in zip(logits, shifts)])
        return CausalLMOutput(loss=loss, logits=logits)

    def _embed(self, ids: torch.Tensor, session: InferenceSession) -> torch.Tensor:
        """Token embeddings, after the adapter's soft prompt at the start of a session."""
        hidden = self.head.embed(ids)
        adapter = session.adapter
        if adapter is not None and adapter.prompt_len and session.position == 0:
            prompt = adapter.prompt.detach()[None].expand(hidden.shape[0], -1, -1).to(hidden.dtype)
            hidden = torch.cat([prompt, hidden], dim=1)
        return hidden

    def _prompt_len(self) -> int:
        return self.adapter.prompt_len if self.adapter is not None else 0

    # ---- sessions ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def inference_session(self, max_length: int) -> Iterator[InferenceSession]:
        """A session spanning several ``generate`` calls: each call sends only its new tokens."""
        session = InferenceSession(self.client, max_length + self._prompt_len(), self.adapter)
        previous, self._active = self._active, session
        try:
            yield session
        finally:
            self._active = previous
            session.close()

    # ---- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        stop_strings: str | Sequence[str] | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        seed: int | None = None,
        streamer: Any = None,
        callback: Callable[[torch.Tensor], Any] | None = None,
        session: InferenceSession | None = None,
        max_length: int | None = None,
        tokenizer: Any = None,
        draft: Any = None,
        **_: Any,
    ) -> torch.Tensor:
        """Hugging Face-style generation; returns ``input_ids`` followed by the new tokens.

        ``streamer`` is any HF streamer (``put``/``end``); ``callback`` gets each step's new
        tokens [B]. Inside ``inference_session`` (or with ``session=``), ``input_ids`` are the
        new tokens only: the session already holds everything before them.

        ``draft``: speculative decoding (batch 1): ``"lookup"`` (prompt lookup), a small causal LM
        with the same tokenizer, its name or folder, or a drafter (see
        :mod:`corolla.client.speculative`). Greedy output is plain greedy decoding's; sampled
        tokens keep the target's distribution.
        """
        params = SamplingParams(do_sample, temperature, top_k, top_p, repetition_penalty, seed)
        new_tokens = []
        for tokens in self.stream(
            input_ids, params=params, max_new_tokens=max_new_tokens, stop_strings=stop_strings,
            eos_token_id=eos_token_id, streamer=streamer, session=session, max_length=max_length, tokenizer=tokenizer,
            draft=draft,
        ):
            new_tokens.append(tokens)
            if callback is not None:
                callback(tokens)
        prompt = input_ids if input_ids is not None else torch.empty(1, 0, dtype=torch.long)
        if not new_tokens:
            return prompt
        return torch.cat([prompt, torch.stack(new_tokens, dim=1)], dim=1)

    def stream(
        self,
        input_ids: torch.Tensor | None,
        *,
        params: SamplingParams = SamplingParams(),
        max_new_tokens: int = 32,
        stop_strings: str | Sequence[str] | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        streamer: Any = None,
        session: InferenceSession | None = None,
        max_length: int | None = None,
        tokenizer: Any = None,
        draft: Any = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the new tokens [B] of each step as they are generated (``draft``: see ``generate``)."""
        session = session or self._active
        owned = session is None
        if input_ids is not None and input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if owned:
            if input_ids is None or input_ids.shape[1] == 0:
                raise ValueError("input_ids are required outside an inference session")
            length = (max_length or input_ids.shape[1] + max_new_tokens) + self._prompt_len()
            session = InferenceSession(self.client, length, self.adapter)
        # the session's last sampled token is not in the servers' caches yet: send it first
        feed = torch.cat([t for t in (session.pending_ids, input_ids) if t is not None and t.shape[1]], dim=1)
        if feed.shape[1] == 0:
            raise ValueError("nothing to generate from: pass input_ids")
        context = feed if session.token_ids is None else torch.cat([session.token_ids, feed], dim=1)
        eos = _as_set(eos_token_id) if eos_token_id is not None else self.eos_token_ids()
        eos_tensor = torch.tensor(sorted(eos), dtype=torch.long)
        stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
        tokenizer = (tokenizer or self.tokenizer) if stops else None
        sampler = Sampler(params)
        finished = torch.zeros(feed.shape[0], dtype=torch.bool)
        generated: list[torch.Tensor] = []
        cohort = None  # this step's company from the last LM head batch (see HeadBatcher)
        if streamer is not None and input_ids is not None:
            streamer.put(input_ids.cpu())
        drafter = make_drafter(draft)
        if drafter is not None and feed.shape[0] != 1:
            raise ValueError("speculative decoding (draft=...) takes one sequence at a time (batch size 1)")
        try:
            if drafter is not None:
                yield from self._speculate(session, drafter, sampler, context, feed, max_new_tokens, eos, stops,
                                           tokenizer, streamer)
                return
            with torch.inference_mode():
                for index in range(max_new_tokens):
                    hidden = session.step(self._embed(feed, session), cohort)  # [B, T, H] -> [B, T, H]
                    session.token_ids = feed if session.token_ids is None else torch.cat([session.token_ids, feed], 1)
                    session.pending_ids = None
                    # [B, V], computed with other threads' rows; a next step goes to the session's first server
                    logits, cohort = self._head_batcher.step_logits(
                        hidden[:, -1, :], session.cohort,
                        (session.entry_peer, len(session.chain)) if index + 1 < max_new_tokens else None)
                    tokens = sampler.next_tokens(context, logits)
                    if len(eos):
                        tokens = torch.where(finished, eos_tensor[0], tokens)  # finished rows pad with EOS
                        finished |= torch.isin(tokens, eos_tensor)
                    generated.append(tokens)
                    context = torch.cat([context, tokens[:, None]], dim=1)
                    feed = session.pending_ids = tokens[:, None]
                    if streamer is not None:
                        streamer.put(tokens.cpu())
                    yield tokens
                    if bool(finished.all()) or (stops and _hits_stop(tokenizer, generated, stops)):
                        break
        finally:
            if streamer is not None:
                streamer.end()
            if owned:
                session.close()

    def _speculate(self, session: InferenceSession, drafter: Any, sampler: Sampler, context: torch.Tensor,
                   feed: torch.Tensor, max_new_tokens: int, eos: set[int], stops: list[str], tokenizer: Any,
                   streamer: Any) -> Iterator[torch.Tensor]:
        """``stream``'s loop with speculative decoding (batch 1); same stopping rules."""
        offset = session.position - (session.token_ids.shape[1] if session.token_ids is not None else 0)
        stats = self.last_speculation = SpeculationStats()

        def target(ids: torch.Tensor, n: int) -> torch.Tensor:
            hidden = session.step(self._embed(ids, session))  # [1, T, H]
            session.pending_ids = None
            return self.head.logits(hidden[:, -n:, :])[0]  # [n, V]

        generated: list[torch.Tensor] = []
        try:
            with torch.inference_mode():
                for token in speculate(
                    drafter=drafter, sampler=sampler, context=context, feed=feed, target=target,
                    rollback=lambda n: session.truncate(session.position - n),
                    budget=lambda: session.max_length - session.position, max_new_tokens=max_new_tokens,
                    config=self.draft_config, stats=stats,
                ):
                    tokens = torch.tensor([token], dtype=torch.long)
                    generated.append(tokens)
                    context = torch.cat([context, tokens[:, None]], dim=1)
                    if streamer is not None:
                        streamer.put(tokens.cpu())
                    yield tokens
                    if token in eos or (stops and _hits_stop(tokenizer, generated, stops)):
                        break
        finally:
            if generated and not session._closed:
                # the servers keep everything but the last token (sent with the next step)
                keep = offset + context.shape[1] - 1
                if session.position > keep:
                    session.truncate(keep)
                session.token_ids = context[:, :-1]
                session.pending_ids = context[:, -1:]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DistributedModelForCausalLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _right_pad(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None):
    """Rows with left padding rolled so that every row starts at position 0 (causal attention then
    never sees a pad: pads come after the real tokens). Returns the rolled ids and labels and each
    row's shift (None when nothing moved); pads become label -100."""
    if attention_mask is None:
        return input_ids, labels, None
    mask = attention_mask.bool()
    lead = (~mask).int().cumprod(dim=1).sum(dim=1)  # pads before the first real token
    real = mask.sum(dim=1)
    if any(bool(mask[i, lead[i] : lead[i] + real[i]].all()) is False for i in range(mask.shape[0])):
        raise ValueError("attention_mask must be one run of 1s per row (padding on the left or the right)")
    if labels is not None:
        labels = labels.masked_fill(~mask, -100)
    if not bool(lead.any()):
        return input_ids, labels, None
    roll = lambda t: torch.stack([row.roll(-int(n), 0) for row, n in zip(t, lead)])  # noqa: E731
    return roll(input_ids), roll(labels) if labels is not None else None, lead


def _as_set(value: int | Sequence[int]) -> set[int]:
    return {value} if isinstance(value, int) else set(value)


def _hits_stop(tokenizer, generated: list[torch.Tensor], stops: list[str]) -> bool:
    ids = torch.stack(generated, dim=1)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return all(any(s in text for s in stops) for text in texts)


def _generation_config(path: Path):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None

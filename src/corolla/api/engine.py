"""``SwarmEngine``: what the API needs from a :class:`DistributedModelForCausalLM`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import torch

from corolla.api.errors import shutting_down
from corolla.api.generation import GenerationOptions
from corolla.api.prompt_cache import DEFAULT as DEFAULT_PROMPT_CACHE
from corolla.api.prompt_cache import PromptCache, PromptCacheConfig
from corolla.client.sampling import SamplingParams, TextDelta
from corolla.client.session import InferenceSession

log = logging.getLogger(__name__)

SERVER_FIELDS = ("state", "inference_rps", "forward_tps", "active_sessions", "queued_requests",
                 "cache_tokens_left", "dtype", "quant", "public_name", "version", "adapters")
MAX_ADAPTER_CLIENTS = 64  # routing views kept for hosted adapters (names come from HTTP requests)


class SwarmEngine:
    """Generation and swarm state for the API; thread-safe (each request runs in its own thread).

    Concurrent generations share the model's client, whose LM head batches their steps; one with a
    server-hosted adapter (``GenerationOptions.adapter``) routes through a view of that client which
    uses only servers hosting it (:meth:`SwarmClient.with_adapter`). A generation that ends (EOS, the
    token limit, a stop sequence) leaves its session in the prompt cache for the next prompt that
    starts the same way (:mod:`corolla.api.prompt_cache`; ``prompt_cache=None`` turns it off); one
    cancelled (:class:`GenerationCancelled`: the HTTP client hung up) or failed closes it.
    """

    def __init__(self, model, *, state_max_age_s: float = 1.0, draft=None,
                 prompt_cache: PromptCacheConfig | None = DEFAULT_PROMPT_CACHE):
        self.model = model
        self.prompt_cache = PromptCache(prompt_cache) if prompt_cache is not None else None
        self.draft = _usable_draft(model, draft)
        self.model_id: str = getattr(model, "name", model.model_id)  # the API's name: without the digest
        _ = model.tokenizer  # load it now, not in the first requests' threads at once
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads
        self._state_lock = threading.Lock()
        self._state: tuple[float, dict] | None = None
        self.state_max_age_s = state_max_age_s
        self._open = 0
        self._open_lock = threading.Condition()
        self._sessions: set[InferenceSession] = set()
        self._closed = False
        self._adapter_clients: dict[str, object] = {}  # adapter name -> SwarmClient view (oldest first)
        self._adapter_lock = threading.Lock()

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def max_context(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    @property
    def open_sessions(self) -> int:
        """Generations whose inference session is open right now."""
        return self._open

    def client_for(self, adapter: str | None):
        """The model's client, or a view of it routing to servers that host ``adapter``. Views are
        kept (they cache the swarm's state like the client does), the oldest dropped past a bound."""
        if adapter is None:
            return self.model.client
        with self._adapter_lock:
            client = self._adapter_clients.pop(adapter, None) or self.model.client.with_adapter(adapter)
            self._adapter_clients[adapter] = client  # now the most recent
            while len(self._adapter_clients) > MAX_ADAPTER_CLIENTS:
                del self._adapter_clients[next(iter(self._adapter_clients))]
            return client

    def stream(self, prompt_ids: list[int], options: GenerationOptions) -> Iterator[str]:
        params = SamplingParams(do_sample=options.temperature > 0, temperature=options.temperature or 1.0,
                                top_p=options.top_p if options.temperature > 0 else None, seed=options.seed)
        with self._tokenizer_lock:
            tokenizer = self.tokenizer
            eos = self.model.eos_token_ids() | {i for i in (tokenizer.convert_tokens_to_ids(t)
                                                            for t in options.extra_stops) if isinstance(i, int)}
            if tokenizer.eos_token_id is not None:
                eos.add(tokenizer.eos_token_id)
        decoder = TextDelta(tokenizer)
        need = len(prompt_ids) + options.max_tokens
        session, keep = self._session(prompt_ids, need, options.adapter)
        with self._open_lock:
            if self._closed:
                session.close()
                raise shutting_down()
            self._open += 1
            self._sessions.add(session)
        ids = torch.tensor([prompt_ids[keep:]], dtype=torch.long)
        tokens = self.model.stream(ids, params=params, max_new_tokens=options.max_tokens, eos_token_id=sorted(eos),
                                   session=session, draft=self._drafter())
        reusable = False  # the session's servers hold exactly session.token_ids (between two steps)
        try:
            for step in tokens:
                token = int(step[0])
                if token in eos:
                    reusable = True
                    return
                with self._tokenizer_lock:
                    delta = decoder.push(token)
                yield delta
            reusable = True
        except GeneratorExit:  # the reader stopped between two tokens (a stop sequence, a loop)
            reusable = True
            raise
        # GenerationCancelled (the client hung up) and failures leave ``reusable`` False: the servers free it now
        finally:
            tokens.close()
            with self._open_lock:
                self._open -= 1
                self._sessions.discard(session)
                self._open_lock.notify_all()
            kept = session.token_ids
            if not (reusable and self.prompt_cache is not None and kept is not None
                    and self.prompt_cache.put(session, kept[0].tolist(), options.adapter)):
                session.close()  # the servers free its caches at once

    def _session(self, prompt_ids: list[int], need: int, adapter: str | None) -> tuple[InferenceSession, int]:
        """A session for a generation of up to ``need`` positions, and how many of the prompt's first
        tokens its servers hold already (from the prompt cache)."""
        if self.prompt_cache is not None:
            session, keep = self.prompt_cache.take(prompt_ids, need, adapter)
            if session is not None:
                session.token_ids = torch.tensor([prompt_ids[:keep]], dtype=torch.long) if keep else None
                session.pending_ids, session.cohort = None, None
                return session, keep
        # our own session (not the model's): close() may close it from another thread at any moment
        return InferenceSession(self.client_for(adapter), self._session_length(need)), 0

    def _session_length(self, need: int) -> int:
        """A new session's max_length: ``need``, or as long as every server of the model allows when
        the session may be kept for longer prompts (servers grow its cache as it grows)."""
        if self.prompt_cache is None:
            return need
        try:
            client = self.model.client
            limits = [s.info.max_session_length for s in client.swarm_state(client.config.state_max_age_s).servers]
        except Exception as e:  # no DHT read now: the session is opened all the same and finds out
            log.debug("reading the servers' session limits failed: %s", e)
            return need
        limit = min(limits, default=need)
        return max(need, min(limit, self.max_context() or limit))

    def _drafter(self):
        """A drafter of this request's own (a draft model's cache is per generation)."""
        from corolla.client.speculative import make_drafter

        return make_drafter(self.draft)

    def close(self, timeout_s: float) -> bool:
        """Refuse new generations, close the inference sessions of the open ones (their servers free
        the caches; a step in flight, a wait for servers to appear or a backoff ends at once with
        SessionClosedError) and wait up to ``timeout_s`` for their threads to end. False if some
        did not: they are left to the model's close, which drops the connections they use."""
        with self._open_lock:
            self._closed = True
            sessions = list(self._sessions)
        if self.prompt_cache is not None:
            self.prompt_cache.close()
        for session in sessions:
            session.close()
        with self._open_lock:
            ended = self._open_lock.wait_for(lambda: self._open == 0, timeout_s)
            if not ended:
                log.warning("%d generation(s) did not stop within %.1f s of the shutdown", self._open, timeout_s)
            return ended

    def swarm_status(self) -> dict:
        """The swarm as the client's DHT sees it (read at most every ``state_max_age_s``)."""
        from corolla.swarm.discovery import fetch_swarm_state

        with self._state_lock:
            now = time.monotonic()
            if self._state is None or now - self._state[0] > self.state_max_age_s:
                client = self.model.client
                state = fetch_swarm_state(client.dht, client.model_id, client.num_blocks)
                self._state = (now, swarm_json(state, self.model_id))
            return self._state[1]


def _usable_draft(model, draft):
    """``draft`` ("lookup" or a local causal LM) if it fits ``model``: a draft model must share its
    vocabulary; one that does not is left out (with a warning), not an error for the other models."""
    if draft is None or draft == "lookup":
        return draft
    vocab = getattr(getattr(draft, "config", None), "vocab_size", None)
    if vocab != getattr(model.config, "vocab_size", None):
        log.warning("the draft model's vocabulary (%s) is not %s's (%s): %s decodes without it",
                    vocab, model.model_id, getattr(model.config, "vocab_size", None), model.model_id)
        return None
    return draft


def swarm_json(state, name: str | None = None) -> dict:
    """A :class:`~corolla.swarm.discovery.SwarmState` as the JSON of ``GET /api/swarm``: ``model_id``
    is ``name`` (the API's name for it; default: the key's name part), ``swarm_key`` its key in the
    swarm (``name@digest``) and ``digest`` the digest of its weights (None for a key without one)."""
    from corolla.models.manifest import split_key

    servers = []
    for record in state.servers:
        info = record.info
        entry = {"peer_id": record.peer_id, "start_block": info.start_block, "end_block": info.end_block}
        for field in SERVER_FIELDS:
            value = getattr(info, field)
            entry[field] = value.value if field == "state" else list(value) if field == "adapters" else value
        servers.append(entry)
    base, digest = split_key(state.model_id)
    return {"model_id": name or base, "digest": digest, "swarm_key": state.model_id, "num_blocks": state.num_blocks,
            "coverage": state.coverage(), "servers": servers}

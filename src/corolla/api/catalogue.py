"""Which models the API serves, and the engine that runs each.

:class:`OneModel` serves one engine (a scripted one in tests, or ``create_app(SwarmEngine(model))``).
:class:`SwarmCatalogue` serves every model of a swarm:

* **Which models.** Servers list their model in the DHT (``corolla.models``, see
  :mod:`corolla.swarm.announce`); one read gives every model and its number of blocks, a second
  its servers. ``/v1/models`` lists the models the API was started with, then every other model
  the swarm covers completely (each block has an online server). ``/api/swarm`` shows them all,
  covered or not.
* **Which folder.** A client needs the model's tokenizer, embeddings and LM head locally. A model
  the API was started with uses the folder resolved at start (any spec :func:`resolve_model`
  takes). Any other model must be a packaged one (:mod:`corolla.models.packaged`): it resolves by
  its name, as ``corolla api NAME`` would (fetched and converted on first use). A model the swarm
  serves under another name is listed but answers 404 ``model_unavailable``, saying to start the
  API with its folder.
* **When.** The first request for a model creates its client (a
  :class:`~corolla.client.model.DistributedModelForCausalLM` on the API's DHT node) and its
  :class:`~corolla.api.engine.SwarmEngine`; later ones reuse them. Concurrent first requests
  wait for the same client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from corolla.api.errors import APIError, shutting_down
from corolla.api.generation import Engine
from corolla.api.prompt_cache import DEFAULT as DEFAULT_PROMPT_CACHE
from corolla.api.prompt_cache import PromptCacheConfig
from corolla.errors import ModelError
from corolla.models.manifest import split_key

log = logging.getLogger(__name__)


class Catalogue(Protocol):
    """What the app needs to know about the models it serves."""

    def listed(self) -> list[str]:
        """Model ids for ``/v1/models``, in order."""
        ...

    def known(self, model_id: str) -> bool:
        """Whether requests for ``model_id`` are routed (else: 404 ``model_not_found``)."""
        ...

    def engine(self, model_id: str) -> Engine:
        """The engine of a known model (may block while its client starts); APIError if it cannot run here."""
        ...

    def swarm(self) -> list[dict]:
        """One ``swarm_json`` per model (``/api/swarm``), in order."""
        ...


class OneModel:
    """A catalogue of one engine."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def listed(self) -> list[str]:
        return [self._engine.model_id]

    def known(self, model_id: str) -> bool:
        return model_id == self._engine.model_id

    def engine(self, model_id: str) -> Engine:
        return self._engine

    def swarm(self) -> list[dict]:
        return [self._engine.swarm_status()]


OpenEngine = Callable[[str, Path], Engine]  # (model id, local folder) -> a running engine


class SwarmCatalogue:
    """Every model of the swarm that ``dht`` belongs to (see the module's docstring). Thread-safe.

    ``models``: the models this API was started with (model id -> local folder), listed first, in
    order. ``engines``: engines already running (e.g. ``swarm up --chat``'s model); they are closed
    with the catalogue, their models are not. ``client_options``: fields of
    :class:`~corolla.client.config.ClientConfig` for the clients it creates. ``open_engine``,
    ``resolve`` and ``read_swarm`` replace how an engine starts, how a model id finds its folder
    and how the swarm is read (``read_swarm(dht, {model id: blocks})``, as
    :func:`~corolla.swarm.discovery.fetch_swarm_overview`), for tests.
    """

    def __init__(self, dht, models: Mapping[str, Path], *, engines: Mapping[str, Engine] | None = None,
                 client_options: Mapping | None = None, state_max_age_s: float = 1.0,
                 open_engine: OpenEngine | None = None, resolve: Callable[[str], Path] | None = None,
                 read_swarm: Callable | None = None, draft=None, key: Callable[[str, Path], str] | None = None,
                 prompt_cache: PromptCacheConfig | None = DEFAULT_PROMPT_CACHE):
        from corolla.models.loading import load_config
        from corolla.swarm.discovery import fetch_swarm_overview

        self.dht = dht
        self.folders = {name: Path(path) for name, path in models.items()}
        self._key = key or folder_key  # (name, folder) -> the model's key in the swarm, name@digest
        self.keys = {name: self._key(name, folder) for name, folder in self.folders.items()}
        self.num_blocks = {self.keys[name]: load_config(path).num_hidden_layers for name, path in self.folders.items()}
        self.state_max_age_s = state_max_age_s
        self._client_options = dict(client_options or {})
        self.draft = draft  # speculative decoding for every engine it opens (see SwarmEngine)
        self.prompt_cache = prompt_cache  # each engine's (see SwarmEngine)
        self._open_engine = open_engine or self._open_swarm_engine
        self._resolve = resolve or resolve_packaged_folder
        self._read_swarm = read_swarm or fetch_swarm_overview
        self._engines: dict[str, Engine] = dict(engines or {})
        self._borrowed = set(self._engines)  # engines whose models the caller closes
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._state_lock = threading.Lock()
        self._states: tuple[float, list, dict[str, str]] | None = None  # (read at, [SwarmState], {key: name})

    # ---- the swarm's models ----------------------------------------------------------------------
    def states(self) -> list:
        """Every model's :class:`~corolla.swarm.discovery.SwarmState`: this API's models first, in
        order, then the others by key; read from the DHT at most every ``state_max_age_s``. A failed
        read keeps the last one (this API's models alone, none uncovered, before any)."""
        return self._read()[0]

    def _read(self) -> tuple[list, dict[str, str]]:
        from corolla.swarm.discovery import SwarmState

        with self._state_lock:
            now = time.monotonic()
            if self._states is None or now - self._states[0] > self.state_max_age_s:
                try:
                    states = self._read_swarm(self.dht, self.num_blocks)
                except Exception as e:  # the DHT may fail a read: serve the last one
                    log.warning("reading the swarm's models failed: %s: %s", type(e).__name__, e)
                    states = self._states[1] if self._states else [
                        SwarmState(key, n, ()) for key, n in self.num_blocks.items()]
                order = {key: i for i, key in enumerate(self.num_blocks)}
                states = sorted(states, key=lambda s: (order.get(s.model_id, len(order)), s.model_id))
                self._states = (now, states, self._names([s.model_id for s in states]))
            return self._states[1], self._states[2]

    def _names(self, keys: list[str]) -> dict[str, str]:
        """The API's name of each key: this API's models by the names they were given; any other
        by its name without the digest, unless that name is taken (one of this API's, or several
        digests of it in the swarm: another checkpoint under the same name): then by its key."""
        own = {key: name for name, key in self.keys.items()}
        others = [key for key in keys if key not in own]
        bases = Counter(split_key(key)[0] for key in others)
        names = dict(own)
        for key in others:
            base = split_key(key)[0]
            names[key] = base if bases[base] == 1 and base not in self.folders else key
        return names

    def listed(self) -> list[str]:
        states, names = self._read()
        return [names[s.model_id] for s in states if s.model_id in self.num_blocks or s.complete]

    def known(self, model_id: str) -> bool:
        return model_id in self.folders or model_id in self._engines or model_id in self._read()[1].values()

    def swarm(self) -> list[dict]:
        from corolla.api.engine import swarm_json

        states, names = self._read()
        return [swarm_json(state, names[state.model_id]) for state in states]

    # ---- engines ---------------------------------------------------------------------------------
    def engine(self, model_id: str) -> Engine:
        with self._lock:
            if self._closed:
                raise shutting_down()
            if model_id in self._engines:
                return self._engines[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:  # one client per model, however many requests ask for it at once
            with self._lock:
                if model_id in self._engines:
                    return self._engines[model_id]
            folder = self.folders.get(model_id)
            try:
                if folder is None:
                    key = next((k for k, name in self._read()[1].items() if name == model_id), model_id)
                    base = split_key(key)[0]
                    folder = self._resolve(base)
                    if (ours := self._key(base, folder)) != key:
                        raise ModelError(f"the swarm serves other weights under this name ({key}) than the "
                                         f"packaged {base} ({ours})")
                else:
                    key = self.keys[model_id]
                log.info("starting a client for %s (from %s)", key, folder)
                engine = self._open_engine(key, folder)
            except (ModelError, OSError, ValueError) as e:  # no such folder, no tokenizer, bad config
                raise unavailable(model_id, e) from None
            with self._lock:
                if not self._closed:
                    self._engines[model_id] = engine
                    return engine
            _close_engine(engine, 0.0, owned=True)  # the API stopped while this client started
            raise shutting_down()

    def start(self) -> None:
        """Start the clients of this API's own models now, so that what keeps one from running
        (a folder without a tokenizer, say) stops the API at start, as a ModelError."""
        for model_id in self.folders:
            try:
                self.engine(model_id)
            except APIError as e:
                raise ModelError(e.message) from None

    def _open_swarm_engine(self, model_id: str, folder: Path) -> Engine:
        from corolla.api.engine import SwarmEngine
        from corolla.client.model import DistributedModelForCausalLM

        model = DistributedModelForCausalLM.from_pretrained(folder, dht=self.dht, model_id=model_id,
                                                            **self._client_options)
        try:
            return SwarmEngine(model, state_max_age_s=self.state_max_age_s, draft=self.draft,
                               prompt_cache=self.prompt_cache)
        except BaseException:
            model.close()
            raise

    def close(self, timeout_s: float) -> bool:
        """Refuse new requests, close every engine's open generations (waiting up to ``timeout_s``
        in all) and the clients this catalogue started; the DHT node is the caller's."""
        with self._lock:
            self._closed = True
            engines = dict(self._engines)
            self._engines.clear()
        deadline = time.monotonic() + timeout_s
        ended = True
        for model_id, engine in engines.items():
            ended &= _close_engine(engine, max(0.0, deadline - time.monotonic()), owned=model_id not in self._borrowed)
        return ended


def _close_engine(engine, timeout_s: float, owned: bool) -> bool:
    ended = engine.close(timeout_s) if hasattr(engine, "close") else True
    model = getattr(engine, "model", None)
    if owned and model is not None:
        model.close()
    return ended


def resolve_packaged_folder(model_id: str) -> Path:
    """The folder of a packaged model named ``model_id`` (fetched and converted on first use, as
    ``corolla api NAME`` does); ModelError for any other name."""
    from corolla.models import packaged
    from corolla.models.resolve import resolve_packaged

    if model_id not in packaged.PACKAGED:
        raise ModelError(f"this API host has no folder for {model_id!r}, which is not a packaged model "
                         f"({', '.join(packaged.packaged_names())})")
    return resolve_packaged(model_id, progress=False).path


def folder_key(name: str, folder: Path) -> str:
    """The key in the swarm of the model in ``folder`` named ``name``: ``name@digest``."""
    from corolla.models.manifest import manifest_of, swarm_key

    return swarm_key(name, manifest_of(folder))


def unavailable(model_id: str, error: BaseException) -> APIError:
    """A model the swarm serves that this API host cannot run: what it lacks and what to do."""
    return APIError(404, f"the swarm serves {model_id!r}, but this API cannot run it: {error}. Start the API with "
                         f"the model's folder as well (corolla api MODEL... with a folder holding its config.json "
                         f"and tokenizer), or use another model",
                    type="invalid_request_error", param="model", code="model_unavailable")


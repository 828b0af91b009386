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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from corolla.api.errors import APIError, shutting_down
from corolla.api.generation import Engine
from corolla.errors import ModelError

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
                 read_swarm: Callable | None = None, draft=None):
        from corolla.models.loading import load_config
        from corolla.swarm.discovery import fetch_swarm_overview

        self.dht = dht
        self.folders = {model_id: Path(path) for model_id, path in models.items()}
        self.num_blocks = {model_id: load_config(path).num_hidden_layers for model_id, path in self.folders.items()}
        self.state_max_age_s = state_max_age_s
        self._client_options = dict(client_options or {})
        self.draft = draft  # speculative decoding for every engine it opens (see SwarmEngine)
        self._open_engine = open_engine or self._open_swarm_engine
        self._resolve = resolve or resolve_packaged_folder
        self._read_swarm = read_swarm or fetch_swarm_overview
        self._engines: dict[str, Engine] = dict(engines or {})
        self._borrowed = set(self._engines)  # engines whose models the caller closes
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._state_lock = threading.Lock()
        self._states: tuple[float, list] | None = None  # (read at, [SwarmState])

    # ---- the swarm's models ----------------------------------------------------------------------
    def states(self) -> list:
        """Every model's :class:`~corolla.swarm.discovery.SwarmState`: this API's models first, in
        order, then the others by id; read from the DHT at most every ``state_max_age_s``. A failed
        read keeps the last one (this API's models alone, none uncovered, before any)."""
        from corolla.swarm.discovery import SwarmState

        with self._state_lock:
            now = time.monotonic()
            if self._states is None or now - self._states[0] > self.state_max_age_s:
                try:
                    states = self._read_swarm(self.dht, self.num_blocks)
                except Exception as e:  # the DHT may fail a read: serve the last one
                    log.warning("reading the swarm's models failed: %s: %s", type(e).__name__, e)
                    states = self._states[1] if self._states else [
                        SwarmState(model_id, n, ()) for model_id, n in self.num_blocks.items()]
                order = {model_id: i for i, model_id in enumerate(self.folders)}
                states = sorted(states, key=lambda s: (order.get(s.model_id, len(order)), s.model_id))
                self._states = (now, states)
            return self._states[1]

    def listed(self) -> list[str]:
        return [s.model_id for s in self.states() if s.model_id in self.folders or s.complete]

    def known(self, model_id: str) -> bool:
        return model_id in self.folders or model_id in self._engines or \
            any(s.model_id == model_id for s in self.states())

    def swarm(self) -> list[dict]:
        from corolla.api.engine import swarm_json

        return [swarm_json(state) for state in self.states()]

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
                    folder = self._resolve(model_id)
                log.info("starting a client for %s (from %s)", model_id, folder)
                engine = self._open_engine(model_id, folder)
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
            return SwarmEngine(model, state_max_age_s=self.state_max_age_s, draft=self.draft)
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
    return resolve_packaged(model_id, progress=False)


def unavailable(model_id: str, error: BaseException) -> APIError:
    """A model the swarm serves that this API host cannot run: what it lacks and what to do."""
    return APIError(404, f"the swarm serves {model_id!r}, but this API cannot run it: {error}. Start the API with "
                         f"the model's folder as well (corolla api MODEL... with a folder holding its config.json "
                         f"and tokenizer), or use another model",
                    type="invalid_request_error", param="model", code="model_unavailable")


"""Verified computation: a client re-runs a sample of its steps on other servers and catches one
that returns wrong activations.

A server's answer can be checked without trusting it: the client keeps, per hop of a session,
every input it sent and every output it got (for failover it keeps the inputs anyway). Now and
then (``ClientConfig.verify_rate`` of the steps, 1 in 20 by default) it sends a hop's inputs to a
*witness*: a session of its own on a second server covering the same blocks, fed at each check
the inputs since the last one (its KV cache holds the rest, so a check costs those tokens, not a
forward of the whole prefix), and compares the witness's outputs with the hop's for the same
positions — every output the hop returned is compared once, so a wrong step is caught at the next
check after it, however rarely a server lies. Outputs agree within a
tolerance set by both servers' dtypes and the wire's codec (:func:`tolerance`); the measure is
the worst relative error of one token's hidden state (:func:`disagreement`).

A disagreement asks a third server (a stateless forward of the hop's whole input). The server in
the minority is *distrusted*: never used again by this client, recorded in the local reputation
file (``$COROLLA_HOME/reputation.json``, read by every later client on this machine) and reported
in a signed DHT record (``corolla.reports.<model key>``, one per reporter, under its peer id) that
other clients weigh: a server some client reported is used only when no other can serve (a report
is a stranger's word, so it never bans on its own). Without a third server the dispute stays open
(logged; both keep serving). The session then rebuilds its chain without the distrusted server,
replaying its inputs from the first block, so the servers' caches hold honest values again; tokens
already generated from wrong activations are not taken back.

Servers with a quantised span are compared only with servers of the same quantisation (their
outputs differ from full weights by more than any lie worth catching).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from pathlib import Path

import torch

from corolla.cache import atomic_write_text, cache_root

log = logging.getLogger(__name__)

# relative error of one token's hidden state that two honest servers stay under: the rounding of
# the servers' dtype (and the wire's) through a span's blocks, with a margin over what SmolLM2's 30
# blocks showed (tests/swarm/test_verify.py, 120 tokens checked every other step: fp32 2.4e-6,
# bf16 3.0e-2, fp32 and bf16 mixed 3.4e-2; benchmarks/verify.py prints what it sees)
_DTYPE_TOLERANCE = {"float32": 2e-3, "float16": 2e-2, "bfloat16": 0.1}
_CODEC_TOLERANCE = {"none": 0.0, "float16": 2e-3, "bfloat16": 1.6e-2}
DEFAULT_TOLERANCE = 0.1  # a dtype or codec not listed


def tolerance(dtype_a: str, dtype_b: str, codec: str = "none") -> float:
    """The largest :func:`disagreement` honest servers of these dtypes show."""
    worst = max(_DTYPE_TOLERANCE.get(dtype_a, DEFAULT_TOLERANCE), _DTYPE_TOLERANCE.get(dtype_b, DEFAULT_TOLERANCE))
    return worst + _CODEC_TOLERANCE.get(codec, DEFAULT_TOLERANCE)


def disagreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The worst relative error between two outputs [B, T, H]: per token, the norm of the
    difference over the larger of the two norms."""
    a, b = a.float(), b.float()
    diff = (a - b).norm(dim=-1)
    scale = torch.maximum(a.norm(dim=-1), b.norm(dim=-1)).clamp_min(1e-6)
    return float((diff / scale).max()) if diff.numel() else 0.0


@dataclasses.dataclass
class Verdict:
    """One check of a hop: who was compared, how far apart, who was found wrong (if anyone)."""

    start: int
    end: int
    primary: str
    verifier: str
    error: float
    tolerance: float
    tokens: int  # outputs compared
    referee: str | None = None  # the third server asked, after a disagreement
    wrong: str | None = None  # the server in the minority (distrusted)

    @property
    def agreed(self) -> bool:
        return self.error <= self.tolerance


@dataclasses.dataclass
class VerifyStats:
    """What a client's checks found so far (``SwarmClient.verify_stats``)."""

    checks: int = 0
    tokens_compared: int = 0
    disputes: int = 0  # disagreements, resolved or not
    caught: list[str] = dataclasses.field(default_factory=list)  # servers found wrong, in order
    worst_agreeing: float = 0.0  # the largest disagreement among checks that agreed (the honest noise)


class Reputation:
    """The servers this machine's clients found computing wrong, per model key, in a JSON file."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else cache_root() / "reputation.json"
        self._lock = threading.Lock()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def distrusted(self, model_id: str) -> set[str]:
        entries = self._read().get(model_id, {})
        return set(entries) if isinstance(entries, dict) else set()

    def record(self, model_id: str, peer_id: str, verdict: Verdict) -> None:
        with self._lock:
            data = self._read()
            entries = data.setdefault(model_id, {})
            if not isinstance(entries, dict):
                entries = data[model_id] = {}
            entry = entries.setdefault(peer_id, {"caught": 0})
            entry.update(caught=int(entry.get("caught", 0)) + 1, last=time.time(),
                         blocks=[verdict.start, verdict.end], error=round(verdict.error, 6),
                         tolerance=verdict.tolerance, witnesses=[p for p in (verdict.verifier, verdict.referee)
                                                                 if p and p != peer_id])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))

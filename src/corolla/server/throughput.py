"""Measuring how fast this machine runs a span, cached per hardware, model, span and dtype."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import torch

from corolla.models.registry import Span
from corolla.server.kv import SessionKV

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Throughput:
    inference_rps: float  # decode steps per second through the whole span, one token
    forward_tps: float  # tokens per second of a stateless forward (prefill-like)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


MEASURE_VERSION = 2  # bump when the compute path changes: cached figures are then measured again


def measure(span: Span, hidden_size: int, dtype: torch.dtype, steps: int = 5) -> Throughput:
    """Decode steps/s on the path sessions use (``span.step``), and stateless forward tokens/s."""
    with torch.inference_mode():
        kv = SessionKV(span.kv_layout(dtype), 0, span.num_blocks, 1, 8 + steps)
        kv.grow(8 + steps, 0)
        span.step([(torch.zeros(1, 8, hidden_size, dtype=dtype), kv, 0)])  # warm-up prefill
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            span.step([(torch.zeros(1, 1, hidden_size, dtype=dtype), kv, 8 + i)])
            times.append(time.perf_counter() - t0)
        tokens = 64
        t0 = time.perf_counter()
        span(torch.zeros(1, tokens, hidden_size, dtype=dtype))
        fwd = time.perf_counter() - t0
    step = sorted(times)[len(times) // 2]
    return Throughput(inference_rps=1.0 / step, forward_tps=tokens / fwd)


def measure_cached(
    cache_file: Path, key_parts: dict, span: Span, hidden_size: int, dtype: torch.dtype
) -> Throughput:
    key = json.dumps({**key_parts, "version": MEASURE_VERSION, "cpu": _cpu_name(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__},
                     sort_keys=True)
    try:
        table = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        table = {}
    if key in table:
        return Throughput(**table[key])
    result = measure(span, hidden_size, dtype)
    table[key] = dataclasses.asdict(result)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{id(result)}")
    tmp.write_text(json.dumps(table, indent=1))
    tmp.replace(cache_file)
    log.info("measured %.1f steps/s, %.0f prefill tokens/s", result.inference_rps, result.forward_tps)
    return result

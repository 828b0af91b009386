"""Speculative decoding: draft k tokens cheaply, verify them in one step through the swarm.

A step through the chain costs a round trip per hop whatever its length, so checking k drafted
tokens costs about what one token does. The target's logits at every drafted position come back
together; the drafts it agrees with are kept, the first it disagrees with is replaced by the
target's own token, and the servers roll their caches back past it (``InferenceSession.truncate``,
sent with the next step: no extra round trip).

- greedy: a draft is kept when it is the target's argmax, so the output is plain greedy decoding's;
- sampling: standard speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a draft ``d``
  drawn from ``q`` is kept with probability ``min(1, p(d)/q(d))``, else the token is drawn from
  ``normalize(max(0, p - q))``; after all k are kept one more comes from ``p``. Every token is then
  distributed as plain sampling from ``p`` (the target's scores after the same logits processors).

Drafters propose ``(tokens, q)``: ``q`` [k, V] the draft's probabilities, or None for a
deterministic guess (one-hot ``q``). :class:`PromptLookup` copies what followed the latest earlier
occurrence of the context's last n-gram (no model: edits that copy most of a file), and
:class:`DraftModel` runs a small local model with the target's tokenizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from corolla.client.sampling import Sampler


@dataclasses.dataclass(frozen=True)
class DraftConfig:
    k: int = 4  # tokens drafted per step at first ...
    min_k: int = 1  # ... then chosen within these bounds by what is measured (see StepCosts)
    max_k: int = 16
    # greedy, with a drafter that can ``extend``: draft further while each step is in flight (the
    # step runs in a worker thread); they are the next step's drafts when the target accepts all of
    # this step's and its own next token is the draft's
    ahead: bool = True


@dataclasses.dataclass
class SpeculationStats:
    steps: int = 0  # verification steps through the swarm
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    draft_s: float = 0.0  # wall time spent drafting ...
    target_s: float = 0.0  # ... and in verification steps (the swarm and the LM head)
    ahead_drafted: int = 0  # tokens drafted while a step was in flight ...
    ahead_used: int = 0  # ... and those that a later step sent as drafts
    k_sum: int = 0  # the draft lengths chosen after each step, summed
    # StepCosts after the last step: acceptance, a step's seconds = a + b x rows, drafting in line
    alpha: float = 0.0
    step_a_s: float = 0.0
    step_b_s: float = 0.0
    draft_token_s: float = 0.0

    @property
    def mean_k(self) -> float:
        return self.k_sum / self.steps if self.steps else 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        return self.emitted / self.steps if self.steps else 0.0


class PromptLookup:
    """Drafts by copying: the tokens that followed an earlier occurrence of the context's last
    ``n``-gram (longest ``n`` first, ``max_ngram`` down to ``min_ngram``).

    Which occurrence: an edit copies its source in order, so after a first copy the source is
    expected to advance as the output does; the occurrence nearest that expected place is taken
    (it follows the copy across small insertions and deletions, where the latest occurrence of a
    short n-gram is often another line). Before any copy, the earliest (a file in the prompt is
    copied from its start). On the edit task of ``benchmarks/speculative.py`` this takes 20
    verification steps for 146 tokens instead of 23 with the latest occurrence (k = 16).

    A match exactly where the copy is expected continues it and is nearly always right; any other
    (a first copy, or finding the source again after the output left it) is a guess on a short
    n-gram and often wrong, so it drafts at most ``unsure_k`` tokens (each costs the verifying step
    a row); once a guess was right, the next match is where expected and drafts in full."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, unsure_k: int = 1):
        self.max_ngram, self.min_ngram, self.unsure_k = max_ngram, min_ngram, unsure_k
        self._last: tuple[int, int] | None = None  # (context length, where its copy started) at the last match

    def propose(self, context: torch.Tensor, k: int, sampler: Sampler | None = None):
        ids = context[0]
        length = ids.shape[0]
        expected = None
        if self._last is not None and self._last[0] <= length:
            expected = self._last[1] + length - self._last[0]  # the source advanced as the output did
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            tail = ids[length - n :]
            windows = ids[: length - 1].unfold(0, n, 1)  # windows that end before the last token
            hits = (windows == tail).all(dim=1).nonzero().flatten()
            if hits.numel():
                starts = hits + n  # where each occurrence's continuation starts
                # argmin takes the first of equals: the earlier of two occurrences as near
                start = int(starts[(starts - expected).abs().argmin()] if expected is not None else starts[0])
                self._last = (length, start)
                return ids[start : start + (k if start == expected else min(k, self.unsure_k))].clone(), None
        return ids[:0].clone(), None


class LocalLM(torch.nn.Module):
    """A whole small causal LM on corolla's own model code: every block in one span (the fast
    few-row matmuls of :mod:`corolla.models.step`), embeddings, final norm and LM head. Its cache
    (a ``GrowingKV``) rolls back for free: writing at a position drops what was past it."""

    def __init__(self, config: Any, span: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.config, self.span, self.head = config, span, head

    @classmethod
    def load(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> LocalLM:
        from corolla.models.loading import load_config, load_head, load_span

        config = load_config(Path(folder))
        span = load_span(Path(folder), config, 0, config.num_hidden_layers, dtype)
        return cls(config, span, load_head(Path(folder), config, dtype))

    def new_cache(self) -> Any:
        return self.span.new_cache()

    def last_logits(self, ids: torch.Tensor, cache: Any, position: int) -> torch.Tensor:
        """Feed ``ids`` [T] at ``position`` of ``cache`` (dropping what it held past it); the
        logits after the last one [V]."""
        hidden = self.span(self.head.embed(ids[None]), cache, position)  # [1, T, H]
        return self.head.logits(hidden[:, -1:])[0, -1].float()


class ThreadTuner:
    """How many torch threads a draft model's forward passes use, chosen by measuring them.

    Each few-row matmul of a decode step is a parallel region (about 170 a token for a 24-block
    model). On a quiet machine more threads read the weights faster; while other processes keep
    the cores busy, every region waits for a descheduled thread, and one thread is several times
    faster (qwen2.5-coder-0.5b here with 1.5 of 2 CPUs taken by others: 0.3-0.6 s a draft token
    on 1 thread, 2-4 s on 2). Candidates: 1 and the process's thread count. Each one's seconds per
    decode-sized call are a moving average; the best is used, and another is tried again once the
    time spent since its last try reaches ``patience`` times what it cost extra then (trying
    costs about 1/patience of the time, and a change of the machine's load is followed)."""

    def __init__(self, candidates: Iterable[int], patience: float = 10.0, smoothing: float = 0.3):
        self.candidates = sorted(set(candidates))
        self.patience, self.smoothing = patience, smoothing
        self.mean: dict[int, float] = {}  # threads -> seconds per call
        self.credit = dict.fromkeys(self.candidates, 0.0)  # seconds spent since each was last tried
        self._last: int | None = None

    @classmethod
    def default(cls) -> ThreadTuner:
        return cls({1, torch.get_num_threads()})

    def untried(self) -> int | None:
        return next((c for c in self.candidates if c not in self.mean), None)

    def best(self) -> int:
        return min(self.mean, key=self.mean.__getitem__) if self.mean else self.candidates[-1]

    def choose(self) -> int:
        untried = self.untried()
        if untried is not None:
            return untried
        best = self.best()
        for c in self.candidates:
            if c != best and self.credit[c] >= self.patience * (self.mean[c] - self.mean[best]):
                return c
        return best

    def record(self, threads: int, seconds: float) -> None:
        if threads in self.mean and self._last == threads:
            self.mean[threads] += self.smoothing * (seconds - self.mean[threads])
        else:  # a first try, or a try again after a while: the machine may have changed since
            self.mean[threads] = seconds
        self._last = threads
        for c in self.candidates:
            self.credit[c] = 0.0 if c == threads else self.credit[c] + seconds


_TUNERS: weakref.WeakKeyDictionary[torch.nn.Module, ThreadTuner] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads (the setting is the process's), then restore the previous count."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


class DraftModel:
    """A small local causal LM sharing the target's vocabulary (a :class:`LocalLM`, or any
    Hugging Face causal LM); keeps its own KV cache and rolls it back to what the context still
    shares with what it has seen, so each step feeds only the tokens it has not seen."""

    # a call that feeds at most this many tokens is timed for the thread tuner (a decode step's cost)
    TIMED_TOKENS = 4

    def __init__(self, model: Any, tuner: ThreadTuner | None = None):
        self.model = model.eval()
        self._cache = None
        self._seen = torch.empty(0, dtype=torch.long)  # ids whose keys and values the cache holds
        # greedy: the draft's own choice after everything seen, and where its own choices start in
        # ``_seen`` (fed to draft further): a context that lies on that path knows its drafts already
        self._tail: torch.Tensor | None = None
        self._own_from = 0
        self._sampler: Sampler | None = None
        self.ahead_drafted = 0  # tokens drafted by ``extend`` (while a step was in flight) ...
        self.ahead_used = 0  # ... and those a later ``propose`` returned without computing them
        if tuner is None:  # kept with the weights: every generation that drafts with them learns from the others
            tuner = _TUNERS.get(model) or _TUNERS.setdefault(model, ThreadTuner.default())
        self.tuner = tuner

    @classmethod
    def load(cls, name: str | Path) -> DraftModel:
        """A packaged model's name or a folder; on corolla's model code where its family is
        supported, else through transformers."""
        from corolla.errors import UnsupportedModelError
        from corolla.models.resolve import resolve_model

        path = resolve_model(str(name)).path
        try:
            return cls(LocalLM.load(path))
        except UnsupportedModelError:
            from transformers import AutoModelForCausalLM

            return cls(AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32))

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` [T] after what the cache holds, with the tuner's thread count; the logits of
        the last one [V]. While the tuner has an untried thread count, a long feed (a prompt) gives
        its first tokens one at a time to try them."""
        while ids.shape[0] > 1 and (untried := self.tuner.untried()) is not None:
            self._timed_forward(ids[:1], untried)
            ids = ids[1:]
        threads = self.tuner.choose() if ids.shape[0] <= self.TIMED_TOKENS else self.tuner.best()
        return self._timed_forward(ids, threads)

    def _timed_forward(self, ids: torch.Tensor, threads: int) -> torch.Tensor:
        start = time.perf_counter()
        with torch_threads(threads):
            logits = self._forward(ids)
        if ids.shape[0] <= self.TIMED_TOKENS:
            self.tuner.record(threads, time.perf_counter() - start)
        return logits

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, LocalLM):
            if self._cache is None:
                self._cache = self.model.new_cache()
            logits = self.model.last_logits(ids, self._cache, self._seen.shape[0])
        else:
            from transformers import DynamicCache

            if self._cache is None:
                self._cache = DynamicCache()
            out = self.model(ids[None], cache=self._cache, use_cache=True)
            self._cache = out.cache
            logits = out.logits[0, -1].float()
        self._seen = torch.cat([self._seen, ids])
        return logits

    def _rollback(self, common: int) -> None:
        """Forget every position from ``common`` on."""
        if common < self._seen.shape[0]:
            if self._cache is not None and common == 0:
                self._cache = None
            elif self._cache is not None and not isinstance(self.model, LocalLM):  # a LocalLM's is overwritten
                self._cache.crop(common - self._seen.shape[0])  # a negative count: drop that many
            self._seen = self._seen[:common]
            self._tail = None

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The greedy draft after ``_seen`` (the sampler's processors see ``_seen`` as the context)."""
        sampler = self._sampler
        scores = sampler.processors(self._seen[None], logits[None])[0] if sampler is not None else logits
        return scores.argmax()

    def _advance(self) -> None:
        """Feed the greedy draft ``_tail`` and choose the next one."""
        self._tail = self._choose(self._logits(self._tail[None]))

    def propose(self, context: torch.Tensor, k: int, sampler: Sampler | None = None):
        ids = context[0]
        n = ids.shape[0]
        length = min(self._seen.shape[0], n)
        common = int((self._seen[:length] == ids[:length]).int().cumprod(0).sum()) if length else 0
        sampling = sampler is not None and sampler.params.do_sample
        with torch.inference_mode():
            if sampling:
                return self._sample(ids, k, sampler, common)
            self._sampler = sampler
            if not (common == n and n >= self._own_from and self._tail is not None):
                # the context left the path drafted so far: its last token is always fed (its logits)
                self._rollback(min(common, n - 1))
                self._tail = self._choose(self._logits(ids[self._seen.shape[0] :]))
                self._own_from = n
            else:  # drafted already, by ``extend`` while the step that accepted them was in flight
                self.ahead_used += min(k, self._seen.shape[0] - n + 1)
            while self._seen.shape[0] - n + 1 < k:
                self._advance()
        return torch.cat([self._seen[n:], self._tail[None]])[:k], None

    def extend(self, stop: Callable[[], bool], limit: int) -> int:
        """Draft further along the greedy path of the last ``propose`` (as if all its drafts were
        accepted) until ``stop()`` or ``limit`` tokens past them; returns how many it drafted.
        Meant to run while the step verifying those drafts is in flight: when the target accepts
        them all and its own next token is the draft's, the next ``propose`` finds its drafts here."""
        if self._tail is None:
            return 0
        drafted = 0
        with torch.inference_mode():
            while drafted < limit and not stop():
                self._advance()
                drafted += 1
        self.ahead_drafted += drafted
        return drafted

    def _sample(self, ids: torch.Tensor, k: int, sampler: Sampler, common: int):
        """Sampled drafts and their probabilities ``q`` [k, V], each drawn afresh."""
        self._rollback(min(common, ids.shape[0] - 1))
        logits = self._logits(ids[self._seen.shape[0] :])
        tokens, probs = [], []
        running = ids
        for i in range(k):
            q = torch.softmax(sampler.processors(running[None], logits[None])[0], dim=-1)
            token = torch.multinomial(q, 1, generator=sampler.generator)[0]
            probs.append(q)
            tokens.append(token)
            running = torch.cat([running, token[None]])
            if i + 1 < k:
                logits = self._logits(token[None])
        self._tail = None  # sampled, not greedy: nothing to reuse
        return (torch.stack(tokens), torch.stack(probs)) if tokens else (ids[:0], None)


def make_drafter(draft: Any) -> Any:
    """``"lookup"``, a drafter object (``propose``), a causal LM, or a model name/folder."""
    if draft is None:
        return None
    if isinstance(draft, str) and draft == "lookup":
        return PromptLookup()
    if hasattr(draft, "propose"):
        return draft
    if isinstance(draft, torch.nn.Module):  # a LocalLM or a Hugging Face causal LM
        return DraftModel(draft)
    return DraftModel.load(draft)


def verify(
    sampler: Sampler, context: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor | None, logits: torch.Tensor
) -> tuple[list[int], int]:
    """The tokens this step emits and how many drafts were accepted.

    ``context`` [1, L]: the tokens before the first verified position; ``drafts`` [d];
    ``q`` [d, V] or None (deterministic drafts); ``logits`` [d + 1, V]: the target's at the
    position of each draft and after the last one. Emits the accepted drafts and then one token
    of the target's (a replacement for the first rejected draft, or one more after all of them).
    """
    out: list[int] = []
    running = context
    for j in range(drafts.shape[0] + 1):
        scores = sampler.processors(running, logits[j : j + 1].float())[0]  # [V]
        if not sampler.params.do_sample:
            target = int(scores.argmax())
            out.append(target)
            if j == drafts.shape[0] or target != int(drafts[j]):
                return out, j
        else:
            p = torch.softmax(scores, dim=-1)
            if j == drafts.shape[0]:
                out.append(int(torch.multinomial(p, 1, generator=sampler.generator)[0]))
                return out, j
            d = int(drafts[j])
            q_d = float(q[j, d]) if q is not None else 1.0
            u = float(torch.rand((), generator=sampler.generator))
            if u < min(1.0, float(p[d]) / q_d) if q_d > 0 else False:
                out.append(d)
            else:
                if q is not None:
                    residual = (p - q[j].to(p.dtype)).clamp_min(0)
                else:
                    residual = p.clone()
                    residual[d] = 0
                total = float(residual.sum())
                residual = residual / total if total > 0 else p
                out.append(int(torch.multinomial(residual, 1, generator=sampler.generator)[0]))
                return out, j
        running = torch.cat([running, torch.tensor([[out[-1]]], dtype=running.dtype)], dim=1)
    raise AssertionError("unreachable")  # pragma: no cover


class StepCosts:
    """What the next step's draft length ``k`` is chosen from, measured as decoding goes (each
    figure forgets the older steps by ``forget`` per step):

    - ``alpha``: the chance that a draft is accepted (after the ones before it were): accepted
      drafts ÷ (accepted drafts + rejections), from a prior of 1/2 worth one draft; and that
      chance per position in the step, ``alpha_at(j)``: drafts at position j accepted ÷ those
      checked, from a prior worth one draft of the position before's (``alpha`` for the first).
      Prompt lookup needs it: its first draft is often wrong (no copy there), the ones after a
      right one nearly always right (the copy goes on);
    - ``draft_s``: seconds of drafting in line (not hidden behind a step) per drafted token;
    - a verification step's seconds as ``a + b x rows`` (least squares over the steps that fed one
      token before their drafts): more rows cost the servers and the LM head more.

    ``best_k`` maximises the expected tokens per second, ``E(k) ÷ (a + b (k + 1) + draft_s k)``
    with ``E(k) = 1 + sum over i <= k of alpha_at(1) ... alpha_at(i)``. Until the steps' row counts
    have spread, ``b`` counts as 0 (the length then follows acceptance alone)."""

    def __init__(self, forget: float = 0.9):
        self.forget = forget
        self.accepted, self.rejected = 0.5, 0.5
        self._draft_time, self._drafted = 0.0, 0.0
        self._sums = [0.0] * 5  # weights, x, x^2, y, x y (x = rows, y = seconds)
        self._checked: list[float] = []  # per position in a step: drafts checked there ...
        self._kept: list[float] = []  # ... and accepted

    @property
    def alpha(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def alphas(self, k: int) -> list[float]:
        """``alpha_at(j)`` for positions 1..k."""
        out, prior = [], self.alpha
        for j in range(k):
            checked, kept = (self._checked[j], self._kept[j]) if j < len(self._checked) else (0.0, 0.0)
            prior = (kept + prior) / (checked + 1.0)
            out.append(prior)
        return out

    def gains(self, k: int) -> list[float]:
        """Expected tokens of a step with 0, 1, ..., k drafts (its own token included)."""
        gains, reach = [1.0], 1.0
        for alpha in self.alphas(k):
            reach *= alpha  # the chance that this draft is reached and accepted
            gains.append(gains[-1] + reach)
        return gains

    @property
    def draft_s(self) -> float:
        return self._draft_time / self._drafted if self._drafted else 0.0

    def step_line(self) -> tuple[float, float]:
        """(a, b): a step's seconds = a + b x rows."""
        w, x, xx, y, xy = self._sums
        if w <= 0:
            return 0.0, 0.0
        var = xx * w - x * x
        b = max(0.0, (xy * w - x * y) / var) if var > 0.25 * w * w else 0.0  # rows' variance > 1/4
        return max(0.0, (y - b * x) / w), b

    def record(self, drafted: int, accepted: int, draft_s: float, rows: int, step_s: float | None) -> None:
        f = self.forget
        if drafted:
            self.accepted = self.accepted * f + accepted
            self.rejected = self.rejected * f + (accepted < drafted)
            self._drafted = self._drafted * f + drafted
            self._draft_time = self._draft_time * f + draft_s
            checked = min(accepted + 1, drafted)
            while len(self._checked) < checked:
                self._checked.append(0.0)
                self._kept.append(0.0)
            self._checked = [v * f + (j < checked) for j, v in enumerate(self._checked)]
            self._kept = [v * f + (j < accepted) for j, v in enumerate(self._kept)]
        if step_s is not None:
            self._sums = [v * f for v in self._sums]
            for i, v in enumerate((1.0, rows, rows * rows, step_s, rows * step_s)):
                self._sums[i] += v

    def best_k(self, config: DraftConfig, current: int) -> int:
        a, b = self.step_line()
        if a + b <= 0:  # nothing measured yet
            return current

        gains = self.gains(config.max_k)

        def rate(k: int) -> float:
            return gains[k] / (a + b * (k + 1) + self.draft_s * k)

        return max(range(config.min_k, config.max_k + 1), key=rate)


def speculate(
    *,
    drafter: Any,
    sampler: Sampler,
    context: torch.Tensor,
    feed: torch.Tensor,
    target: Callable[[torch.Tensor, int], torch.Tensor],
    rollback: Callable[[int], None],
    budget: Callable[[], int],
    max_new_tokens: int,
    config: DraftConfig = DraftConfig(),
    stats: SpeculationStats | None = None,
) -> Iterator[int]:
    """Yield new tokens one at a time (the caller stops iterating at EOS or a stop string).

    ``feed`` [1, F]: tokens not yet in the target's cache (the end of ``context`` [1, L]);
    ``target(ids [1, T], n)``: runs ``ids`` through the target, returns the logits [n, V] of its
    last ``n`` positions; ``rollback(n)``: drop the last ``n`` positions from the target's cache;
    ``budget()``: how many more positions the target's cache may take.
    """
    stats = stats if stats is not None else SpeculationStats()
    ahead = config.ahead and not sampler.params.do_sample and hasattr(drafter, "extend")
    with contextlib.ExitStack() as stack:
        # a step in flight is always waited for before a token is yielded: closing this generator never leaves one
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="corolla-verify")) if ahead else None
        yield from _speculate_loop(drafter, sampler, context, feed, target, rollback, budget, max_new_tokens,
                                   config, stats, pool)


def _speculate_loop(drafter, sampler, context, feed, target, rollback, budget, max_new_tokens, config, stats,
                    pool: ThreadPoolExecutor | None) -> Iterator[int]:
    k, produced = config.k, 0
    costs = StepCosts()
    while produced < max_new_tokens:
        # never draft past max_new_tokens nor past what the session may hold
        room = min(k, max_new_tokens - produced - 1, budget() - feed.shape[1])
        t0 = time.perf_counter()
        drafts, q = drafter.propose(context, room, sampler) if room > 0 else (context[0, :0], None)
        t1 = time.perf_counter()
        drafts = drafts[: max(room, 0)]
        q = q[: drafts.shape[0]] if q is not None else None
        d = drafts.shape[0]
        ids = torch.cat([feed, drafts[None].to(feed.dtype)], dim=1)
        if pool is not None and d > 0:
            step = pool.submit(target, ids, d + 1)
            # in the step's shadow (the network, the servers): the drafts after these, should all be accepted
            drafter.extend(step.done, config.max_k + 1)
            logits = step.result()
        else:
            logits = target(ids, d + 1)  # [d + 1, V]
        t2 = time.perf_counter()
        stats.draft_s += t1 - t0
        stats.target_s += t2 - t1
        stats.ahead_drafted = getattr(drafter, "ahead_drafted", 0)
        stats.ahead_used = getattr(drafter, "ahead_used", 0)
        tokens, accepted = verify(sampler, context, drafts, q, logits)
        stats.steps += 1
        stats.drafted += d
        stats.accepted += accepted
        if accepted < d:
            rollback(d - accepted)
        # a step that fed more than one token before its drafts (the prompt) is no decode step
        costs.record(d, accepted, t1 - t0, d + 1, t2 - t1 if feed.shape[1] == 1 else None)
        k = costs.best_k(config, k)
        stats.k_sum += k
        stats.alpha, stats.draft_token_s = costs.alpha, costs.draft_s
        stats.step_a_s, stats.step_b_s = costs.step_line()
        for token in tokens:
            produced += 1
            stats.emitted += 1
            context = torch.cat([context, torch.tensor([[token]], dtype=context.dtype)], dim=1)
            yield token
            if produced >= max_new_tokens:
                return
        feed = context[:, -1:]

"""Speculative decoding against a local target: drafters, acceptance, and that sampling keeps
the target's distribution (chi-square against the exact probabilities, fixed seeds)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from corolla.client.sampling import Sampler, SamplingParams
from corolla.client.speculative import (
    DraftConfig,
    DraftModel,
    LocalLM,
    PromptLookup,
    SpeculationStats,
    StepCosts,
    ThreadTuner,
    speculate,
    torch_threads,
)
from tests.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return (save_tiny_model("llama", tmp_path_factory.mktemp("t")),
            save_tiny_model("qwen2", tmp_path_factory.mktemp("d"), seed=1))


@pytest.fixture(scope="module")
def models(folders):
    return tuple(AutoModelForCausalLM.from_pretrained(f).eval() for f in folders)


class LocalTarget:
    """The target as ``speculate`` sees it, recomputed from scratch each step (no cache); with
    ``memo`` (ids -> logits, shared by runs), a sequence already seen is not run again."""

    def __init__(self, model, max_length: int = 512, memo: dict | None = None):
        self.model, self.ids, self.max_length, self.calls = model, torch.empty(1, 0, dtype=torch.long), max_length, 0
        self.memo = memo

    def __call__(self, ids, n):
        self.calls += 1
        self.ids = torch.cat([self.ids, ids], 1)
        key = tuple(self.ids[0].tolist())
        logits = self.memo.get(key) if self.memo is not None else None
        if logits is None:
            with torch.inference_mode():
                logits = self.model(self.ids).logits[0].float()
            if self.memo is not None:
                self.memo[key] = logits
        return logits[-n:]

    def rollback(self, n):
        assert 0 < n <= self.ids.shape[1]
        self.ids = self.ids[:, :-n]

    def budget(self):
        return self.max_length - self.ids.shape[1]


def run(model, drafter, params, prompt, new, config=None, stats=None, memo=None):
    target = LocalTarget(model, memo=memo)
    out = list(speculate(drafter=drafter, sampler=Sampler(params), context=prompt, feed=prompt, target=target,
                         rollback=target.rollback, budget=target.budget, max_new_tokens=new,
                         config=config or DraftConfig(), stats=stats))
    # the target's cache holds the prompt and every emitted token but (at most) the last
    assert target.ids[0].tolist() == (prompt[0].tolist() + out)[: target.ids.shape[1]]
    return out, target


def plain_greedy(model, prompt, new):
    ids = prompt
    for _ in range(new):
        with torch.inference_mode():
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], 1)
    return ids[0, prompt.shape[1]:].tolist()


def test_prompt_lookup_copies_what_followed_a_match():
    lookup = PromptLookup(max_ngram=2, unsure_k=16)
    ctx = torch.tensor([[5, 6, 7, 8, 9, 1, 5, 6]])
    drafts, q = lookup.propose(ctx, 3)
    assert drafts.tolist() == [7, 8, 9] and q is None
    assert lookup.propose(torch.tensor([[1, 2, 3]]), 3)[0].tolist() == []  # no earlier n-gram
    assert lookup.propose(torch.tensor([[4, 2, 4]]), 5)[0].tolist() == [2, 4]  # 1-gram, up to the end


def test_prompt_lookup_follows_the_copy_across_an_insertion():
    source = [10, 1, 11, 12, 1, 13, 14, 1, 15, 16]  # a "file" in the prompt: token 1 on every line
    lookup = PromptLookup(max_ngram=2, unsure_k=2)
    ctx = source + [99, 10]
    assert lookup.propose(torch.tensor([ctx]), 3)[0].tolist() == [1, 11]  # a first copy: unsure, 2 at most
    ctx += [1, 11]
    assert lookup.propose(torch.tensor([ctx]), 3)[0].tolist() == [12, 1, 13]  # where expected: in full
    # the output copied 12, inserted 77, went on with 1: of the 1s, the one nearest where the copy
    # is expected (the source advanced with the output), not the latest (the output's own); unsure
    ctx += [12, 77, 1]
    assert lookup.propose(torch.tensor([ctx]), 3)[0].tolist() == [13, 14]
    ctx += [13, 14]
    assert lookup.propose(torch.tensor([ctx]), 3)[0].tolist() == [1, 15, 16]  # found again: in full


def test_step_costs_fit_the_step_line_and_the_acceptance():
    costs = StepCosts(forget=1.0)
    for rows in (2, 5, 3, 9, 4):  # a step: 0.5 s + 0.1 s a row
        costs.record(rows - 1, rows - 2, 0.2 * (rows - 1), rows, 0.5 + 0.1 * rows)
    a, b = costs.step_line()
    assert a == pytest.approx(0.5) and b == pytest.approx(0.1)
    assert costs.draft_s == pytest.approx(0.2)
    assert costs.alpha == pytest.approx((0.5 + 13) / (0.5 + 13 + 0.5 + 5))  # each step: one rejection
    # per position: the first drafts were all checked, 4 of 5 accepted (a prior of alpha worth one)
    first = (4 + costs.alpha) / (5 + 1)
    assert costs.alphas(1) == [pytest.approx(first)]
    assert costs.gains(1) == [1.0, pytest.approx(1 + first)]


def test_acceptance_per_position_follows_copies():
    """Lookup-like: the first draft is right half the time, the ones after a right one always."""
    costs = StepCosts(forget=1.0)
    for i in range(20):
        costs.record(8, 8 if i % 2 else 0, 0.0, 9, 1.0 + 0.05 * (9 + i % 3))
    alphas = costs.alphas(12)
    assert 0.4 < alphas[0] < 0.6 and all(a > 0.9 for a in alphas[1:])  # positions past 8: the 8th's
    assert costs.best_k(DraftConfig(max_k=12), 4) == 12


def test_k_follows_acceptance_and_costs():
    config = DraftConfig(k=4, min_k=1, max_k=8)
    costs = StepCosts()
    assert costs.best_k(config, 4) == 4  # nothing measured: unchanged
    for _ in range(20):  # every draft accepted, steps cost the same whatever their rows
        costs.record(4, 4, 0.0, 5, 1.0)
    assert costs.best_k(config, 4) == 8
    for _ in range(30):  # most drafts rejected and drafting dear: few drafts
        costs.record(4, 0, 0.8, 5, 1.0)
    assert costs.best_k(config, 8) == 1
    # each draft accepted 9 times in 10, no drafting cost: rows that cost 0.5 s each (against 0.2 s
    # a step) keep k small, rows that cost 0.01 s (against 1 s) do not
    dear, cheap = StepCosts(forget=1.0), StepCosts(forget=1.0)
    coins = torch.rand(200, 8, generator=torch.Generator().manual_seed(0)) < 0.9
    for i, rows in enumerate((2, 5, 3, 9) * 50):
        accepted = int(coins[i, : rows - 1].int().cumprod(0).sum())
        dear.record(rows - 1, accepted, 0.0, rows, 0.2 + 0.5 * rows)
        cheap.record(rows - 1, accepted, 0.0, rows, 1.0 + 0.01 * rows)
    assert dear.best_k(config, 4) < 4 and cheap.best_k(config, 4) == 8


@pytest.mark.parametrize("drafter", ["lookup", "model", "self", "local", "local-self"])
def test_greedy_output_is_plain_greedy(models, folders, drafter):
    target, draft = models
    prompt = torch.tensor([[3, 17, 42, 3, 17, 42, 3, 17, 99, 5, 3, 17]])
    d = {"lookup": PromptLookup, "model": lambda: DraftModel(draft), "self": lambda: DraftModel(target),
         "local": lambda: DraftModel(LocalLM.load(folders[1])),
         "local-self": lambda: DraftModel(LocalLM.load(folders[0]))}[drafter]()
    drafter = drafter.removeprefix("local-")
    stats = SpeculationStats()
    # the target as its own draft costs as much as a step: at least 4 drafts, or k would stay small
    config = DraftConfig(min_k=4, max_k=8) if drafter == "self" else None
    out, target_run = run(target, d, SamplingParams(), prompt, 40, stats=stats, config=config)
    assert out == plain_greedy(target, prompt, 40)
    assert stats.emitted == 40
    if drafter == "self":  # a draft identical to the target is always right: few steps
        assert stats.accepted == stats.drafted and stats.steps <= 10


def test_a_local_lm_drafts_what_transformers_drafts_and_rolls_back(models, folders):
    """corolla's model code (``LocalLM``, what ``DraftModel.load`` picks) proposes the Hugging Face
    model's drafts, and after a rollback (a context that left the drafted path) the same as a fresh one."""
    _, draft = models
    local = LocalLM.load(folders[1])
    ctx = torch.tensor([[3, 17, 42, 3, 17, 42, 3, 17, 99, 5]])
    ours, theirs = DraftModel(local), DraftModel(draft)
    for step in range(4):
        mine, _ = ours.propose(ctx, 3)
        assert mine.tolist() == theirs.propose(ctx, 3)[0].tolist()
        # keep one draft, then a token of our own: the drafter's cache rolls back past the other two
        ctx = torch.cat([ctx, mine[None, :1], torch.tensor([[7 + step]])], 1)
    assert ours.propose(ctx, 5)[0].tolist() == DraftModel(local).propose(ctx, 5)[0].tolist()


def test_drafts_made_ahead_are_what_a_fresh_drafter_proposes(folders):
    local = LocalLM.load(folders[1])
    ctx = torch.tensor([[3, 17, 42, 3, 17, 42, 3, 17, 99, 5]])
    d = DraftModel(local)
    drafts, _ = d.propose(ctx, 3)
    assert d.extend(lambda: False, 4) == 4  # as if the step verifying them were slow
    accepted = torch.cat([ctx, drafts[None]], 1)
    path = d.propose(accepted, 5)[0]  # all accepted: 4 known ahead, 1 more
    assert d.ahead_used == 4 and path.tolist() == DraftModel(local).propose(accepted, 5)[0].tolist()
    # the target took the first draft path token only, then a token of its own: off the path, fed again
    off = torch.cat([ctx, drafts[None], path[None, :1], torch.tensor([[int(path[1]) + 1]])], 1)
    assert d.propose(off, 4)[0].tolist() == DraftModel(local).propose(off, 4)[0].tolist()


class AheadDrafter(DraftModel):
    """Drafts exactly ``n`` tokens ahead per step, however fast the step is (deterministic tests)."""

    n = 3

    def extend(self, stop, limit):
        return super().extend(lambda: False, min(limit, self.n))


@pytest.mark.parametrize("which", ["self", "other"])
def test_greedy_with_drafts_made_ahead_is_plain_greedy(models, which):
    target, draft = models
    prompt = torch.tensor([[3, 17, 42, 3, 17, 42, 3, 17, 99, 5, 3, 17]])
    d = AheadDrafter(target if which == "self" else draft)
    stats = SpeculationStats()
    out, _ = run(target, d, SamplingParams(), prompt, 40, config=DraftConfig(k=2, max_k=4), stats=stats)
    assert out == plain_greedy(target, prompt, 40)
    assert stats.ahead_drafted > 0
    if which == "self":  # every draft is accepted and the target's next token is the draft's: used
        assert stats.ahead_used >= stats.drafted // 2


def test_draft_model_load_uses_corolla_kernels_for_known_families(folders):
    assert isinstance(DraftModel.load(folders[1]).model, LocalLM)


def test_thread_tuner_uses_the_fastest_and_tries_the_others_now_and_then():
    tuner = ThreadTuner([1, 2], patience=10)
    assert tuner.choose() == 1  # each candidate is tried first
    tuner.record(1, 0.3)
    assert tuner.untried() == 2 and tuner.choose() == 2
    tuner.record(2, 3.0)  # a busy machine: two threads wait on each other
    picks = []
    for _ in range(100):
        picks.append(tuner.choose())
        tuner.record(picks[-1], 0.3 if picks[-1] == 1 else 3.0)
    # tried again once in 100 calls: after 10 x (3.0 - 0.3) s spent on the fast one
    assert picks.count(2) == 1 and picks.index(2) == 90
    tuner.record(2, 0.1)  # the machine got quiet: a try again that wins
    assert tuner.best() == 2 and tuner.choose() == 2


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_draft_model_tries_each_thread_count_on_the_prompt(models):
    _, draft = models
    tuner = ThreadTuner([1, 2])
    d = DraftModel(draft, tuner=tuner)
    d.propose(torch.tensor([[3, 17, 42, 3, 17, 42, 3, 17]]), 3)
    assert set(tuner.mean) == {1, 2}  # the prompt's first two tokens were fed one at a time, one per count
    assert DraftModel(draft).tuner is DraftModel(draft).tuner  # one tuner per set of weights


def test_greedy_with_repetition_penalty_is_plain(models):
    target, _ = models
    prompt = torch.tensor([[3, 17, 42, 3, 17, 42, 3, 17]])
    params = SamplingParams(repetition_penalty=1.3)
    out, _ = run(target, DraftModel(target), params, prompt, 20)
    sampler, ids = Sampler(params), prompt
    for _ in range(20):
        with torch.inference_mode():
            ids = torch.cat([ids, sampler.next_tokens(ids, target(ids).logits[:, -1])[:, None]], 1)
    assert out == ids[0, prompt.shape[1]:].tolist()


def _exact_marginals(model, prompt, params):
    """p(t1) and the marginal p(t2) = sum_t1 p(t1) p(t2 | t1), after the sampler's processors."""
    sampler = Sampler(params)
    with torch.inference_mode():
        p1 = torch.softmax(sampler.processors(prompt, model(prompt).logits[:, -1].float()), -1)[0]
        support = p1.nonzero().flatten()
        rows = torch.cat([prompt.expand(len(support), -1), support[:, None]], 1)
        p2_given = torch.softmax(sampler.processors(rows, model(rows).logits[:, -1].float()), -1)
    return p1, (p1[support, None] * p2_given).sum(0)


def _chi_square_p(counts: torch.Tensor, expected_p: torch.Tensor, n: int) -> float:
    expected = expected_p.double() * n
    big = expected >= 10  # the rest in one bin: the asymptotic p-value holds far into the tail
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    if bool((obs[~keep] > 0).any()):
        return 0.0  # a token the target never samples
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = max(1, int(keep.sum()) - 1)
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.fixture(scope="module")
def one_block(tmp_path_factory):
    """The tiny Llama with a single block: the statistical tests run it thousands of times."""
    folder = save_tiny_model("llama", tmp_path_factory.mktemp("one"), num_hidden_layers=1)
    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture
def one_thread():
    """Torch on one thread: a tiny model's ops are too small to share, and two test workers share the cores
    (on a busy 2-core machine the test took 45 s on the default threads, 7 to 14 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# each chi-square test below fails a correct sampler with probability 1e-5, the four together < 1e-4;
# the seeds are fixed, so a run is deterministic
ALPHA = 1e-5


@pytest.mark.parametrize("drafter, n", [("model", 1000), ("lookup", 1000)])
def test_sampling_keeps_the_targets_distribution(one_block, one_thread, drafter, n):
    """Tokens 1 and 2 of speculative sampling (k=2) are distributed as the target's. Against
    broken resampling (from p instead of max(0, p - q)), acceptance (every draft, or by q/p) or a
    fixed draw, each parametrisation fails by a wide margin (checked by breaking verify)."""
    target = one_block
    base = dict(do_sample=True, temperature=1.5, top_k=8)
    # [5, b, 9, 9, 5]: lookup proposes [b, 9]; pick b that the target samples next as near half the time as any
    rows = torch.tensor([[5, b, 9, 9, 5] for b in range(320)])
    with torch.inference_mode():
        p = torch.softmax(Sampler(SamplingParams(**base)).processors(rows, target(rows).logits[:, -1].float()), -1)
    own = p[torch.arange(320), torch.arange(320)]
    b = int((own - 0.5).abs().argmin())
    assert 0.1 < float(own[b]) < 0.9
    prompt = torch.tensor([[5, b, 9, 9, 5]])
    p1, p2 = _exact_marginals(target, prompt, SamplingParams(**base))
    if drafter == "model":
        # a draft surer than the target (its LM head x4) and a little off (noise): mostly the
        # target's candidates, about two thirds of drafts accepted, a wrong rule moves tokens far
        near = copy.deepcopy(target)
        with torch.no_grad():
            noise = torch.randn(near.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
            near.lm_head.weight.mul_(4.0).add_(noise, alpha=0.03)
        d = DraftModel(near)
    else:
        d = PromptLookup()
    vocab = p1.shape[0]
    first, second = torch.zeros(vocab), torch.zeros(vocab)
    stats, memo = SpeculationStats(), {}  # the target's logits for each sequence, computed once
    for seed in range(n):
        out, _ = run(target, d, SamplingParams(**base, seed=seed), prompt, 3, config=DraftConfig(k=2), stats=stats,
                     memo=memo)
        first[out[0]] += 1
        second[out[1]] += 1
    p_first, p_second = _chi_square_p(first, p1, n), _chi_square_p(second, p2, n)
    assert p_first > ALPHA and p_second > ALPHA, (p_first, p_second)
    assert 0 < stats.accepted < stats.drafted  # both the accept and the resample paths ran

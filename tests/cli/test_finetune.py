"""`corolla finetune`: bad data named by its line (no swarm), checkpoints that resume exactly (a stand-in
model), and end to end on a tiny llama swarm of 2 servers: train, resume, load with PEFT, stop with SIGINT."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from corolla.client.finetune import (
    OPTIMIZER_FILE,
    STATE_FILE,
    FinetuneConfig,
    FinetuneError,
    Trainer,
    batch_indices,
    encode,
    read_jsonl,
    read_state,
    split_held_out,
)
from tests.offline_tokenizer import CORPUS
from tests.processes import kill_tagged, tagged_env
from tests.tiny_models import TINY, save_tiny_model

CLI = [sys.executable, "-m", "corolla"]
MODEL_ID = "tiny-llama-finetune"


@functools.lru_cache(maxsize=1)
def small_tokenizer():
    """A byte-level BPE of 300 tokens (the tiny llama has 320), EOS included; built in well under a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def examples_jsonl(path: Path, n: int = 40) -> Path:
    """Prompt/completion pairs and plain texts, mixed."""
    lines = []
    for i in range(n):
        if i % 2:
            lines.append(json.dumps({"prompt": f"def add_{i}(a, b):\n", "completion": f"    return a + b + {i}"}))
        else:
            lines.append(json.dumps({"text": f"print('done', {i}, len(result))"}))
    return write_lines(path, lines)


# ---- bad data: a clear error naming the line -------------------------------------------------------
@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not valid JSON"),
    ('["text", "x"]', "line 2: expected a JSON object such as {\"text\": ...}, got an array"),
    ('"just a string"', "line 2: expected a JSON object such as {\"text\": ...}, got a string"),
    ('{"prompt": "a"}', "line 2: missing key 'completion'"),
    ('{"completion": "a"}', "line 2: missing key 'prompt'"),
    ('{"text": "a", "label": 1}', "line 2: unexpected key 'label'"),
    ('{"txt": "a"}', "line 2: missing key 'text'; unexpected key 'txt'"),
    ('{"prompt": "a", "completion": "b", "extra": "c"}', "line 2: unexpected key 'extra'"),
    ('{}', "line 2: missing key 'text'"),
    ('{"text": 3}', "line 2: 'text' must be a string, got a number"),
    ('{"text": ""}', "line 2: 'text' is empty"),
    ('{"prompt": "a", "completion": ""}', "line 2: 'completion' is empty"),
])
def test_bad_lines_are_named(tmp_path, line, message):
    path = write_lines(tmp_path / "data.jsonl", ['{"text": "fine"}', line, '{"text": "fine too"}'])
    with pytest.raises(FinetuneError) as e:
        read_jsonl(path)
    assert f"{path}, {message}" in str(e.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(FinetuneError, match="empty.jsonl is empty: expected one JSON object per line"):
        read_jsonl(path)


def test_missing_file(tmp_path):
    with pytest.raises(FinetuneError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_blank_lines_are_skipped_and_lines_keep_their_numbers(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"text": "a"}', "", '{"prompt": "p", "completion": "c"}'])
    raw = read_jsonl(path)
    assert [(r.line, r.text, r.prompt, r.completion) for r in raw] == [(1, "a", None, None), (3, None, "p", "c")]


def test_long_examples_are_refused_or_truncated(tmp_path):
    tok = small_tokenizer()
    long_text = "return a + b; " * 40
    path = write_lines(tmp_path / "d.jsonl", ['{"text": "a b c"}', json.dumps({"text": long_text})])
    raw = read_jsonl(path)
    n = len(tok(long_text)["input_ids"])
    with pytest.raises(FinetuneError) as e:
        encode(raw, tok, max_length=32, path=path)
    assert f"{path}, line 2: the example is {n} tokens, longer than the maximum of 32 (--max-length)" in str(e.value)
    assert "--truncate" in str(e.value)
    cut = encode(raw, tok, max_length=32, truncate=True, path=path)
    assert len(cut[1].ids) == 32 and cut[1].labels == cut[1].ids


def test_prompt_completion_labels_only_the_completion():
    tok = small_tokenizer()
    from corolla.client.finetune import RawExample

    [ex] = encode([RawExample(1, prompt="def add(a, b):\n", completion="    return a + b")], tok, 128)
    prompt_ids = tok("def add(a, b):\n")["input_ids"]
    completion_ids = tok("    return a + b", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert list(ex.ids) == prompt_ids + completion_ids
    assert list(ex.labels) == [-100] * len(prompt_ids) + completion_ids
    # the prompt alone fills the length: nothing left to learn
    with pytest.raises(FinetuneError, match="line 1: no token to learn from"):
        encode([RawExample(1, prompt="def add(a, b):\n", completion="x")], tok, len(prompt_ids), truncate=True)


def test_split_and_order_are_fixed_by_the_seed():
    from corolla.client.finetune import Example

    examples = [Example((i, i + 1), (i, i + 1)) for i in range(50)]
    train, held = split_held_out(examples, 0.1, seed=0)
    assert len(held) == 5 and len(train) == 45
    assert split_held_out(examples, 0.1, seed=0) == (train, held)
    assert split_held_out(examples, 0.1, seed=1)[1] != held
    assert split_held_out(examples[:1], 0.1, seed=0) == (examples[:1], [])
    # each epoch is a permutation; consecutive steps walk through it
    seen = [i for step in range(9) for i in batch_indices(step, 5, 45, seed=0)]
    assert sorted(seen) == list(range(45))


def test_the_cli_names_the_bad_line_before_connecting(tmp_path, capsys):
    from corolla.cli.main import main

    folder = save_tiny_model("llama", tmp_path / "tiny")
    small_tokenizer().save_pretrained(folder)
    data = write_lines(tmp_path / "d.jsonl", ['{"text": "a"}', '{"text": "b"}', "[1, 2]"])
    code = main(["finetune", str(folder), "--data", str(data), "--out", str(tmp_path / "out"),
                 "--initial-peers", "/ip4/127.0.0.1/tcp/1/p2p/QmNotAPeerAtAllJustATestValue"])
    assert code == 1
    assert f"error: {data}, line 3: expected a JSON object" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- checkpoints: a resumed run equals an uninterrupted one (a stand-in model, no swarm) --------------
class StandIn:
    """Called like DistributedModelForCausalLM; its loss depends on the batch and on every adapter tensor."""

    def __init__(self):
        import transformers

        spec = dict(TINY["llama"])
        self.config = getattr(transformers, spec.pop("cls"))(**spec)
        self.adapter = None

    def __call__(self, input_ids, attention_mask=None, labels=None):
        target = input_ids.float().mean() / 300
        loss = sum(((p - target) ** 2).mean() for p in self.adapter.parameters())
        return SimpleNamespace(loss=loss)


@pytest.mark.parametrize("method, schedule", [("lora", "constant"), ("deep-prompt", "cosine")])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, method, schedule):
    from corolla.client.finetune import Example

    examples = [Example(tuple(range(i, i + 5)), tuple(range(i, i + 5))) for i in range(30)]
    config = FinetuneConfig(method=method, rank=4, prompt_len=3, steps=12, batch_size=4, lr=1e-2, seed=3,
                            schedule=schedule, warmup_steps=3)

    whole = Trainer(StandIn(), examples, [], config, out_dir=tmp_path / "whole")
    whole.train()
    first = Trainer(StandIn(), examples, [], config, out_dir=tmp_path / "run")
    for _ in range(8):  # stopped after 8 steps
        first.train_step()
    first.save_checkpoint()
    state = read_state(tmp_path / "run")
    assert state["step"] == 8
    assert not [p for p in (tmp_path / "run").iterdir() if p.suffix in (".bin", ".pt", ".pkl")]  # never pickle
    resumed = Trainer(StandIn(), examples, [], config, out_dir=tmp_path / "run")
    resumed.load_checkpoint()
    assert resumed.step == 8
    resumed.train()
    for (name, a), (_, b) in zip(whole.adapter.named_parameters(), resumed.adapter.named_parameters()):
        assert torch.equal(a, b), name
    sa, sb = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for key in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][key]), torch.as_tensor(sb[k][key])), (k, key)


def test_learning_rate_schedules():
    constant = FinetuneConfig(lr=1.0, steps=10)
    assert [constant.lr_at(s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    warm = FinetuneConfig(lr=1.0, steps=10, warmup_steps=4)
    assert [warm.lr_at(s) for s in (0, 1, 3, 9)] == [0.25, 0.5, 1.0, 1.0]
    linear = FinetuneConfig(lr=1.0, steps=10, schedule="linear")
    assert [linear.lr_at(s) for s in (0, 5)] == [1.0, 0.5]
    cosine = FinetuneConfig(lr=2.0, steps=10, schedule="cosine")
    assert cosine.lr_at(0) == 2.0 and cosine.lr_at(5) == pytest.approx(1.0) and 0 < cosine.lr_at(9) < 0.1
    with pytest.raises(FinetuneError, match="schedule must be one of constant, linear, cosine"):
        FinetuneConfig(schedule="step")


def test_a_damaged_checkpoint_is_refused(tmp_path):
    from corolla.client.finetune import Example

    examples = [Example((1, 2, 3), (1, 2, 3))] * 4
    trainer = Trainer(StandIn(), examples, [], FinetuneConfig(steps=2), out_dir=tmp_path)
    trainer.train()
    trainer.save_checkpoint()
    (tmp_path / OPTIMIZER_FILE).write_bytes((tmp_path / OPTIMIZER_FILE).read_bytes()[:-1] + b"\0")
    with pytest.raises(FinetuneError, match="optimizer.safetensors does not match trainer_state.json"):
        read_state(tmp_path)


# ---- end to end on a tiny swarm -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_swarm(tmp_path_factory):
    """A tiny llama (with a small tokenizer) on 2 servers, blocks 0:3 and 3:6."""
    from corolla.swarm.local import LocalSwarm

    folder = save_tiny_model("llama", tmp_path_factory.mktemp("tiny-llama"))
    small_tokenizer().save_pretrained(folder)
    swarm = LocalSwarm(str(folder), 6, MODEL_ID, log_dir=tmp_path_factory.mktemp("logs-finetune"),
                       server_args=["--torch-threads", "1"])
    try:
        procs = [swarm.add_server(span) for span in ((0, 3), (3, 6))]
        swarm.wait_ready(procs, timeout_s=600)
        yield SimpleNamespace(folder=folder, peers=swarm.initial_peers, swarm=swarm)
    finally:
        swarm.stop()


def finetune_args(sut, data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", str(sut.folder), "--data", str(data), "--out", str(out), "--model-id", MODEL_ID,
            "--initial-peers", *sut.peers, *extra]


@pytest.mark.slow
def test_finetune_resume_and_load_with_peft(tiny_swarm, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from corolla.cli.main import build_parser, main
    from corolla.client.model import DistributedModelForCausalLM

    data, out = examples_jsonl(tmp_path / "data.jsonl"), tmp_path / "adapter"
    common = ["--method", "lora", "--rank", "4", "--batch-size", "4", "--lr", "1e-2", "--checkpoint-every", "4"]
    assert main(finetune_args(tiny_swarm, data, out, *common, "--steps", "8")) == 0
    text = capsys.readouterr().out
    assert "data: 40 examples" in text and "(36 to train on, 4 held out)" in text
    assert "held-out loss before training: " in text and "held-out loss after 8 steps: " in text
    state = read_state(out)
    assert state["step"] == 8 and len(state["train_loss"]) == 8
    assert [e["step"] for e in state["held_out_loss"]] == [0, 8]
    first_losses = [e["loss"] for e in state["train_loss"]]

    # a new run into the same folder is refused; a resumed one may not change the adapter
    assert main(finetune_args(tiny_swarm, data, out, "--steps", "12")) == 1
    assert "already holds a checkpoint (step 8): pass --resume" in capsys.readouterr().err
    assert main(finetune_args(tiny_swarm, data, out, "--resume", "--rank", "8", "--steps", "12")) == 1
    assert "--rank 8 differs from the checkpoint's (4)" in capsys.readouterr().err

    assert main(finetune_args(tiny_swarm, data, out, "--resume", "--steps", "12")) == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and "at step 8 of 12" in text and "held-out loss after 12 steps" in text
    state = read_state(out)
    assert state["step"] == 12 and [e["loss"] for e in state["train_loss"]][:8] == first_losses
    assert state["config"]["rank"] == 4 and state["config"]["lr"] == 1e-2
    assert state["held_out_loss"][-1]["loss"] < state["held_out_loss"][0]["loss"]  # it learnt something

    ids = torch.tensor([small_tokenizer()("def add_5(a, b):\n    return a + b")["input_ids"]])
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_swarm.folder), out).eval()
    with torch.no_grad():
        expected = reference(ids).logits
    with DistributedModelForCausalLM.from_pretrained(tiny_swarm.folder, initial_peers=tiny_swarm.peers,
                                                     model_id=MODEL_ID, adapter=out) as model:
        with torch.no_grad():
            got = model(ids).logits
        greedy = model.generate(ids, max_new_tokens=4, eos_token_id=[])
    assert (got - expected).abs().max().item() <= 1e-3
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_swarm.folder).eval()(ids).logits
    assert (base - expected).abs().max().item() > 1e-2  # the adapter changed the model
    local = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
    assert greedy.tolist() == local.tolist()

    # `corolla generate --adapter DIR` uses it (the flag lives in cli/generate.py)
    try:
        build_parser().parse_args(["generate", "m", "p", "--adapter", "x"])
    except SystemExit:
        pytest.skip("`corolla generate` has no --adapter flag yet")
    new = local[0, ids.shape[1]:].tolist()
    eos_ids = {int(e) for e in ([reference.config.eos_token_id] if isinstance(reference.config.eos_token_id, int)
                                else reference.config.eos_token_id or [])}
    new = new[: next((i for i, t in enumerate(new) if t in eos_ids), len(new))]
    assert main(["generate", str(tiny_swarm.folder), "def add_5(a, b):\n    return a + b", "--adapter", str(out),
                 "--max-new-tokens", "4", "--model-id", MODEL_ID, "--initial-peers", *tiny_swarm.peers]) == 0
    assert capsys.readouterr().out == small_tokenizer().decode(new) + "\n"


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_in_time(tiny_swarm, tmp_path):
    data, out = examples_jsonl(tmp_path / "data.jsonl"), tmp_path / "adapter"
    env, tag = tagged_env()
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout, "wb") as so, open(stderr, "wb") as se:
        proc = subprocess.Popen([*CLI, *finetune_args(tiny_swarm, data, out, "--steps", "1000000",
                                                      "--checkpoint-every", "2", "--eval-fraction", "0")],
                                stdout=so, stderr=se, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not ((out / STATE_FILE).exists() and read_state(out)["step"] >= 2):
            assert proc.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s:\n" + stderr.read_text()[-3000:]
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        code = proc.wait(30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_tagged(tag)
    assert code == 130, stderr.read_text()[-3000:]
    assert elapsed < 10, f"exited {elapsed:.1f} s after SIGINT"
    text = stdout.read_text()
    assert "stopped at step " in text, text
    stopped_at = int(text.split("stopped at step ", 1)[1].split(":", 1)[0])
    state = read_state(out)  # complete: every file matches its recorded hash
    assert state["step"] == stopped_at >= 2 and len(state["train_loss"]) == stopped_at
    assert f"--adapter {out}" not in text  # the run did not finish

"""Fine-tuning a client-owned adapter through the swarm: data, batches, the training loop, checkpoints.

Data are JSON lines, one example a line: ``{"text": ...}`` (loss on every token) or
``{"prompt": ..., "completion": ...}`` (loss on the completion only; the completion ends with the
tokenizer's EOS so the model learns to stop). :func:`read_jsonl` and :func:`encode` check every
line and name the first bad one. Tokenized examples (:class:`Example`) can also be built directly
(the benchmark cuts source files into chunks).

:class:`Trainer` runs AdamW (torch.optim) on a :class:`~corolla.client.training.SwarmAdapter` of a
:class:`~corolla.client.model.DistributedModelForCausalLM`: step ``s`` takes the examples
``s*B .. s*B+B-1`` of a sequence of epochs, each a permutation of the training examples drawn from
``(seed, epoch)``, so a run resumed from a checkpoint sees the batches an uninterrupted run would.
A checkpoint is a folder that is also the adapter: the adapter files (``save_pretrained``: a PEFT
LoRA folder and/or corolla's prompt files), ``optimizer.safetensors`` (AdamW's tensors) and
``trainer_state.json`` (step, configuration, AdamW's scalars, held-out losses, the other files'
SHA-256), written last: nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from corolla.cache import atomic_write
from corolla.client.training import METHODS, SwarmAdapter
from corolla.errors import CorollaError

log = logging.getLogger(__name__)

STATE_FILE, OPTIMIZER_FILE = "trainer_state.json", "optimizer.safetensors"
STATE_FORMAT = 1
KEYS = ({"text"}, {"prompt", "completion"})
SCHEDULES = ("constant", "linear", "cosine")


class FinetuneError(CorollaError):
    """Bad training data, a bad configuration or an unusable checkpoint (the message says which and where)."""


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """What a fine-tuning run does. The adapter: ``method`` (one of METHODS), LoRA ``rank``, ``alpha``
    (default 2 x rank) and ``targets``, prompt length ``prompt_len``. Data: examples of at most
    ``max_length`` tokens (longer ones are an error unless ``truncate``), ``eval_fraction`` of them held
    out (a split fixed by ``seed``), at most ``max_eval_examples`` of those evaluated."""

    method: str = "lora"
    rank: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] = ("q", "v")
    prompt_len: int = 16
    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    schedule: str = "constant"  # the learning rate over the steps: constant, linear or cosine (down to 0)
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0: no clipping
    max_length: int = 512
    truncate: bool = False
    eval_fraction: float = 0.1
    max_eval_examples: int = 256
    checkpoint_every: int = 50  # steps; 0: only at the end (and on a stop)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        for name in ("rank", "prompt_len", "batch_size", "max_length", "max_eval_examples"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        for name in ("steps", "checkpoint_every", "weight_decay", "max_grad_norm", "warmup_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if not self.lr > 0:
            problems.append("lr must be positive")
        if not 0 <= self.eval_fraction < 1:
            problems.append("eval_fraction must be in [0, 1)")
        if self.method == "lora" and not self.targets:
            problems.append("LoRA needs at least one target")
        if problems:
            raise FinetuneError("; ".join(problems))

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): a function of the step alone, so a resumed run
        continues the schedule (against its own ``steps``)."""
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        progress = min(step / max(self.steps, 1), 1.0)
        if self.schedule == "linear":
            factor *= 1.0 - progress
        elif self.schedule == "cosine":
            factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * factor

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---- data ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RawExample:
    line: int  # 1-based line of the file
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None


@dataclasses.dataclass(frozen=True)
class Example:
    """Token ids and their labels (-100: no loss), and where it came from (for messages)."""

    ids: tuple[int, ...]
    labels: tuple[int, ...]
    source: str = ""

    @property
    def loss_tokens(self) -> int:
        """Labels that count (a causal LM never predicts position 0)."""
        return sum(label != -100 for label in self.labels[1:])


def read_jsonl(path: str | Path) -> list[RawExample]:
    """Every example of a JSONL file; a :class:`FinetuneError` naming the file and line of the first bad one.
    Blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FinetuneError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise FinetuneError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise FinetuneError(f"{path}: cannot read it ({e.strerror})") from None
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            examples.append(parse_line(line, number, path))
    if not examples:
        raise FinetuneError(f'{path} is empty: expected one JSON object per line, {{"text": ...}} or '
                            f'{{"prompt": ..., "completion": ...}}')
    return examples


def parse_line(line: str, number: int, path: str | Path = "data") -> RawExample:
    where = f"{path}, line {number}"
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise FinetuneError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise FinetuneError(f'{where}: expected a JSON object such as {{"text": ...}}, got {_json_kind(value)}')
    keys = set(value)
    if keys not in KEYS:
        expected = "text" if "text" in keys or not keys & {"prompt", "completion"} else "prompt and completion"
        wanted = {"text"} if expected == "text" else {"prompt", "completion"}
        missing, extra = sorted(wanted - keys), sorted(keys - wanted)
        parts = []
        if missing:
            parts.append("missing key " + ", ".join(repr(k) for k in missing))
        if extra:
            parts.append("unexpected key " + ", ".join(repr(k) for k in extra))
        raise FinetuneError(f'{where}: {"; ".join(parts)} (an example is {{"text": ...}} or '
                            f'{{"prompt": ..., "completion": ...}})')
    for key, item in value.items():
        if not isinstance(item, str):
            raise FinetuneError(f"{where}: {key!r} must be a string, got {_json_kind(item)}")
    if "text" in value:
        if not value["text"]:
            raise FinetuneError(f"{where}: 'text' is empty")
        return RawExample(number, text=value["text"])
    if not value["completion"]:
        raise FinetuneError(f"{where}: 'completion' is empty: there is nothing to learn")
    return RawExample(number, prompt=value["prompt"], completion=value["completion"])


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def encode(raw: Iterable[RawExample], tokenizer: Any, max_length: int, truncate: bool = False,
           path: str | Path = "data") -> list[Example]:
    """Tokenize: ``text`` as is (loss on every token); ``prompt`` then ``completion`` + EOS (loss on the
    completion's tokens only). An example longer than ``max_length`` tokens is an error naming its line,
    or is cut to ``max_length`` with ``truncate``."""
    eos = tokenizer.eos_token_id
    out = []
    for r in raw:
        where = f"{path}, line {r.line}"
        if r.text is not None:
            ids = list(tokenizer(r.text)["input_ids"])
            labels = list(ids)
        else:
            head = list(tokenizer(r.prompt)["input_ids"]) if r.prompt else []
            tail = list(tokenizer(r.completion, add_special_tokens=False)["input_ids"])
            if eos is not None:
                tail.append(eos)
            ids, labels = head + tail, [-100] * len(head) + tail
        if len(ids) > max_length:
            if not truncate:
                raise FinetuneError(f"{where}: the example is {len(ids)} tokens, longer than the maximum of "
                                    f"{max_length} (--max-length); raise it, shorten the example, or pass "
                                    f"--truncate to cut long examples")
            ids, labels = ids[:max_length], labels[:max_length]
        example = Example(tuple(ids), tuple(labels), where)
        if example.loss_tokens == 0:
            why = "the prompt alone fills the maximum length" if r.text is None and truncate else "too short"
            raise FinetuneError(f"{where}: no token to learn from ({why}: a causal LM learns from the 2nd token on)")
        out.append(example)
    return out


def split_held_out(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): ``fraction`` of the examples (at least one when there are two or more), drawn
    with ``seed``; the order within each part follows the file."""
    n = len(examples)
    k = min(n - 1, max(1, round(n * fraction))) if fraction > 0 and n >= 2 else 0
    held = set(random.Random(f"split:{seed}").sample(range(n), k))
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The training examples of ``step`` (0-based): positions ``step*B ..`` of the concatenated epochs,
    each epoch a permutation of range(n) drawn from (seed, epoch). Depends on nothing but its arguments."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        out.append(_permutation(seed, epoch, n)[offset])
    return out


_PERMUTATIONS: dict[tuple[int, int, int], list[int]] = {}


def _permutation(seed: int, epoch: int, n: int) -> list[int]:
    key = (seed, epoch, n)
    if key not in _PERMUTATIONS:
        if len(_PERMUTATIONS) > 4:
            _PERMUTATIONS.clear()
        order = list(range(n))
        random.Random(f"epoch:{seed}:{epoch}").shuffle(order)
        _PERMUTATIONS[key] = order
    return _PERMUTATIONS[key]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` [B, T] (pads: label -100)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.ids)] = torch.tensor(e.labels)
        mask[row, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_id_of(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- the loop ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepResult:
    step: int  # steps done after this one
    loss: float
    tokens: int  # tokens sent through the model (padding excluded)
    seconds: float


class Stopped(Exception):
    """The run was asked to stop (:meth:`Trainer.request_stop`) before it finished."""


class Trainer:
    """AdamW on ``model.adapter`` (created from ``config`` when the model has none) over ``train``;
    ``held_out`` for :meth:`evaluate`. ``model`` is a :class:`DistributedModelForCausalLM` or anything
    called like one: ``model(input_ids, attention_mask=, labels=).loss``, with ``.config``.

    Thread-safety: :meth:`request_stop` and :meth:`save_checkpoint` may be called from another thread
    while :meth:`train` runs; the adapter and optimizer only change under ``lock``, so a checkpoint
    saved from elsewhere holds the last completed step."""

    def __init__(self, model: Any, train: Sequence[Example], held_out: Sequence[Example], config: FinetuneConfig,
                 *, out_dir: str | Path | None = None, base_model: str | None = None, pad_id: int = 0,
                 data_info: dict[str, Any] | None = None):
        if not train:
            raise FinetuneError("no training examples")
        self.model, self.train_set, self.held_out = model, list(train), list(held_out)
        self.config, self.base_model, self.pad_id = config, base_model, pad_id
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.data_info = data_info or {}
        if getattr(model, "adapter", None) is None:
            embeddings = getattr(getattr(getattr(model, "head", None), "embed_tokens", None), "weight", None)
            model.adapter = SwarmAdapter.create(model.config, config.method, prompt_len=config.prompt_len,
                                                rank=config.rank, alpha=config.alpha, targets=config.targets,
                                                seed=config.seed, embeddings=embeddings)
        self.adapter: SwarmAdapter = model.adapter
        self.adapter.requires_grad_(True)
        self.names = [name for name, _ in self.adapter.named_parameters()]
        self.optimizer = torch.optim.AdamW([p for _, p in self.adapter.named_parameters()], lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.step = 0
        self.tokens_seen = 0
        self.losses: list[tuple[int, float]] = []  # (step, training loss)
        self.evals: list[tuple[int, float]] = []  # (step, held-out loss)
        self.lock = threading.RLock()
        self._stop = threading.Event()

    # ---- control ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask :meth:`train` / :meth:`evaluate` to stop at the next chance (no step is applied after it)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Stopped()

    # ---- steps -----------------------------------------------------------------------------------
    def batch(self, step: int) -> dict[str, torch.Tensor]:
        indices = batch_indices(step, self.config.batch_size, len(self.train_set), self.config.seed)
        return collate([self.train_set[i] for i in indices], self.pad_id)

    def train_step(self) -> StepResult:
        """One step: forward and backward through the swarm, then (under ``lock``) the update."""
        self._check_stop()
        t0 = time.perf_counter()
        batch = self.batch(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        value = loss.detach().item()
        if not math.isfinite(value):
            raise FinetuneError(f"the loss of step {self.step + 1} is {value}: lower the learning rate")
        self._check_stop()
        loss.backward()
        with self.lock:
            self._check_stop()  # a stop asked meanwhile: this step is not applied
            if self.config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), self.config.max_grad_norm)
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.lr_at(self.step)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            tokens = int(batch["attention_mask"].sum())
            self.step += 1
            self.tokens_seen += tokens
            self.losses.append((self.step, value))
        return StepResult(self.step, value, tokens, time.perf_counter() - t0)

    def evaluate(self, on_batch: Callable[[int, int], Any] | None = None) -> float:
        """Mean loss per label token over the held-out examples (the first ``max_eval_examples``);
        NaN without any. ``on_batch(done, total)`` after each batch."""
        examples = self.held_out[: self.config.max_eval_examples]
        if not examples:
            return float("nan")
        total, count = 0.0, 0
        size = self.config.batch_size
        batches = [examples[i : i + size] for i in range(0, len(examples), size)]
        with torch.no_grad():
            for done, part in enumerate(batches, 1):
                self._check_stop()
                batch = collate(part, self.pad_id)
                loss = self.model(batch["input_ids"], attention_mask=batch["attention_mask"],
                                  labels=batch["labels"]).loss
                n = int((batch["labels"][:, 1:] != -100).sum())
                total, count = total + float(loss) * n, count + n
                if on_batch is not None:
                    on_batch(done, len(batches))
        return total / count

    def record_eval(self, loss: float) -> None:
        with self.lock:
            self.evals = [e for e in self.evals if e[0] != self.step] + [(self.step, loss)]

    def train(self, on_step: Callable[[StepResult], Any] | None = None) -> None:
        """Steps until ``config.steps``, a checkpoint every ``checkpoint_every`` steps (when there is an
        ``out_dir``). Raises :class:`Stopped` when a stop was requested."""
        while self.step < self.config.steps:
            result = self.train_step()
            if on_step is not None:
                on_step(result)
            every = self.config.checkpoint_every
            if self.out_dir is not None and every and self.step % every == 0 and self.step < self.config.steps:
                self.save_checkpoint()

    # ---- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, folder: str | Path | None = None) -> Path:
        """The adapter (``save_pretrained``), AdamW's state and ``trainer_state.json`` of the last completed
        step into ``folder`` (default ``out_dir``)."""
        from safetensors.torch import save

        folder = Path(folder or self.out_dir)
        with self.lock:
            folder.mkdir(parents=True, exist_ok=True)
            self.adapter.save_pretrained(folder, self.model.config, base_model=self.base_model)
            tensors, groups, scalars = _optimizer_parts(self.optimizer)
            atomic_write(folder / OPTIMIZER_FILE, save(tensors))
            files = {p.name: file_sha256(p) for p in sorted(folder.iterdir())
                     if p.is_file() and not p.name.startswith(".") and p.name != STATE_FILE}
            state = {
                "format": STATE_FORMAT, "step": self.step, "tokens_seen": self.tokens_seen,
                "config": self.config.to_json(), "base_model": self.base_model, "data": self.data_info,
                "held_out_loss": [{"step": s, "loss": loss} for s, loss in self.evals],
                "train_loss": [{"step": s, "loss": loss} for s, loss in self.losses],
                "optimizer": {"param_names": self.names, "param_groups": groups, "state": scalars},
                "files": files, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write(folder / STATE_FILE, (json.dumps(state, indent=1) + "\n").encode())
        return folder

    def load_checkpoint(self, folder: str | Path | None = None) -> dict[str, Any]:
        """Continue from what :meth:`save_checkpoint` wrote: the adapter's tensors, AdamW's state, the step
        and the history. The learning rate and weight decay stay this run's."""
        from safetensors.torch import load_file

        folder = Path(folder or self.out_dir)
        state = read_state(folder)
        names = state["optimizer"]["param_names"]
        if names != self.names:
            raise FinetuneError(f"{folder}: the checkpoint's adapter has other tensors than this run's "
                                f"(method, rank, targets or prompt length differ)")
        saved = SwarmAdapter.from_pretrained(folder, self.model.config)
        with self.lock, torch.no_grad():
            mine = dict(self.adapter.named_parameters())
            for name, tensor in saved.named_parameters():
                if name not in mine or mine[name].shape != tensor.shape:
                    raise FinetuneError(f"{folder}: the checkpoint's {name} does not fit this adapter")
                mine[name].copy_(tensor)
            self.adapter.lora_alpha = saved.lora_alpha
            tensors = load_file(folder / OPTIMIZER_FILE)
            self.optimizer.load_state_dict(_optimizer_state(tensors, state["optimizer"], len(names)))
            for group in self.optimizer.param_groups:
                group["lr"], group["weight_decay"] = self.config.lr, self.config.weight_decay
            self.step = int(state["step"])
            self.tokens_seen = int(state.get("tokens_seen", 0))
            self.losses = [(int(e["step"]), float(e["loss"])) for e in state.get("train_loss", [])]
            self.evals = [(int(e["step"]), float(e["loss"])) for e in state.get("held_out_loss", [])]
        return state


def read_state(folder: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint folder, with its files checked against their recorded SHA-256."""
    folder = Path(folder)
    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise FinetuneError(f"{folder} holds no checkpoint ({STATE_FILE} is missing)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise FinetuneError(f"{path} is unreadable: {e}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise FinetuneError(f"{path}: not a checkpoint this version of corolla reads (format "
                            f"{state.get('format') if isinstance(state, dict) else '?'}, expected {STATE_FORMAT})")
    for name, digest in state.get("files", {}).items():
        file = folder / name
        if not file.exists() or file_sha256(file) != digest:
            raise FinetuneError(f"{folder}: {name} does not match {STATE_FILE} (was the checkpoint interrupted "
                                f"while it was saved, or a file changed?); start again without --resume")
    return state


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    """AdamW's state dict as (tensors for safetensors, param groups as JSON, other per-parameter values as JSON)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in sd["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups, scalars


def _optimizer_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any], num_params: int) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, _, key = name.partition(".")
        state.setdefault(int(index), {})[key] = tensor
    for index, values in saved.get("state", {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for g in saved["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    if sorted(p for g in groups for p in g["params"]) != list(range(num_params)):
        raise FinetuneError("the checkpoint's optimizer state does not fit this adapter")
    return {"state": state, "param_groups": groups}


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")

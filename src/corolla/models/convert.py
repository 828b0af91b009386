"""One-time conversion of a GGUF file into a Hugging Face folder (float32 safetensors).

De-quantising a GGUF takes tens of seconds, so it is done once; afterwards every process loads
the plain folder (``config.json``, ``model.safetensors``, tokenizer files with the chat template,
``generation_config.json``) with the ordinary ``from_pretrained`` and can read single blocks of it.

How: the config comes from the GGUF metadata (``AutoConfig.from_pretrained(folder, gguf_file=…)``),
a model is built from it on the meta device, the de-quantised tensors from transformers' GGUF
reader (the same function ``from_pretrained(…, gguf_file=…)`` uses for these architectures, which
maps them to the standard HF names and undoes llama.cpp's q/k permutation) are assigned into it,
and ``save_pretrained`` writes it. Going through ``from_pretrained(…, gguf_file=…)`` itself would
need the ``accelerate`` package and gives a model that refuses ``save_pretrained``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corolla.cache import atomic_write_text, file_lock, public_mode, remove_stale
from corolla.errors import ModelError
from corolla.models.progress import progress_bar

if TYPE_CHECKING:
    import torch
    from rich.progress import Progress, TaskID

logger = logging.getLogger(__name__)

MARKER_NAME = ".corolla-converted.json"
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


def is_converted(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished conversion (the marker is written last)."""
    return (out_dir / MARKER_NAME).is_file()


def read_conversion_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((out_dir / MARKER_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def ensure_converted(gguf_path: Path, out_dir: Path, progress: bool = True) -> Path:
    """Return ``out_dir``, converting ``gguf_path`` into it first unless that was done before.

    The folder is written under a temporary name beside ``out_dir`` and renamed when complete,
    so a crash never leaves a half-converted folder that looks finished.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if is_converted(out_dir):
        return out_dir
    if not gguf_path.is_file():
        raise ModelError(f"cannot convert {gguf_path}: no such file")
    with file_lock(out_dir.parent):
        if is_converted(out_dir):  # another process finished it while we waited
            return out_dir
        remove_stale(out_dir.parent, f".{out_dir.name}-*")
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
        try:
            convert_gguf(gguf_path, tmp, progress)
            write_conversion_marker(tmp, gguf_path)
            for path in tmp.iterdir():
                public_mode(path)
            public_mode(tmp, directory=True)
            if out_dir.exists():  # a stale folder without marker
                shutil.rmtree(out_dir)
            os.rename(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s into %s", gguf_path, out_dir)
    return out_dir


def write_conversion_marker(folder: Path, gguf_path: Path) -> None:
    import transformers

    info = {
        "source": str(gguf_path.resolve()),
        "source_bytes": gguf_path.stat().st_size,
        "transformers": transformers.__version__,
        "dtype": "float32",
    }
    atomic_write_text(folder / MARKER_NAME, json.dumps(info, indent=2) + "\n")


def convert_gguf(gguf_path: Path, out_dir: Path, progress: bool = True) -> None:
    """Write the HF folder for ``gguf_path`` into ``out_dir`` (which exists and is empty)."""
    with progress_bar(progress, unit="steps") as bar, quiet_transformers():
        with step(bar, f"reading config of {gguf_path.name}"):
            config = load_gguf_config(gguf_path)
        task = bar.add_task(f"de-quantising {gguf_path.name} to float32", total=None)
        with tensor_progress(bar, task):
            model = load_gguf_model(gguf_path, config)
        with step(bar, "writing model.safetensors"):
            model.save_pretrained(out_dir)
            del model
        with step(bar, "writing tokenizer"):
            save_tokenizer(gguf_path, out_dir)


@contextlib.contextmanager
def step(bar: Progress, description: str) -> Iterator[None]:
    """One spinner line per conversion stage, ticked off when the stage ends."""
    task = bar.add_task(description, total=None)
    yield
    bar.update(task, total=1, completed=1)


@contextlib.contextmanager
def tensor_progress(bar: Progress, task: TaskID) -> Iterator[None]:
    """Route the tensor loop of transformers' GGUF reader (a bare tqdm) to our rich task."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    def track(items: Sequence[Any], **_: Any) -> Iterator[Any]:
        bar.update(task, total=len(items))
        for item in items:
            yield item
            bar.advance(task)

    original = gguf_utils.tqdm
    gguf_utils.tqdm = track
    try:
        yield
    finally:
        gguf_utils.tqdm = original


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' own tqdm bars and chatty warnings while we show ours."""
    from transformers.utils import logging as hf_logging

    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


def load_gguf_config(gguf_path: Path) -> Any:
    """The transformers config described by the GGUF metadata, as float32 and unquantised."""
    import torch
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ModelError(f"cannot read the GGUF metadata of {gguf_path}: {e}") from e
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    return config


def load_gguf_model(gguf_path: Path, config: Any) -> torch.nn.Module:
    """A plain float32 causal LM holding the de-quantised GGUF weights under standard HF names."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parsed = load_gguf_checkpoint(
        str(gguf_path), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
    )
    result = model.load_state_dict(parsed["tensors"], strict=False, assign=True)
    if result.unexpected_keys:
        unexpected = result.unexpected_keys[:5]
        raise ModelError(f"{gguf_path.name}: tensors with no place in the model: {unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    still_empty = [name for name, p in model.named_parameters() if p.is_meta]
    if still_empty:
        raise ModelError(f"{gguf_path.name}: the GGUF has no weights for {still_empty[:5]}")
    model.generation_config = GenerationConfig.from_model_config(config)
    model.eval()
    return model


def gguf_chat_template(gguf_path: Path) -> str | None:
    """The chat template stored in the GGUF metadata, if any."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get(CHAT_TEMPLATE_KEY)
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) and value else None


def save_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    """Save the GGUF's tokenizer and make sure its chat template survives the round trip."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    template = tokenizer.chat_template
    if not template:  # reading the metadata again costs seconds: only when transformers lost it
        template = gguf_chat_template(gguf_path)
        if template:
            logger.debug("transformers dropped the chat template of %s; restoring it", gguf_path.name)
            tokenizer.chat_template = template
    tokenizer.save_pretrained(out_dir)
    if template and AutoTokenizer.from_pretrained(out_dir).chat_template != template:
        logger.debug("the saved tokenizer of %s lost its chat template; writing it in", gguf_path.name)
        patch_tokenizer_config(out_dir, template)


def patch_tokenizer_config(out_dir: Path, template: str) -> None:
    """Last resort: write the chat template into tokenizer_config.json ourselves."""
    path = out_dir / "tokenizer_config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["chat_template"] = template
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)

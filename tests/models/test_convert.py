"""Slow tests: the real SmolLM2-135M GGUF, converted, must behave exactly like the GGUF itself."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from corolla.models.fetch import gguf_path

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Write a Python function that adds two numbers."}]


def load_from_gguf(monkeypatch: pytest.MonkeyPatch, gguf: Path) -> Any:
    """The reference: transformers' own GGUF loading, de-quantised to float32."""
    import torch
    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec("accelerate") is None:
        # from_pretrained(gguf_file=...) refuses to run without accelerate, although loading a
        # de-quantised GGUF on CPU does not use it; lift only that guard, for this test only.
        import transformers.modeling_utils

        monkeypatch.setattr(transformers.modeling_utils, "is_accelerate_available", lambda: True)
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()


def chat_ids(tokenizer: Any) -> Any:
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt")
    return ids if not hasattr(ids, "keys") else ids["input_ids"]


def test_converted_folder_matches_gguf_logits(smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = chat_ids(tokenizer)
    assert ids.shape[1] > 10
    converted = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    assert converted.dtype == torch.float32
    reference = load_from_gguf(monkeypatch, gguf_path("smollm2-135m"))
    with torch.no_grad():
        got, want = converted(ids).logits, reference(ids).logits
    assert got.shape == want.shape == (1, ids.shape[1], 49152)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()


def test_converted_folder_layout(smollm2_dir: Path) -> None:
    from safetensors import safe_open

    files = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"} <= files
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    assert config["vocab_size"] == 49152 and "quantization_config" not in config
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.norm.weight").dtype.is_floating_point
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.29.mlp.down_proj.weight"} <= keys
    assert not any(k.startswith("blk.") or k.endswith(".scales") for k in keys)


def test_tokenizer_keeps_chat_template_and_matches_gguf(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    gguf = gguf_path("smollm2-135m")
    saved = AutoTokenizer.from_pretrained(smollm2_dir)
    original = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert saved.chat_template and "<|im_start|>" in saved.chat_template
    text = "def add(a, b):\n    return a + b  # ünïcode ✓"
    assert saved(text)["input_ids"] == original(text)["input_ids"]
    assert chat_ids(saved).tolist() == chat_ids(original).tolist()
    assert saved.eos_token == "<|im_end|>"


def test_local_gguf_file_is_converted_once(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from corolla.models.resolve import list_cached, resolve_model

    gguf = gguf_path("smollm2-135m")  # cached by the smollm2_dir fixture
    monkeypatch.setenv("COROLLA_HOME", str(tmp_path))
    ref = resolve_model(str(gguf), progress=False)
    assert ref.model_id == "smollm2-135m"
    assert ref.path.parent.name.startswith("gguf-") and ref.path.parent.parent == tmp_path / "models"
    stamp = (ref.path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(gguf), progress=False) == ref  # second call: no re-conversion
    assert (ref.path / "model.safetensors").stat().st_mtime_ns == stamp
    (entry,) = list_cached()
    assert entry.converted and entry.verified is None and entry.gguf_bytes == gguf.stat().st_size
    a, b = load_file(str(ref.path / "model.safetensors")), load_file(str(smollm2_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

"""Model manifests: a hash per block and of the config, cached; the swarm key name@digest; packaged digests."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from corolla.models.manifest import compute_manifest, manifest_of
from tests.tiny_models import save_tiny_model


def test_the_same_weights_hash_the_same_and_one_changed_block_shows(tmp_path, monkeypatch):
    monkeypatch.setenv("COROLLA_HOME", str(tmp_path / "home"))
    a = save_tiny_model("llama", tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    first, copy = compute_manifest(a), compute_manifest(b)
    assert first == copy and len(first.blocks) == 6
    tensors = load_file(b / "model.safetensors")
    name = next(n for n in tensors if ".layers.2." in n and n.endswith("weight"))
    tensors[name] = tensors[name] * 1.01  # a perturbed copy: one block differs
    save_file(tensors, b / "model.safetensors", metadata={"format": "pt"})
    perturbed = compute_manifest(b)
    assert perturbed.digest != first.digest and perturbed.config == first.config
    assert [x != y for x, y in zip(first.blocks, perturbed.blocks)] == [i == 2 for i in range(6)]
    config = json.loads((b / "config.json").read_text())
    config["transformers_version"] = "0.0.0"  # not part of what the model computes
    (b / "config.json").write_text(json.dumps(config))
    assert compute_manifest(b).config == first.config
    config["rms_norm_eps"] = 0.5
    (b / "config.json").write_text(json.dumps(config))
    assert compute_manifest(b).config != first.config


def test_manifests_are_cached_per_version_of_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("COROLLA_HOME", str(tmp_path / "home"))
    folder = save_tiny_model("llama", tmp_path / "m")
    first = manifest_of(folder)
    calls = []
    import corolla.models.manifest as manifest_module

    real = manifest_module.compute_manifest
    monkeypatch.setattr(manifest_module, "compute_manifest", lambda f: calls.append(f) or real(f))
    assert manifest_of(folder) == first and calls == []  # from the cache
    tensors = load_file(folder / "model.safetensors")
    name = next(n for n in tensors if ".layers.0." in n)  # (embeddings and head are the client's own)
    tensors[name] = tensors[name] + torch.ones_like(tensors[name])
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert manifest_of(folder) != first and len(calls) == 1  # the file changed: computed again


def test_the_swarm_key_is_the_name_and_digest_and_a_claimed_digest_must_match(tmp_path, monkeypatch):
    from corolla.errors import ModelError
    from corolla.models.manifest import block_hashes, split_key, swarm_key

    monkeypatch.setenv("COROLLA_HOME", str(tmp_path / "home"))
    manifest = manifest_of(save_tiny_model("llama", tmp_path / "m"))
    key = swarm_key("tiny", manifest)
    assert key == f"tiny@{manifest.digest[:16]}" and split_key(key) == ("tiny", manifest.digest[:16])
    assert split_key("tiny") == ("tiny", None)
    assert swarm_key(key, manifest) == key  # a key naming this digest: the same key
    with pytest.raises(ModelError, match="names digest 0123456789abcdef"):
        swarm_key("tiny@0123456789abcdef", manifest)
    with pytest.raises(ModelError, match="no name"):
        swarm_key(f"@{manifest.short}", manifest)
    assert block_hashes(manifest, 2, 4) == tuple(h[:16] for h in manifest.blocks[2:4])


@pytest.mark.slow  # needs the real packaged model (fetched and converted once per machine)
def test_a_packaged_model_whose_weights_are_not_the_pinned_ones_is_refused(smollm2_dir, monkeypatch):
    import dataclasses

    from corolla.errors import ChecksumMismatchError
    from corolla.models import packaged
    from corolla.models.resolve import resolve_packaged

    assert manifest_of(resolve_packaged("smollm2-135m", progress=False).path).digest == \
        packaged.PACKAGED["smollm2-135m"].digest  # the pinned digest is what conversion gives
    other = dataclasses.replace(packaged.PACKAGED["smollm2-135m"], digest="0" * 64)
    monkeypatch.setitem(packaged.PACKAGED, "smollm2-135m", other)
    with pytest.raises(ChecksumMismatchError, match="not the pinned 0000"):
        resolve_packaged("smollm2-135m", progress=False)

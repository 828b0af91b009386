"""A model's identity: a hash per block over its tensors, and of its config.

Two servers hold the same model only if their weights are the same bytes: a server started on
another checkpoint, or another quantisation, under the same name must not enter a chain. The
manifest is computed once per model folder (it reads every weight once) and cached; its digest,
short, joins the model's name in the swarm (``name@digest``).

Canonical form: a block's tensors sorted by their name inside the block (the family's block prefix
removed, so a checkpoint saved with or without the base model's prefix hashes the same), each as
its name, dtype, shape and little-endian bytes. The config: its JSON with sorted keys, without the
keys that do not change what the model computes (``transformers_version`` and the like).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corolla.cache import atomic_write_text, cache_root
from corolla.errors import ModelError

if TYPE_CHECKING:
    import torch

DIGEST_CHARS = 16  # in the swarm key: 64 bits
_VOLATILE = {"transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype", "use_cache"}
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Manifest:
    config: str  # sha256 hex of the canonical config
    blocks: tuple[str, ...]  # sha256 hex per block
    digest: str  # sha256 hex over the version, the config's hash and every block's

    @property
    def short(self) -> str:
        return self.digest[:DIGEST_CHARS]

    def to_json(self) -> dict[str, Any]:
        return {"version": _VERSION, "config": self.config, "blocks": list(self.blocks), "digest": self.digest}


def config_hash(config: Any) -> str:
    data = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements, little-endian, contiguous (this machine is little-endian)."""
    import torch

    return tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()


def combine(config: str, blocks: list[str]) -> str:
    h = hashlib.sha256(f"corolla-manifest-v{_VERSION}\0{config}\0".encode())
    for block in blocks:
        h.update(block.encode() + b"\0")
    return h.hexdigest()


def compute_manifest(folder: Path) -> Manifest:
    """Hash every block's tensors and the config of the model in ``folder`` (reads every weight)."""
    from safetensors import safe_open

    from corolla.models.loading import family_index, load_config
    from corolla.models.registry import family_for

    config = load_config(folder)
    family = family_for(config)
    index = family_index(folder, family)
    prefixes = [family.block_prefix(b) for b in range(config.num_hidden_layers)]
    names: list[list[tuple[str, Path, str]]] = [[] for _ in prefixes]
    for name, (file, stored) in index.items():
        for b, prefix in enumerate(prefixes):
            if name.startswith(prefix):
                names[b].append((name[len(prefix):], file, stored))
                break
    hashes = []
    for entries in names:
        h = hashlib.sha256()
        for local, file, stored in sorted(entries):
            with safe_open(file, framework="pt") as f:
                tensor = f.get_tensor(stored)
            h.update(f"{local}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0".encode())
            h.update(tensor_bytes(tensor))
        hashes.append(h.hexdigest())
    config_h = config_hash(config)
    return Manifest(config_h, tuple(hashes), combine(config_h, hashes))


def _fingerprint(folder: Path) -> str:
    """What the cached manifest was computed from: every file's name, size and modification time."""
    parts = []
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and (path.suffix in (".safetensors", ".json")) and not path.name.startswith("corolla-"):
            st = path.stat()
            parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _cache_file(folder: Path) -> Path:
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:32]
    return cache_root() / "manifests" / f"{key}.json"


def manifest_of(folder: str | os.PathLike) -> Manifest:
    """The model's manifest, computed once per version of its files and cached under COROLLA_HOME."""
    folder = Path(folder)
    fingerprint, cache = _fingerprint(folder), _cache_file(folder)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint") == fingerprint and cached.get("version") == _VERSION:
            manifest = Manifest(cached["config"], tuple(cached["blocks"]), cached["digest"])
            if combine(manifest.config, list(manifest.blocks)) == manifest.digest:
                return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    manifest = compute_manifest(folder)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({**manifest.to_json(), "fingerprint": fingerprint, "folder": str(folder)}))
    return manifest


# --- the swarm key: name@digest ---------------------------------------------------------------------
def split_key(key: str) -> tuple[str, str | None]:
    """``name@digest`` -> (name, digest); a bare name -> (name, None)."""
    name, sep, digest = key.rpartition("@")
    return (name, digest) if sep else (key, None)


def swarm_key(name: str, manifest: Manifest) -> str:
    """The model's key in the swarm: ``name@<16 hex digits of the manifest's digest>``. ``name`` may
    carry a digest already (``qwen@1d96...``): it must be this manifest's, else ModelError."""
    base, digest = split_key(name)
    if digest is not None and not manifest.digest.startswith(digest.lower()):
        raise ModelError(f"the model id {name!r} names digest {digest}, but these weights hash to "
                         f"{manifest.short}: another checkpoint, conversion or quantisation")
    if not base:
        raise ModelError(f"the model id {name!r} has no name before '@'")
    return f"{base}@{manifest.short}"


def block_hashes(manifest: Manifest, start: int, end: int) -> tuple[str, ...]:
    """What a server of blocks ``start:end`` announces: each block's hash, short."""
    return tuple(h[:DIGEST_CHARS] for h in manifest.blocks[start:end])

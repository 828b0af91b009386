"""Atomic apply and undo (all files or none), stale-file refusal, file modes, and the JSON round trip."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from corolla.assistant.edits import Edit, Proposal, apply, proposal_from_json, proposal_to_json, propose, revert
from corolla.assistant.edits import proposal as proposal_module
from corolla.assistant.errors import EditError, StaleFileError


def _setup(root: Path) -> Proposal:
    (root / "a.py").write_text("a = 1\n")
    (root / "b.py").write_text("b = 1\n")
    os.chmod(root / "b.py", 0o755)
    return propose(root, [Edit("a.py", "a = 1\n", "a = 2\n"), Edit("b.py", "b = 1\n", "b = 2\n"),
                          Edit("pkg/sub/c.py", "", "c = 1\n")])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dirs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


def test_apply_and_revert(tmp_path):
    p = _setup(tmp_path)
    apply(tmp_path, p)
    assert _snapshot(tmp_path) == {"a.py": b"a = 2\n", "b.py": b"b = 2\n", "pkg/sub/c.py": b"c = 1\n"}
    assert stat.S_IMODE((tmp_path / "b.py").stat().st_mode) == 0o755  # mode bits kept
    revert(tmp_path, p)
    assert _snapshot(tmp_path) == {"a.py": b"a = 1\n", "b.py": b"b = 1\n"}
    assert stat.S_IMODE((tmp_path / "b.py").stat().st_mode) == 0o755


def test_apply_refuses_stale_file(tmp_path):
    p = _setup(tmp_path)
    (tmp_path / "b.py").write_text("b = 99\n")
    before = _snapshot(tmp_path)
    with pytest.raises(StaleFileError, match=r"b\.py was changed since the edit was proposed"):
        apply(tmp_path, p)
    assert _snapshot(tmp_path) == before


def test_apply_refuses_when_new_file_appeared(tmp_path):
    p = _setup(tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "sub").mkdir()
    (tmp_path / "pkg" / "sub" / "c.py").write_text("mine\n")
    with pytest.raises(StaleFileError, match="c.py was changed"):
        apply(tmp_path, p)
    assert (tmp_path / "a.py").read_text() == "a = 1\n"


def test_revert_refuses_when_changed_after_apply(tmp_path):
    p = _setup(tmp_path)
    apply(tmp_path, p)
    (tmp_path / "a.py").write_text("a = 3\n")
    with pytest.raises(StaleFileError, match="since the edit was applied"):
        revert(tmp_path, p)
    assert (tmp_path / "b.py").read_text() == "b = 2\n" and (tmp_path / "pkg/sub/c.py").exists()


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_apply_is_atomic_when_a_replace_fails(tmp_path, monkeypatch, fail_at):
    p = _setup(tmp_path)
    before, dirs = _snapshot(tmp_path), _dirs(tmp_path)
    real_replace, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(proposal_module.os, "replace", flaky)
    with pytest.raises(EditError, match="disk full.*no file was changed"):
        apply(tmp_path, p)
    assert _snapshot(tmp_path) == before  # also: no temp file left behind
    assert _dirs(tmp_path) == dirs  # created folders removed again
    assert stat.S_IMODE((tmp_path / "b.py").stat().st_mode) == 0o755


def test_apply_is_atomic_when_writing_a_temp_fails(tmp_path, monkeypatch):
    p = _setup(tmp_path)
    before = _snapshot(tmp_path)
    real, calls = proposal_module._write_temp, []

    def flaky(file, content, mode):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("no space")
        return real(file, content, mode)

    monkeypatch.setattr(proposal_module, "_write_temp", flaky)
    with pytest.raises(EditError, match="no space"):
        apply(tmp_path, p)
    assert _snapshot(tmp_path) == before


def test_revert_is_atomic(tmp_path, monkeypatch):
    p = _setup(tmp_path)
    apply(tmp_path, p)
    after = _snapshot(tmp_path)
    real_unlink, calls = os.unlink, []

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:  # deleting the created file fails after a.py and b.py were restored
            raise OSError("busy")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(proposal_module.os, "unlink", flaky)
    with pytest.raises(EditError, match="busy"):
        revert(tmp_path, p)
    assert _snapshot(tmp_path) == after


def test_crlf_bytes_survive_apply(tmp_path):
    (tmp_path / "w.txt").write_bytes(b"one\r\ntwo\r\n")
    p = propose(tmp_path, [Edit("w.txt", "two\n", "2\n")])
    apply(tmp_path, p)
    assert (tmp_path / "w.txt").read_bytes() == b"one\r\n2\r\n"


def test_json_round_trip(tmp_path):
    p = _setup(tmp_path)
    data = json.loads(json.dumps(proposal_to_json(p)))
    q = proposal_from_json(data)
    assert q == p and q.changes[2].before is None
    apply(tmp_path, q)
    revert(tmp_path, proposal_from_json(data))
    assert (tmp_path / "a.py").read_text() == "a = 1\n"


@pytest.mark.parametrize("data", [{}, {"changes": [{"path": "a.py"}]}, {"changes": "x"},
                                  {"version": 99, "changes": []},
                                  {"changes": [{"path": "../x", "before": None, "after": ""}]}])
def test_json_refuses_bad_data(data):
    with pytest.raises(EditError):
        proposal_from_json(data)

"""SessionStore: CRUD, restart, cascades, migrations, and writers in several threads and processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from corolla.assistant import sessions as sessions_mod
from corolla.assistant.errors import AssistantError, EditNotFoundError, SessionNotFoundError, SessionStoreError
from corolla.assistant.sessions import SessionStore, title_from
from corolla.errors import CorollaError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path) -> SessionStore:
    return SessionStore(tmp_path)


def test_creates_db_and_gitignore(tmp_path):
    store = SessionStore(tmp_path)
    assert store.path == tmp_path / ".corolla" / "sessions.db"
    assert store.path.is_file()
    assert (tmp_path / ".corolla" / ".gitignore").read_text().strip() == "*"
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sessions_mod.SCHEMA_VERSION
    finally:
        conn.close()


def test_gitignore_kept_if_present(tmp_path):
    (tmp_path / ".corolla").mkdir()
    (tmp_path / ".corolla" / ".gitignore").write_text("sessions.db\n")
    SessionStore(tmp_path)
    assert (tmp_path / ".corolla" / ".gitignore").read_text() == "sessions.db\n"


def test_session_crud(store):
    a = store.create("first", meta={"model": "m"})
    b = store.create(kind="agent")
    assert len(a.id) == 12 and a.title == "first" and a.kind == "chat" and a.meta == {"model": "m"}
    assert store.get(a.id) == a
    assert [s.id for s in store.list()] == [b.id, a.id]
    assert [s.id for s in store.list(kind="agent")] == [b.id]
    store.rename(a.id, "  renamed ")
    assert store.get(a.id).title == "renamed"
    assert [s.id for s in store.list()] == [a.id, b.id]  # renaming bumps updated
    updated = store.update_meta(a.id, {"x": 1, "model": None})
    assert updated.meta == {"x": 1} and store.get(a.id).meta == {"x": 1}
    store.delete(b.id)
    assert [s.id for s in store.list()] == [a.id]
    assert a.to_json() == {"id": a.id, "title": "first", "kind": "chat", "created": a.created,
                           "updated": a.updated, "meta": {"model": "m"}}


def test_messages_and_updated(store):
    s = store.create("t")
    m1 = store.add_message(s.id, "user", "hello", context=[{"kind": "selection", "label": "a.py:1-2"}])
    after_first = store.get(s.id).updated
    m2 = store.add_message(s.id, "assistant", "hi", meta={"tokens": 3})
    assert after_first > s.updated and store.get(s.id).updated > after_first
    got = store.messages(s.id)
    assert [m.seq for m in got] == [1, 2]
    assert got == [m1, m2]
    assert got[0].context == [{"kind": "selection", "label": "a.py:1-2"}]
    assert got[1].meta == {"tokens": 3}
    assert set(got[0].to_json()) == {"id", "session_id", "seq", "role", "content", "context", "meta", "created"}


def test_title_from_first_user_message(store):
    s = store.create()
    assert s.title == ""
    store.add_message(s.id, "system", "you are helpful")
    assert store.get(s.id).title == ""
    store.add_message(s.id, "user", "\n  Fix the parser bug in tokens.py\nmore details here")
    assert store.get(s.id).title == "Fix the parser bug in tokens.py"
    store.add_message(s.id, "user", "another question")
    assert store.get(s.id).title == "Fix the parser bug in tokens.py"
    named = store.create("kept")
    store.add_message(named.id, "user", "something else")
    assert store.get(named.id).title == "kept"


def test_title_from_long_line():
    text = "word " * 40
    title = title_from(text)
    assert title.endswith("…") and len(title) <= 61 and not title[:-1].endswith(" ")
    assert title_from("x" * 100) == "x" * 60 + "…"
    assert title_from("") == ""


def test_edits_and_last_accepted(store):
    s1, s2 = store.create("one"), store.create("two")
    e1 = store.add_edit(s1.id, {"diff": "d1", "changes": []})
    e2 = store.add_edit(s2.id, {"diff": "d2"})
    e3 = store.add_edit(s1.id, {"diff": "d3"})
    rec = store.get_edit(e1)
    assert rec.status == "proposed" and rec.proposal == {"diff": "d1", "changes": []} and rec.session_id == s1.id
    assert [e.id for e in store.edits(s1.id)] == [e1, e3]
    assert store.last_accepted_edit() is None
    store.set_edit_status(e3, "accepted")
    store.set_edit_status(e2, "accepted")
    store.set_edit_status(e1, "accepted")  # accepted last, though created first
    assert store.last_accepted_edit().id == e1
    assert store.last_accepted_edit(s2.id).id == e2
    store.set_edit_status(e1, "undone")
    assert store.last_accepted_edit().id == e2
    assert store.last_accepted_edit(s1.id).id == e3
    assert store.get_edit(e1).updated > store.get_edit(e1).created
    assert store.get_edit(e2).to_json()["proposal"] == {"diff": "d2"}
    with pytest.raises(ValueError, match="not one of"):
        store.set_edit_status(e1, "bogus")


def test_events_after_seq(store):
    s = store.create()
    seqs = [store.add_event(s.id, "step", {"i": i}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert [e.data for e in store.events(s.id)] == [{"i": i} for i in range(5)]
    tail = store.events(s.id, after_seq=3)
    assert [(e.seq, e.type, e.data) for e in tail] == [(4, "step", {"i": 3}), (5, "step", {"i": 4})]
    assert store.events(s.id, after_seq=5) == []
    assert store.add_event(s.id, "log", "plain text") == 6
    assert store.events(s.id, after_seq=5)[0].data == "plain text"
    assert set(tail[0].to_json()) == {"id", "session_id", "seq", "type", "data", "created"}


def test_persists_across_restart(tmp_path):
    first = SessionStore(tmp_path)
    s = first.create("kept")
    first.add_message(s.id, "user", "hello")
    e = first.add_edit(s.id, {"diff": "x"}, status="accepted")
    first.add_event(s.id, "step", [1, 2])
    del first
    again = SessionStore(tmp_path)
    assert again.get(s.id).title == "kept"
    assert [m.content for m in again.messages(s.id)] == ["hello"]
    assert again.last_accepted_edit().id == e
    assert again.events(s.id)[0].data == [1, 2]
    assert again.add_message(s.id, "assistant", "hi").seq == 2


def test_delete_cascades(store):
    s, other = store.create("gone"), store.create("stays")
    store.add_message(s.id, "user", "m")
    e = store.add_edit(s.id, {})
    store.add_event(s.id, "step")
    store.add_message(other.id, "user", "m2")
    store.delete(s.id)
    with pytest.raises(EditNotFoundError):
        store.get_edit(e)
    conn = sqlite3.connect(store.path)
    try:
        for table in ("messages", "edits", "events"):
            assert conn.execute(f"SELECT COUNT(*) FROM {table} WHERE session_id = ?", (s.id,)).fetchone()[0] == 0
    finally:
        conn.close()
    assert [m.content for m in store.messages(other.id)] == ["m2"]


def test_unknown_ids(store):
    calls = [
        lambda: store.get("nope"), lambda: store.rename("nope", "x"), lambda: store.delete("nope"),
        lambda: store.add_message("nope", "user", "x"), lambda: store.messages("nope"),
        lambda: store.add_edit("nope", {}), lambda: store.edits("nope"), lambda: store.add_event("nope", "t"),
        lambda: store.events("nope"), lambda: store.last_accepted_edit("nope"),
        lambda: store.update_meta("nope", {}),
    ]
    for call in calls:
        with pytest.raises(SessionNotFoundError, match="no session 'nope'"):
            call()
    for call in (lambda: store.get_edit("bad"), lambda: store.set_edit_status("bad", "accepted")):
        with pytest.raises(EditNotFoundError, match="no proposed edit 'bad'"):
            call()
    assert issubclass(SessionNotFoundError, AssistantError) and issubclass(EditNotFoundError, AssistantError)
    assert issubclass(AssistantError, CorollaError)


def test_migration_from_older_version(tmp_path, monkeypatch):
    store = SessionStore(tmp_path)
    s = store.create("old")
    step = ("ALTER TABLE sessions ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",)
    monkeypatch.setattr(sessions_mod, "MIGRATIONS", [*sessions_mod.MIGRATIONS, step])
    SessionStore(tmp_path)
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT title, pinned FROM sessions WHERE id = ?", (s.id,)).fetchone() == ("old", 0)
    finally:
        conn.close()
    SessionStore(tmp_path)  # already at version 2: nothing runs again


def test_newer_schema_refused(tmp_path):
    store = SessionStore(tmp_path)
    conn = sqlite3.connect(store.path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SessionStoreError, match="schema version 99"):
        SessionStore(tmp_path)


def test_not_a_database(tmp_path):
    (tmp_path / ".corolla").mkdir()
    (tmp_path / ".corolla" / "sessions.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SessionStoreError, match="sessions.db"):
        SessionStore(tmp_path)


def _assert_contiguous(store: SessionStore, session_id: str, n: int) -> None:
    assert [m.seq for m in store.messages(session_id)] == list(range(1, n + 1))
    assert [e.seq for e in store.events(session_id)] == list(range(1, n + 1))


def test_threads_write_at_once(store):
    a, b = store.create("a"), store.create("b")
    per_thread, threads_n = 25, 4
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def work(k: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                for s in (a, b):
                    store.add_message(s.id, "user", f"t{k}-{i}")
                    store.add_event(s.id, "step", {"t": k, "i": i})
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for s in (a, b):
        _assert_contiguous(store, s.id, per_thread * threads_n)
        contents = [m.content for m in store.messages(s.id)]
        for k in range(threads_n):  # each writer's own messages keep their order
            mine = [c for c in contents if c.startswith(f"t{k}-")]
            assert mine == [f"t{k}-{i}" for i in range(per_thread)]


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from corolla.assistant.sessions import SessionStore
    root, a, b, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = SessionStore(root)
    print("GO", flush=True)
    sys.stdin.readline()
    for i in range(n):
        for s in (a, b):
            store.add_message(s, "user", f"p-{i}")
            store.add_event(s, "step", i)
    print("DONE", flush=True)
""")


def test_two_processes_write_at_once(tmp_path):
    store = SessionStore(tmp_path)
    a, b = store.create("a"), store.create("b")
    n = 40
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), a.id, b.id, str(n)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "GO"
        proc.stdin.write("\n")
        proc.stdin.flush()
        for i in range(n):  # this process writes to the same two sessions meanwhile
            for s in (b, a):
                store.add_message(s.id, "assistant", f"q-{i}")
                store.add_event(s.id, "step", -i)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "DONE" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for s in (a, b):
        _assert_contiguous(store, s.id, 2 * n)
        contents = [m.content for m in store.messages(s.id)]
        assert [c for c in contents if c.startswith("p-")] == [f"p-{i}" for i in range(n)]
        assert [c for c in contents if c.startswith("q-")] == [f"q-{i}" for i in range(n)]

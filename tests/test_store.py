import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medusa_chat.store import SCHEMA_VERSION, Store, StoredMessage, StoreError, export_markdown


def test_conversation_round_trip(tmp_path):
    store = Store(tmp_path / "h.db", clock=lambda: 1000.0)
    cid = store.create_conversation(system_prompt="Be brief.", model="tiny")
    store.add_message(cid, StoredMessage("user", "What is Medusa?\nExplain."))
    stats = {"new_tokens": 12, "mean_accepted": 2.5, "tokens_per_s": 40.0, "speedup": 1.8, "medusa": True}
    aid = store.add_message(cid, StoredMessage("assistant", "Heads.", model="tiny", settings={"temperature": 0.0},
                                               stats=stats, stopped=True))
    store.close()
    again = Store(tmp_path / "h.db")
    conv = again.get(cid)
    assert conv is not None and conv.title == "What is Medusa? Explain."
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    answer = conv.messages[1]
    assert (answer.id, answer.stats, answer.settings, answer.stopped) == (aid, stats, {"temperature": 0.0}, True)
    assert again.version == SCHEMA_VERSION
    [listed] = again.list_conversations()
    assert listed.message_count == 2


def test_rename_delete_and_truncate(tmp_path):
    store = Store(tmp_path / "h.db")
    cid = store.create_conversation()
    store.add_message(cid, StoredMessage("user", "a"))
    mid = store.add_message(cid, StoredMessage("assistant", "b"))
    store.delete_messages_from(cid, mid)
    assert [m.content for m in store.get(cid).messages] == ["a"]
    store.rename(cid, "  New title ")
    assert store.get(cid).title == "New title"
    store.delete(cid)
    assert store.get(cid) is None and store.list_conversations() == []
    assert store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_newer_schema_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "h.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / "h.db")


def test_failed_transaction_rolls_back(tmp_path):
    store = Store(tmp_path / "h.db")
    cid = store.create_conversation()
    with pytest.raises(StoreError) as info:
        store.add_message(cid, StoredMessage("robot", "x"))  # role CHECK fails
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert store.get(cid).messages == []


def test_export_markdown(tmp_path):
    store = Store(tmp_path / "h.db")
    cid = store.create_conversation(system_prompt="sys", model="tiny")
    store.add_message(cid, StoredMessage("user", "hi"))
    store.add_message(cid, StoredMessage("assistant", "```py\nx = 1\n```", stats={"new_tokens": 3, "medusa": False},
                                         stopped=True))
    text = export_markdown(store.get(cid))
    assert text.startswith("# hi\n")
    for part in ("## System", "sys", "## User", "## Assistant", "```py\nx = 1\n```", "*(stopped)*",
                 "3 tokens · Medusa off"):
        assert part in text


def test_kill_during_writes_never_corrupts(tmp_path):
    """A process killed (SIGKILL) while writing leaves a consistent database with every committed turn."""
    path = tmp_path / "h.db"
    script = textwrap.dedent(
        f"""
        import sys
        from medusa_chat.store import Store, StoredMessage
        store = Store({str(path)!r})
        cid = store.create_conversation(title="kept")
        store.add_message(cid, StoredMessage("user", "first"))
        print("ready", flush=True)
        i = 0
        while True:
            store.add_message(cid, StoredMessage("assistant", "x" * 5000 + str(i)))
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    import time

    time.sleep(0.3)
    proc.kill()
    proc.wait()
    store = Store(path)
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    [conv] = store.list_conversations()
    messages = store.get(conv.id).messages
    assert conv.title == "kept" and messages[0].content == "first"
    assert all(m.content.startswith("x" * 5000) for m in messages[1:])


_READ_ONLY_SCRIPT = """
import json, os, sys
from medusa_chat.store import Store, StoredMessage, StoreError
if os.geteuid() == 0:  # root ignores file modes: act as nobody (everything is imported already)
    os.setgid(65534)
    os.setuid(65534)
results = {}
try:
    store = Store(sys.argv[1])
except StoreError as exc:
    print(json.dumps({"open": str(exc)}))
    raise SystemExit
calls = {
    "list": lambda: len(store.list_conversations()),
    "get": lambda: len(store.get(1).messages),
    "add": lambda: store.add_message(1, StoredMessage("user", "x")),
    "create": lambda: store.create_conversation("new"),
    "system": lambda: store.set_system_prompt(1, "s"),
    "rename": lambda: store.rename(1, "r"),
    "regenerate": lambda: store.delete_messages_from(1, 1),
    "delete": lambda: store.delete(1),
}
for name, call in calls.items():
    try:
        results[name] = call()
    except StoreError as exc:
        results[name] = "StoreError: " + str(exc)
    except BaseException as exc:
        results[name] = "UNEXPECTED " + type(exc).__name__
store.close()
print(json.dumps(results))
"""


@pytest.mark.parametrize("folder_writable", [True, False])
def test_a_read_only_history_raises_only_store_error_and_stays_readable(tmp_path_factory, folder_writable):
    import json
    import os
    import tempfile

    folder = tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp().parent.parent)  # reachable by nobody
    os.chmod(folder, 0o777 if folder_writable else 0o755)
    path = Path(folder) / "h.db"
    store = Store(path)
    cid = store.create_conversation("kept")
    store.add_message(cid, StoredMessage("user", "hello"))
    store.close()
    before = path.read_bytes()
    os.chmod(path, 0o444)
    if not folder_writable and os.geteuid() != 0:
        os.chmod(folder, 0o555)
    try:
        done = subprocess.run([sys.executable, "-c", _READ_ONLY_SCRIPT, str(path)], capture_output=True, text=True)
    finally:
        os.chmod(folder, 0o755)
        os.chmod(path, 0o644)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["list"] == 1 and results["get"] == 1  # opening conversations still works
    for name in ("add", "create", "system", "rename", "regenerate", "delete"):
        assert results[name].startswith("StoreError: ") and "read-only" in results[name], (name, results[name])
    assert path.read_bytes() == before


def test_a_damaged_database_or_missing_folder_is_a_store_error(tmp_path):
    damaged = tmp_path / "h.db"
    damaged.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="damaged"):
        Store(damaged)
    assert damaged.read_bytes() == b"this is not sqlite" * 100
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        Store(blocker / "sub" / "h.db")  # its folder cannot be created


def test_many_processes_opening_a_fresh_database_all_succeed(tmp_path):
    """The first-run migration race: every process opens the history and sees the schema once."""
    import time

    path = tmp_path / "h.db"
    start = time.time() + 1.5
    script = textwrap.dedent(
        f"""
        import time
        from medusa_chat.store import Store
        time.sleep(max({start} - time.time(), 0))
        store = Store({str(path)!r})
        store.create_conversation("x")
        print(store.version)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]  # fmt: skip
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [err for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == [str(SCHEMA_VERSION)] * 6
    assert len(Store(path).list_conversations()) == 6

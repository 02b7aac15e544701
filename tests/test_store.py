import sqlite3
import subprocess
import sys
import textwrap

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
    with pytest.raises(sqlite3.IntegrityError):
        store.add_message(cid, StoredMessage("robot", "x"))  # role CHECK fails
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

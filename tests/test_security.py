"""Hostile or broken servers (a real HTTP server on 127.0.0.1, tests/hub_server.py) and unsafe names.

Nothing a server sends may put a file outside the cache, and no download is kept unless it is what the
listing and the ETag say it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from medusa_chat import hub

from .hub_server import FakeHub

WEIGHTS = os.urandom(300_000)  # a "model.safetensors" big enough to cut and resume
CONFIG = b'{"model_type": "llama"}'
KEY = "test/plain/model.safetensors"


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A fresh fake Hub with one plain model repo, and a fresh cache under ``tmp_path/hf``."""
    with FakeHub() as fake:
        fake.add_repo("test/plain", {"config.json": CONFIG, "model.safetensors": WEIGHTS})
        fake.use(monkeypatch)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("MEDUSA_CHAT_CONFIG_DIR", str(tmp_path / "config"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake


def _outside(tmp_path: Path) -> list[Path]:
    """Every file or link under ``tmp_path`` that is not inside the HF cache or the config dir."""
    allowed = (tmp_path / "hf", tmp_path / "config")
    return [p for p in tmp_path.rglob("*") if not p.is_dir() and not any(p.is_relative_to(a) for a in allowed)]


def _leftovers() -> list[Path]:
    """Bytes of the weights file left in the cache (complete or partial)."""
    blobs = hub.hub_cache_dir() / "models--test--plain" / "blobs"
    return list(blobs.glob(hashlib.sha256(WEIGHTS).hexdigest() + "*"))


# -- 1. path traversal ------------------------------------------------------------------------------


@pytest.mark.parametrize("etag", ['"../../../../escaped"', '"/tmp/escaped"', 'W/"..%2f..%2fescaped"', '"abc"'])
def test_an_etag_that_is_not_a_hash_is_refused_and_writes_nothing(server, tmp_path, etag):
    server.etags[KEY] = etag
    with pytest.raises(hub.UnsafePathError, match="not a file hash"):
        hub.download("test/plain")
    assert _outside(tmp_path) == []
    assert not server.bytes_served[KEY]


def test_quoted_and_weak_etags_of_a_hash_are_accepted(server):
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    server.etags[KEY] = f'W/"{digest}"'
    snapshot = hub.download("test/plain")
    assert (snapshot / "model.safetensors").resolve().name == digest


@pytest.mark.parametrize("commit", ["../../../../escaped", "ABCDEF" * 7, "0" * 39, "0" * 40 + "/../x"])
def test_a_commit_that_is_not_a_hash_is_refused(server, tmp_path, commit):
    server.repos["test/plain"].commit = commit
    with pytest.raises(hub.UnsafePathError, match="commit hash"):
        hub.download("test/plain")
    assert _outside(tmp_path) == []
    assert not [r for r in server.requests if "/resolve/" in r[1]]


@pytest.mark.parametrize(
    "revision", ["../../../../escaped", "/etc/passwd", "a/../../b", "x\\..\\y", "bad\nname", "v1.lock", ".hidden"]
)
def test_a_revision_that_is_not_a_ref_name_is_refused_before_any_request(server, tmp_path, revision):
    from medusa_chat.catalog import ModelSpec

    spec = ModelSpec(name="evil", repo_id="test/plain", revision=revision, head_format="auto", source="test")
    with pytest.raises(hub.UnsafePathError, match="not a valid revision"):
        hub.download(spec)
    assert not server.requests
    assert _outside(tmp_path) == []


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "release/2024-01"])
def test_ordinary_revisions_are_accepted(revision):
    assert hub.check_revision(revision) == revision


def test_a_heads_repo_naming_a_base_outside_the_cache_is_refused(server, tmp_path):
    server.add_repo(
        "test/heads", {"config.json": b'{"base_model_name_or_path": "../../escaped"}', "medusa_lm_head.pt": b"x"}
    )
    with pytest.raises(hub.UnsafePathError, match="not a repo id"):
        hub.download("test/heads")
    assert _outside(tmp_path) == []


def test_the_resolved_path_must_stay_inside_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models--a--b").symlink_to(tmp_path)  # a planted link out of the cache
    with pytest.raises(hub.UnsafePathError, match="outside the cache"):
        hub._inside(hub._storage("a/b") / "blobs" / ("0" * 64))


# -- 2. verification ------------------------------------------------------------------------------


def test_a_tampered_file_is_deleted_and_named(server):
    server.bodies[KEY] = bytes(len(WEIGHTS))  # right size, wrong bytes
    with pytest.raises(hub.VerificationError, match=r"test/plain/model\.safetensors: sha256"):
        hub.download("test/plain")
    assert _leftovers() == []
    assert not hub.cached_state("test/plain").complete
    del server.bodies[KEY]
    snapshot = hub.download("test/plain")  # a clean rerun fetches it whole and keeps it
    assert (snapshot / "model.safetensors").read_bytes() == WEIGHTS


def test_a_resumed_file_is_verified_over_its_whole_length(server):
    server.cuts[KEY] = 100_000
    server.bodies[KEY] = WEIGHTS[:100_000] + bytes(len(WEIGHTS) - 100_000)  # the resumed part is wrong
    with pytest.raises(hub.VerificationError, match="sha256"):
        hub.download("test/plain")
    assert server.ranges == [(KEY, "bytes=100000-")]
    assert _leftovers() == []


def test_a_206_that_starts_elsewhere_is_refused(server):
    server.cuts[KEY] = 100_000
    server.range_starts[KEY] = 50_000  # the server answers "bytes 50000-..." to "bytes=100000-"
    with pytest.raises(hub.VerificationError, match="asked for bytes from 100000"):
        hub.download("test/plain")
    assert _leftovers() == []  # the next run starts from byte 0
    del server.range_starts[KEY]
    assert (hub.download("test/plain") / "model.safetensors").read_bytes() == WEIGHTS


def test_a_content_length_that_disagrees_with_the_listing_is_an_error(server):
    server.lengths[KEY] = len(WEIGHTS) - 1000
    with pytest.raises(hub.VerificationError, match=r"model\.safetensors: the server announces"):
        hub.download("test/plain")
    assert not server.bytes_served[KEY]


def test_a_server_that_keeps_cutting_the_connection_gives_up_with_a_clear_error(server, monkeypatch):
    monkeypatch.setattr(hub.time, "sleep", lambda _s: None)
    server.cut_every[KEY] = 10_000
    with pytest.raises(hub.HubError, match="cut the connection") as info:
        hub.download("test/plain")
    assert f"{(hub.RETRIES + 1) * 10_000} of {len(WEIGHTS)} bytes are kept" in str(info.value)
    assert [r for r in server.requests if r[0] == "GET" and r[1].endswith("model.safetensors")] == [
        ("GET", f"/test/plain/resolve/{server.repos['test/plain'].commit}/model.safetensors")
    ] * (hub.RETRIES + 1)
    del server.cut_every[KEY]
    assert (hub.download("test/plain") / "model.safetensors").read_bytes() == WEIGHTS  # resumed


def test_cli_reports_a_cut_connection_without_a_traceback(server, monkeypatch):
    from typer.testing import CliRunner

    from medusa_chat.cli import app

    monkeypatch.setattr(hub.time, "sleep", lambda _s: None)
    server.cut_every[KEY] = 10_000
    result = CliRunner().invoke(app, ["models", "download", "test/plain"])
    assert result.exit_code == 1 and "cut the connection" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", ["owner/x@../../escaped", "a/..", "owner/x@refs/../../y"])
def test_cli_refuses_unsafe_repo_ids_and_revisions_in_one_line(server, name):
    from typer.testing import CliRunner

    from medusa_chat.cli import app

    for command in (["models", "info", name], ["models", "download", name], ["models", "remove", name, "--yes"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (command, result.output)
        assert result.output.startswith("error:") and len(result.output.strip().splitlines()) == 1
    assert not server.requests

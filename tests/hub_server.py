"""A fake Hugging Face Hub on 127.0.0.1 that speaks enough of the protocol for huggingface_hub.

Routes: ``GET /api/models/{repo}[/revision/{rev}]`` (repo info with file sizes) and
``HEAD|GET /{repo}/resolve/{rev}/{path}`` (ETag, X-Repo-Commit, Content-Length, Range -> 206).
Knobs: gated repos (401 without the right token), unknown repos/revisions (404 with the Hub's
``X-Error-Code``), a one-shot cut of a transfer after N bytes, and counters of bytes served and
``Range`` headers seen. Hostile knobs (keyed by ``"repo/path"``): ``etags`` (the raw ETag header sent),
``bodies`` (bytes served instead of the file's), ``lengths`` (the Content-Length announced), ``range_starts``
(where a 206 starts, whatever was asked) and ``cut_every`` (cut every GET after N bytes).
Use as a context manager; point ``HF_ENDPOINT`` at :attr:`FakeHub.url`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

GOOD_TOKEN = "hf_test_token"


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str
    gated: bool = False
    listed_sizes: dict[str, int] = field(default_factory=dict)  # sizes the API claims, when not the real ones


class FakeHub:
    """A threaded HTTP server holding repos in memory."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.bytes_served: Counter[str] = Counter()  # "repo/path" -> body bytes sent by GET
        self.ranges: list[tuple[str, str]] = []  # ("repo/path", Range header) for every ranged GET
        self.cuts: dict[str, int] = {}  # "repo/path" -> cut the next GET after this many body bytes
        self.requests: list[tuple[str, str]] = []
        self.slow = 0.0  # seconds to sleep after each 64 kB of a body (to interrupt a transfer mid-way)
        self.etags: dict[str, str] = {}
        self.bodies: dict[str, bytes] = {}
        self.lengths: dict[str, int] = {}
        self.range_starts: dict[str, int] = {}
        self.cut_every: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def use(self, monkeypatch) -> None:
        """Point huggingface_hub at this server for one test, as if ``HF_ENDPOINT`` had been set before import.

        medusa_chat.hub reads ``HF_ENDPOINT`` per call; the library itself reads it once at import
        (``constants.ENDPOINT`` and the resolve-URL template, also used by its side requests).
        """
        from huggingface_hub import constants

        monkeypatch.setenv("HF_ENDPOINT", self.url)
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}"
        )

    def add_repo(self, repo_id: str, files: dict[str, bytes], gated: bool = False, **listed_sizes: int) -> str:
        """Publish ``files`` as ``repo_id`` at a new commit; returns the commit hash."""
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        commit = digest.hexdigest()
        self.repos[repo_id] = FakeRepo(files, commit, gated, {k.replace("__", "."): v for k, v in listed_sizes.items()})
        return commit

    def add_dir(self, repo_id: str, directory: Path, gated: bool = False) -> str:
        files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
        return self.add_repo(repo_id, files, gated)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._route(send_body=False)

        def do_GET(self) -> None:
            self._route(send_body=True)

        def _error(self, status: int, code: str | None, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _repo(self, repo_id: str, revision: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            if repo.gated and self.headers.get("Authorization") != f"Bearer {GOOD_TOKEN}":
                self._error(401, "GatedRepo", "Access to model is restricted. You must have access to it.")
                return None
            if revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", "Invalid rev id")
                return None
            return repo

        def _route(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                revision = "/".join(parts[5:]) if len(parts) > 5 and parts[4] == "revision" else "main"
                self._api(f"{parts[2]}/{parts[3]}", revision, send_body)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), send_body)
            else:
                self._error(404, None, "Not found")

        def _api(self, repo_id: str, revision: str, send_body: bool) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            siblings = [
                {"rfilename": name, "size": repo.listed_sizes.get(name, len(data)), "blobId": _etag(data)}
                for name, data in sorted(repo.files.items())
            ]
            info = {"id": repo_id, "sha": repo.commit, "private": False, "gated": repo.gated, "siblings": siblings}
            body = json.dumps(info).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _resolve(self, repo_id: str, revision: str, filename: str, send_body: bool) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            if filename not in repo.files:
                self._error(404, "EntryNotFound", "Entry not found")
                return
            key = f"{repo_id}/{filename}"
            etag = hub.etags.get(key, f'"{_etag(repo.files[filename])}"')
            data = hub.bodies.get(key, repo.files[filename])
            start = 0
            range_header = self.headers.get("Range")
            if range_header and send_body:
                hub.ranges.append((key, range_header))
                start = hub.range_starts.get(key, int(range_header.removeprefix("bytes=").split("-")[0]))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(hub.lengths.get(key, len(data) - start)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not send_body:
                return
            body = data[start:]
            if key in hub.cuts or key in hub.cut_every:
                body = body[: hub.cuts.pop(key, None) or hub.cut_every[key]]
                self.close_connection = True
            try:
                for start in range(0, len(body), 1 << 16):
                    self.wfile.write(body[start : start + (1 << 16)])
                    self.wfile.flush()
                    hub.bytes_served[key] += len(body[start : start + (1 << 16)])
                    time.sleep(hub.slow)
            except (BrokenPipeError, ConnectionResetError):  # the client went away
                self.close_connection = True

    return Handler


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Downloads from the Hugging Face Hub into the standard HF cache, with progress, cancel and resume.

Files land where ``hf_hub_download`` puts them (``blobs/``, ``snapshots/{commit}/``, ``refs/``), so
transformers and the ``hf`` CLI see them. The transfer itself is ours rather than
``hf_hub_download``'s because huggingface_hub (2.x) deletes a partial file when a download stops;
here the partial ``blobs/{etag}.incomplete`` survives a cancel, a crash or Ctrl-C and the next run
asks only for the missing bytes (HTTP ``Range``). Requests go through huggingface_hub's session,
so ``HF_TOKEN`` / ``hf auth login``, proxies and ``HF_ENDPOINT`` are honoured; the environment is
read at call time. Progress is reported as plain :class:`DownloadProgress` events.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from .catalog import ModelSpec, resolve
from .hub_names import (
    COMMIT_RE,
    REPO_RE,
    HubError,
    UnsafePathError,
    check_commit,
    check_etag,
    check_repo_id,
    check_revision,
)

REPORT_BYTES = 1 << 20  # a progress event per MiB (and at the end of each file)
RETRIES = 3
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_MODEL_FILES = re.compile(
    r"^(config\.json|generation_config\.json|tokenizer\.json|tokenizer\.model|tokenizer_config\.json|"
    r"special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt|chat_template\.jinja)$"
)
_SAFETENSORS = re.compile(r"^model(-\d+-of-\d+)?\.safetensors$|^model\.safetensors\.index\.json$")  # not consolidated.*
_BIN = re.compile(r"^pytorch_model[^/]*\.bin$|^pytorch_model\.bin\.index\.json$")
HEAD_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")




class OfflineError(HubError):
    """Offline mode is on or the Hub cannot be reached."""


class GatedRepoError(HubError):
    """The repo is gated or private and the request had no (valid) token."""


class RepoNotFound(HubError):
    """No such repo (or a private one the token cannot see)."""


class RevisionNotFound(HubError):
    """The repo exists but not at that branch, tag or commit."""


class DiskFullError(HubError):
    """Not enough free disk space for the download."""


class DownloadCancelled(HubError):
    """The cancel event was set; partial files are kept and the next run resumes them."""




class VerificationError(HubError):
    """A downloaded file does not match what the Hub advertised (hash, size, range); its bytes were deleted."""


def _inside(path: Path, root: Path | None = None) -> Path:
    """``path`` when, resolved, it stays inside ``root`` (the hub cache), else :class:`UnsafePathError`."""
    root = (root or hub_cache_dir()).resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise UnsafePathError(f"refusing to write {path}: it resolves to {resolved}, outside the cache {root}")
    return path


@dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    filename: str
    size: int
    commit: str
    revision: str = "main"  # the branch or tag the commit was resolved from


@dataclass(frozen=True)
class DownloadPlan:
    """What a download needs: files at pinned commits, and how much is still missing."""

    spec: ModelSpec
    files: tuple[RemoteFile, ...]
    cached_bytes: int  # complete files already cached plus partial bytes on disk

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def missing(self) -> int:
        return max(self.total - self.cached_bytes, 0)


@dataclass(frozen=True)
class DownloadProgress:
    """One progress event: the current file and the whole download, in bytes."""

    repo_id: str
    filename: str
    file_bytes: int
    file_total: int
    downloaded: int  # bytes on disk for the whole download, resumed ones included
    total: int
    rate: float  # bytes per second fetched by this run
    eta: float | None  # seconds left at ``rate``, None until a rate is known
    done: bool = False


@dataclass(frozen=True)
class CacheState:
    """How much of a model is in the cache."""

    complete: bool
    size_on_disk: int
    to_download: int  # exact when a plan was made online, else the catalogue's estimate
    path: Path | None  # snapshot of the main repo, when cached


@dataclass(frozen=True)
class ModelFiles:
    """Where a cached model lives locally: the transformers dir and the Medusa heads."""

    model_dir: Path | None  # None for packaged GGUF models (see default_model)
    heads_path: Path | None


Progress = Callable[[DownloadProgress], None]


def endpoint() -> str:
    """The Hub URL, from ``HF_ENDPOINT`` at call time."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The HF hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), read at call time."""
    from huggingface_hub import constants

    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _storage(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + check_repo_id(repo_id).replace("/", "--"))


def snapshot_dir(repo_id: str, revision: str = "main") -> Path | None:
    """The cached snapshot of ``repo_id`` at ``revision`` (a branch, tag or commit), if any."""
    storage = _storage(repo_id)
    commit = check_revision(revision)
    if not COMMIT_RE.match(revision):
        ref = storage / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text(errors="replace").strip()
        if not COMMIT_RE.match(commit):
            return None  # a damaged ref: not cached (a download rewrites it)
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _as_spec(spec_or_repo: ModelSpec | str) -> ModelSpec:
    return spec_or_repo if isinstance(spec_or_repo, ModelSpec) else resolve(spec_or_repo)


# -- which files a model needs ---------------------------------------------------------------------


def select_files(filenames: Iterable[str], role: str) -> list[str]:
    """Files to fetch from a repo listing: ``heads`` (config + heads file) or ``model`` (config,
    tokenizer, weights: safetensors when present, else ``.bin``, plus any Medusa heads files)."""
    names = set(filenames)
    heads = next(([f] for f in HEAD_FILES if f in names), [])
    if role == "heads":
        return sorted(({"config.json"} & names) | set(heads))
    weights = {n for n in names if _SAFETENSORS.match(n)} or {n for n in names if _BIN.match(n)}
    return sorted({n for n in names if _MODEL_FILES.match(n)} | weights | set(heads))


def _is_heads_only(filenames: Iterable[str]) -> bool:
    names = set(filenames)
    weights = [n for n in names if _SAFETENSORS.match(n) or _BIN.match(n)]
    return bool(names & set(HEAD_FILES)) and not weights


def _snapshot_complete(snapshot: Path | None, role: str) -> bool:
    """Whether a cached snapshot holds what the loader needs for ``role``."""
    if snapshot is None or not (snapshot / "config.json").is_file():
        return False
    if role == "heads":
        return any((snapshot / f).is_file() for f in HEAD_FILES)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (snapshot / index).is_file():
            weight_map = _json_object(snapshot / index).get("weight_map")
            shards = set(weight_map.values()) if isinstance(weight_map, dict) else set()
            return bool(shards) and all(isinstance(s, str) and (snapshot / s).is_file() for s in shards)
    return any(p.name not in HEAD_FILES for p in [*snapshot.glob("*.safetensors"), *snapshot.glob("*.bin")])


def _json_object(path: Path) -> dict:
    """A JSON object read from ``path``; empty when the file is unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _roles(spec: ModelSpec) -> list[tuple[str, str, str]]:
    """(repo_id, revision, role) for each repo of a spec whose layout is known."""
    if spec.head_format == "medusa1-heads":
        return [(spec.repo_id, spec.revision, "heads"), (spec.base_repo_id, "main", "model")]
    if spec.head_format in ("medusa2-full", "auto") and spec.repo_id:
        return [(spec.repo_id, spec.revision, "model")]
    return []


# -- errors --------------------------------------------------------------------------------------


def cached_models() -> list[str]:
    """Catalogue names whose files are all in the cache."""
    from .catalog import catalog

    return [name for name, spec in catalog().items() if spec.hub_repos and cached_state(spec).complete]


def _offline_error(reason: str) -> OfflineError:
    cached = cached_models()
    have = ", ".join(cached) if cached else "none"
    return OfflineError(
        f"{reason}. Cached models you can use offline: {have}. "
        "To download one, go online (unset HF_HUB_OFFLINE) and run `medusa-chat models download NAME`."
    )


def _translate(exc: BaseException, repo_id: str) -> HubError | None:
    """Our typed error for a huggingface_hub / httpx / OS error, or None when it is something else."""
    import httpx2
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError) or (
        isinstance(exc, errors.HfHubHTTPError) and exc.response is not None and exc.response.status_code == 401
    ):
        return GatedRepoError(
            f"{repo_id} is gated or private: accept its licence on {endpoint()}/{repo_id}, then log in with "
            "`hf auth login` or set the HF_TOKEN environment variable to a token with read access."
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return RevisionNotFound(f"{repo_id} has no branch, tag or commit by that name: {exc.server_message or exc}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return RepoNotFound(
            f"no repo {repo_id} on {endpoint()}: check the id (owner/name); if it is private, log in with "
            "`hf auth login` or set HF_TOKEN."
        )
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return _offline_error("HF_HUB_OFFLINE is set")
    if isinstance(exc, httpx2.ConnectError | httpx2.TimeoutException | httpx2.NetworkError):
        return _offline_error(f"cannot reach {endpoint()} ({exc})")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DiskFullError(f"the disk filled up while downloading {repo_id}: free some space and run it again")
    if isinstance(exc, errors.HfHubHTTPError):
        return HubError(f"the Hub refused a request for {repo_id}: {exc}")
    return None


class _Translate:
    """``with _Translate(repo):`` re-raises library errors as our typed ones."""

    def __init__(self, repo_id: str) -> None:
        self.repo_id = repo_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and not isinstance(exc, HubError) and (ours := _translate(exc, self.repo_id)):
            raise ours from exc
        return False


# -- planning ------------------------------------------------------------------------------------


def _list_repo(repo_id: str, revision: str) -> tuple[str, dict[str, int]]:
    """(commit, {filename: size}) for a repo at a revision, from the Hub API."""
    from huggingface_hub import HfApi

    with _Translate(repo_id):
        info = HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision, files_metadata=True)
    commit = check_commit(info.sha, f"{endpoint()} (listing {repo_id})")
    return commit, {s.rfilename: s.size or 0 for s in info.siblings or []}


def _partial_bytes(repo_id: str) -> int:
    blobs = _storage(repo_id) / "blobs"
    return sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.is_dir() else 0


def _cached_file(f: RemoteFile) -> bool:
    return (_storage(f.repo_id) / "snapshots" / f.commit / f.filename).exists()


def plan(spec_or_repo: ModelSpec | str) -> DownloadPlan:
    """Ask the Hub which files the model needs and their sizes (needs the network).

    For a bare Hub id (``head_format = "auto"``) the layout is decided here: a repo holding only
    ``medusa_lm_head.*`` is heads-only and its ``config.json`` names the base model to fetch too.
    """
    spec = _as_spec(spec_or_repo)
    if is_offline():
        raise _offline_error("HF_HUB_OFFLINE is set")
    if not spec.hub_repos:
        where = f"the {spec.package} package" if spec.package else str(spec.local_path or spec.heads_dir())
        raise HubError(f"{spec.label} is not downloaded from the Hub: it comes from {where}")
    files: list[RemoteFile] = []
    for repo_id, revision, role in _roles(spec):
        check_repo_id(repo_id)
        check_revision(revision)
        commit, sizes = _list_repo(repo_id, revision)
        if spec.head_format == "auto" and _is_heads_only(sizes):
            spec = _resolve_auto_heads(spec, commit, sizes)
            return plan(spec)
        wanted = select_files(sizes, role)
        if "config.json" not in wanted:
            raise HubError(f"{repo_id} has no config.json: it is not a model or Medusa heads repo")
        files += [RemoteFile(repo_id, name, sizes[name], commit, revision) for name in wanted]
    cached = sum(f.size for f in files if _cached_file(f))
    partial = sum(_partial_bytes(r) for r in {f.repo_id for f in files})
    return DownloadPlan(spec, tuple(files), cached + partial)


def _resolve_auto_heads(spec: ModelSpec, commit: str, sizes: dict[str, int]) -> ModelSpec:
    """A heads-only Hub repo: read its config for the base model and make a medusa1-heads spec."""
    if "config.json" not in sizes:
        raise HubError(f"{spec.repo_id} holds Medusa heads but no config.json naming the base model")
    config_file = RemoteFile(spec.repo_id, "config.json", sizes["config.json"], commit, spec.revision)
    _fetch(config_file, lambda *_: None, None)
    config = _json_object(_storage(spec.repo_id) / "snapshots" / commit / "config.json")
    base = config.get("base_model_name_or_path")
    if not base:
        raise HubError(f"{spec.repo_id}/config.json names no base_model_name_or_path")
    if not isinstance(base, str) or not REPO_RE.match(base) or ".." in base:
        raise UnsafePathError(f"{spec.repo_id}/config.json names {base!r} as its base model, which is not a repo id")
    return replace(spec, head_format="medusa1-heads", base_repo_id=base, revision=commit)


# -- transfer ------------------------------------------------------------------------------------


def download(
    spec_or_repo: ModelSpec | str,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Download everything a model needs into the HF cache; returns the main repo's snapshot dir.

    Safe to run in a worker thread. Setting ``cancel`` stops at the next chunk with
    :class:`DownloadCancelled`; partial files are kept, so running it again resumes.
    """
    the_plan = plan(spec_or_repo)
    cache = hub_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if the_plan.missing > free:
        raise DiskFullError(
            f"{the_plan.spec.label} needs {_gb(the_plan.missing)} more but {cache} has only {_gb(free)} free: "
            "free some space or point HF_HUB_CACHE at a bigger disk"
        )
    report = progress or (lambda _event: None)
    done = the_plan.cached_bytes - sum(_partial_bytes(r) for r in {f.repo_id for f in the_plan.files})
    started, fetched = time.monotonic(), 0
    for remote in the_plan.files:
        if _cached_file(remote):
            continue
        offset = done

        def on_bytes(file_bytes: int, new: int, remote: RemoteFile = remote, offset: int = offset) -> None:
            nonlocal fetched
            fetched += new
            rate = fetched / max(time.monotonic() - started, 1e-6)
            downloaded = offset + file_bytes
            eta = (the_plan.total - downloaded) / rate if rate > 0 else None
            report(
                DownloadProgress(
                    remote.repo_id, remote.filename, file_bytes, remote.size, downloaded, the_plan.total, rate, eta
                )
            )

        _fetch(remote, on_bytes, cancel)
        done += remote.size
    rate = fetched / max(time.monotonic() - started, 1e-6)
    last, total = the_plan.files[-1], the_plan.total
    report(DownloadProgress(last.repo_id, last.filename, last.size, last.size, total, total, rate, 0.0, done=True))
    main = the_plan.files[0]
    return _storage(main.repo_id) / "snapshots" / main.commit


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _fetch(remote: RemoteFile, on_bytes: Callable[[int, int], None], cancel: threading.Event | None) -> Path:
    """One file into the cache (blob + snapshot link + ref), resuming a partial blob and verifying it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    storage = _storage(remote.repo_id)
    label = f"{remote.repo_id}/{remote.filename}"
    snapshot = storage / "snapshots" / check_commit(remote.commit, endpoint())
    pointer = _inside(snapshot / remote.filename, snapshot)
    with _Translate(remote.repo_id):
        url = hf_hub_url(remote.repo_id, remote.filename, revision=remote.commit, endpoint=endpoint())
        meta = get_hf_file_metadata(url, endpoint=endpoint())
        etag = check_etag(meta.etag, f"{endpoint()} (for {label})")
        size = _expected_size(remote, meta.size)
        blob = _inside(storage / "blobs" / etag, storage)
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock = hub_cache_dir() / ".locks" / storage.name / f"{etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(str(lock)):
            if not blob.exists():
                headers = build_hf_headers()
                if urlsplit(meta.location).netloc != urlsplit(url).netloc:
                    headers.pop("authorization", None)  # never send the token to a CDN
                _transfer(meta.location, blob, size, headers, on_bytes, cancel, label)
            pointer.parent.mkdir(parents=True, exist_ok=True)
            if not pointer.exists():
                _link(blob, pointer)
    if remote.revision != remote.commit:
        ref = _inside(storage / "refs" / check_revision(remote.revision), storage)
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(remote.commit)
    return pointer


def _expected_size(remote: RemoteFile, announced: int | None) -> int:
    """The file's size: the listing's, which the server's ``Content-Length`` must agree with."""
    if remote.size and announced is not None and announced != remote.size:
        raise VerificationError(
            f"{remote.repo_id}/{remote.filename}: the server announces {announced} bytes but the repo listing says "
            f"{remote.size}; refusing the file (a broken mirror or proxy?)"
        )
    return remote.size or announced or 0


def _transfer(
    url: str,
    blob: Path,
    size: int,
    headers: dict[str, str],
    on_bytes: Callable[[int, int], None],
    cancel: threading.Event | None,
    label: str = "",
) -> None:
    """GET ``url`` into ``blob`` via ``blob.incomplete``, asking only for bytes not yet on disk, then verify it.

    A ``206`` must start where asked (else the partial file is dropped and the file fetched again from byte 0);
    a body longer than ``size`` or a hash other than the ETag's deletes the bytes and raises
    :class:`VerificationError`. Connection cuts are retried :data:`RETRIES` times, then a :class:`HubError`
    says how many bytes were kept for the next run.
    """
    import httpx2

    label = label or blob.name
    partial = blob.with_name(blob.name + ".incomplete")
    for attempt in range(RETRIES + 1):
        have = partial.stat().st_size if partial.exists() else 0
        on_bytes(have, 0)
        if have >= size > 0:
            break
        try:
            _get_into(url, partial, have, size, headers, on_bytes, cancel, label)
        except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.TimeoutException) as exc:
            if attempt == RETRIES:
                kept = partial.stat().st_size if partial.exists() else 0
                raise HubError(
                    f"{label}: the server cut the connection {RETRIES + 1} times ({exc}); {kept} of {size} bytes "
                    "are kept: run the download again to resume"
                ) from exc
            time.sleep(0.2 * (attempt + 1))
    _verify(partial, blob, size, label)
    partial.replace(blob)


def _get_into(
    url: str,
    partial: Path,
    have: int,
    size: int,
    headers: dict[str, str],
    on_bytes: Callable[[int, int], None],
    cancel: threading.Event | None,
    label: str,
) -> None:
    """One GET from byte ``have``, appended to ``partial`` (or written afresh when the server sends it all)."""
    from huggingface_hub import get_session
    from huggingface_hub.utils import hf_raise_for_status

    request = {**headers, "Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {})
    with get_session().stream("GET", url, headers=request, follow_redirects=True) as response:
        hf_raise_for_status(response)
        if response.status_code == 206:
            _check_range(response.headers.get("Content-Range", ""), have, size, partial, label)
        else:
            have = 0  # 200: the server ignored Range and sends the whole file
        if response.headers.get("Content-Encoding", "identity") == "identity":  # a compressed length says nothing
            _check_length(response.headers.get("Content-Length"), size - have, partial, label)
        with partial.open("ab" if have else "wb") as out:
            reported = have
            for chunk in response.iter_bytes():  # as the network delivers: a cut loses nothing
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled(f"download cancelled; {have} bytes of {label} kept")
                if size and have + len(chunk) > size:
                    out.close()
                    _discard(partial, f"{label}: the server sent more than the {size} bytes the listing announced")
                out.write(chunk)
                have += len(chunk)
                if have - reported >= REPORT_BYTES or have >= size:
                    on_bytes(have, have - reported)
                    reported = have


def _check_range(content_range: str, have: int, size: int, partial: Path, label: str) -> None:
    """A ``206`` must cover the file from byte ``have``; otherwise the partial file is dropped."""
    match = _CONTENT_RANGE.match(content_range.strip())
    ok = match is not None and int(match[1]) == have and match[3] in ("*", str(size) if size else match[3])
    if not ok:
        _discard(partial, f"{label}: asked for bytes from {have} but the server sent {content_range or 'no range'}")


def _check_length(content_length: str | None, expected: int, partial: Path, label: str) -> None:
    """The body's ``Content-Length`` must be the bytes still missing (when both are known)."""
    if content_length is None or not expected:
        return
    if not content_length.strip().isdigit() or int(content_length) != expected:
        _discard(partial, f"{label}: the server sends {content_length} bytes but {expected} are missing")


def _discard(partial: Path, reason: str) -> None:
    """Delete ``partial`` (bytes that cannot be trusted) and raise :class:`VerificationError`."""
    partial.unlink(missing_ok=True)
    raise VerificationError(f"{reason}; the partial file was deleted: run the download again")


def _verify(partial: Path, blob: Path, size: int, label: str) -> None:
    """The complete file has the listed size and, for LFS files (a sha256 ETag), the advertised sha256."""
    got = partial.stat().st_size if partial.exists() else 0
    if size and got != size:
        if got > size:
            _discard(partial, f"{label}: got {got} bytes, expected {size}")
        raise HubError(f"{label}: got {got} bytes of {size}; run the download again to resume")
    if len(blob.name) == 64:
        digest = hashlib.sha256()
        with partial.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != blob.name:
            _discard(partial, f"{label}: sha256 {digest.hexdigest()} does not match the Hub's {blob.name}")


def _link(blob: Path, pointer: Path) -> None:
    """Snapshot entry -> blob, as a relative symlink (a copy where symlinks are not allowed)."""
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:
        shutil.copy2(blob, pointer)


# -- cache ---------------------------------------------------------------------------------------


def _repo_size(repo_id: str) -> int:
    blobs = _storage(repo_id) / "blobs"
    return sum(p.stat().st_size for p in blobs.iterdir() if p.is_file()) if blobs.is_dir() else 0


def cached_state(spec_or_repo: ModelSpec | str) -> CacheState:
    """Whether all files a model needs are cached, without touching the network."""
    spec = _as_spec(spec_or_repo)
    if spec.head_format == "gguf-package":
        import importlib.util

        found = importlib.util.find_spec(spec.package or "")
        dirs = list(found.submodule_search_locations or []) if found else []
        files = [Path(d) / (spec.file or "") for d in dirs if (Path(d) / (spec.file or "")).is_file()]
        return CacheState(bool(files), files[0].stat().st_size if files else 0, 0, files[0].parent if files else None)
    if spec.head_format == "local":
        return CacheState(True, 0, 0, spec.local_path)
    roles = _roles(spec)
    on_disk = sum(_repo_size(r) for r, _, _ in roles)
    snapshots = [snapshot_dir(r, rev) for r, rev, _ in roles]
    complete = all(_snapshot_complete(s, role) for s, (_, _, role) in zip(snapshots, roles, strict=True))
    if spec.head_format == "auto" and (base := _auto_base(snapshots[0])) is not None:
        base_state = cached_state(ModelSpec(name=base, repo_id=base, head_format="medusa2-full")) if base else None
        complete = complete and base_state is not None and base_state.complete
        on_disk += base_state.size_on_disk if base_state else 0
    to_download = 0 if complete else max(spec.download_size - on_disk, 0)
    return CacheState(complete, on_disk, to_download, snapshots[0] if snapshots else None)


def local_files(spec_or_repo: ModelSpec | str) -> ModelFiles:
    """Local paths of a cached (or local) model, for the loader; raises when not cached."""
    spec = _as_spec(spec_or_repo)
    if spec.head_format == "gguf-package":
        return ModelFiles(None, spec.heads_dir())
    if spec.head_format == "local":
        base = spec.base_repo_id
        if base is None:
            return ModelFiles(spec.local_path, spec.local_path)
        model = Path(base).expanduser() if Path(base).expanduser().is_dir() else _require(base, "main", "model")
        return ModelFiles(model, spec.local_path)
    if spec.head_format == "medusa1-heads":
        heads = _require(spec.repo_id, spec.revision, "heads")
        return ModelFiles(_require(spec.base_repo_id, "main", "model"), heads)
    if spec.head_format == "auto" and (base := _auto_base(snapshot_dir(spec.repo_id, spec.revision))) is not None:
        return local_files(replace(spec, head_format="medusa1-heads", base_repo_id=base))
    model = _require(spec.repo_id, spec.revision, "model")
    return ModelFiles(model, model)


def _auto_base(snapshot: Path | None) -> str | None:
    """The base model named by a cached heads-only snapshot ("" when it names none), None for other repos."""
    if snapshot is None or not _is_heads_only(p.name for p in snapshot.iterdir()):
        return None
    base = _json_object(snapshot / "config.json").get("base_model_name_or_path", "")
    return base if isinstance(base, str) and REPO_RE.match(base) and ".." not in base else ""


def _require(repo_id: str, revision: str, role: str) -> Path:
    snapshot = snapshot_dir(repo_id, revision)
    if not _snapshot_complete(snapshot, role):
        raise HubError(f"{repo_id} is not (fully) downloaded: run `medusa-chat models download {repo_id}`")
    return snapshot


def remove(spec_or_repo: ModelSpec | str, keep_base: bool = False) -> int:
    """Delete a model's repos from the HF cache (the base too unless ``keep_base``); returns bytes freed."""
    spec = _as_spec(spec_or_repo)
    repos = [r for r, _, _ in _roles(spec)]
    if keep_base and spec.base_repo_id in repos:
        repos.remove(spec.base_repo_id)
    freed = 0
    for repo_id in repos:
        storage = _storage(repo_id)
        if storage.is_dir():
            freed += _repo_size(repo_id)
            shutil.rmtree(storage)
        shutil.rmtree(hub_cache_dir() / ".locks" / storage.name, ignore_errors=True)
    return freed

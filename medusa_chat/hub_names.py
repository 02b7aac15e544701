"""Hub names that become cache paths (commits, ETags, revisions, repo ids), checked before any path is built.

Torch- and network-free, so the catalogue can check its entries without importing the downloader.
"""

from __future__ import annotations

import re

from .errors import UserError

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_ETAG = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # a git blob sha1, or the sha256 of an LFS file
REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|//|@\{")


class HubError(UserError, RuntimeError):
    """A download that cannot go ahead; the message says what to do."""


class UnsafePathError(HubError):
    """A server- or user-supplied name (commit, ETag, revision, repo id, file name) that is malformed or would
    put a file outside the cache; nothing was written for it."""


def check_commit(commit: object, origin: str) -> str:
    """``commit`` if it is a full commit hash (40 lowercase hex characters), else :class:`UnsafePathError`."""
    if not isinstance(commit, str) or not COMMIT_RE.match(commit):
        raise UnsafePathError(f"{origin} sent {commit!r} as a commit hash (expected 40 hex characters); refusing it")
    return commit


def check_etag(etag: object, origin: str) -> str:
    """The hash an ETag carries (``"..."`` and ``W/`` removed): hex of 40 or 64 characters, else refused."""
    value = etag.strip().removeprefix("W/").strip('"').lower() if isinstance(etag, str) else etag
    if not isinstance(value, str) or not _ETAG.match(value):
        raise UnsafePathError(f"{origin} sent the ETag {etag!r}, which is not a file hash; refusing it")
    return value


def check_revision(revision: object) -> str:
    """``revision`` if it is a valid git ref name (branch, tag, ``refs/pr/N``) or commit, else refused."""
    ok = (
        isinstance(revision, str)
        and 0 < len(revision) <= 255
        and not _REF_FORBIDDEN.search(revision)
        and not revision.startswith("/")
        and not revision.endswith(("/", ".", ".lock"))
        and revision != "@"
        and not any(part.startswith(".") for part in revision.split("/"))
    )
    if not ok:
        raise UnsafePathError(f"{revision!r} is not a valid revision (a branch, tag or commit name)")
    return revision  # type: ignore[return-value]


def check_repo_id(repo_id: object) -> str:
    """``repo_id`` if it looks like ``owner/name``, else refused."""
    if not isinstance(repo_id, str) or not REPO_RE.match(repo_id) or ".." in repo_id:
        raise UnsafePathError(f"{repo_id!r} is not a Hub repo id (owner/name)")
    return repo_id

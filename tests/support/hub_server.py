"""An in-process fake of the Hugging Face Hub HTTP API, for end-to-end tests of pushes and loads without a network.

It speaks the part of the Hub API that ``huggingface_hub`` (``HfApi``, ``hf_hub_download``, ``snapshot_download``,
``HfFileSystem``) and ``datasets.load_dataset`` use: repo creation, git-like commits (preupload, LFS basic transfer,
NDJSON commit), refs, tags, branches, tree / paths-info listings and ``resolve`` downloads with HTTP Range support.

    with HubServer() as hub:
        api = HfApi(endpoint=hub.url, token="hf_test")
        api.create_repo("org/name", repo_type="dataset")
        ...
        # a subprocess reaches it with HF_ENDPOINT=hub.url (plus HF_HUB_DISABLE_XET=1 to upload through LFS)

State lives in memory and dies with the server. Any bearer token is accepted and recorded in ``tokens`` unless
``require_token`` is set. ``fail_next`` injects HTTP errors; ``requests`` logs what clients sent; ``leaks`` finds a
secret anywhere in that log outside the Authorization header.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from support.loopback import LoopbackServer, QuietHTTPServer

API_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SUFFIXES = frozenset(
    {"7z", "arrow", "avro", "bin", "bz2", "ckpt", "gif", "gz", "h5", "jpeg", "jpg", "joblib", "lance", "lz4"}
    | {"model", "msgpack", "npy", "npz", "onnx", "ot", "parquet", "pb", "pickle", "pkl", "png", "pt", "pth", "rar"}
    | {"safetensors", "tar", "tflite", "tgz", "webp", "wasm", "xz", "zip", "zst"}
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = b"".join(
    f"*.{suffix} filter=lfs diff=lfs merge=lfs -text\n".encode() for suffix in sorted(LFS_SUFFIXES)
)
COMMIT_OID = re.compile(r"[0-9a-f]{7,40}")
JSON_TYPE = "application/json"


def git_blob_oid(content: bytes) -> str:
    """Git's sha1 of a blob: the oid the Hub reports for a regular file (and for an LFS pointer)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in the git tree for an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def needs_lfs(path: str, size: int, sample: bytes, threshold: int = LFS_SIZE_THRESHOLD) -> bool:
    """Whether the Hub would store a file in LFS: a binary suffix, binary content or a size over the threshold."""
    if PurePosixPath(path).suffix.lstrip(".").lower() in LFS_SUFFIXES or size >= threshold or b"\0" in sample:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return False


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive byte span asked by a single-range ``Range`` header; None without one; ValueError if unsatisfiable."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0 or size == 0:
            raise ValueError(f"unsatisfiable range {header!r} for {size} bytes")
        return max(size - int(last), 0), size - 1
    start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError(f"unsatisfiable range {header!r} for {size} bytes")
    return start, end


def card_data(readme: bytes) -> dict[str, Any] | None:
    """The YAML front matter of a README.md, as the Hub returns it in ``cardData``; None when absent or invalid."""
    match = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", readme.decode("utf-8", errors="replace"), re.S)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def list_tree(paths: Iterable[str], base: str, recursive: bool) -> list[str]:
    """Folders then files directly under ``base`` (everything below it when ``recursive``), as repo paths."""
    prefix = f"{base}/" if base else ""
    folders, files = set(), set()
    for path in paths:
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        folders.update(
            prefix + "/".join(parts[:depth]) for depth in range(1, len(parts) if recursive else min(2, len(parts)))
        )
        if recursive or len(parts) == 1:
            files.add(path)
    return sorted(folders) + sorted(files)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class StoredFile:
    """One file of a commit's tree: its bytes, and whether git tracks it through an LFS pointer."""

    content: bytes
    lfs: bool

    @cached_property
    def sha256(self) -> str:
        """Hex sha256 of the content (the LFS oid)."""
        return hashlib.sha256(self.content).hexdigest()

    @cached_property
    def blob_id(self) -> str:
        """Git oid of what the tree stores: the content, or the LFS pointer."""
        return git_blob_oid(self.pointer if self.lfs else self.content)

    @property
    def pointer(self) -> bytes:
        """The LFS pointer file for this content."""
        return lfs_pointer(self.sha256, len(self.content))

    def entry(self, path: str) -> dict[str, Any]:
        """This file as a tree / paths-info entry."""
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": len(self.content), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": len(self.pointer)}
        return entry


@dataclass
class Commit:
    """A commit: oid, parent oid, the full tree (path -> file), title, message and ISO date."""

    oid: str
    parent: str | None
    files: dict[str, StoredFile]
    title: str
    message: str
    date: str

    def node_oid(self, path: str) -> str | None:
        """Oid of the file or folder at ``path`` (folders hash their contents), None when absent."""
        if path in self.files:
            return self.files[path].blob_id
        inside = sorted((p, f.blob_id) for p, f in self.files.items() if p.startswith(f"{path}/") or not path)
        return hashlib.sha1(json.dumps(inside).encode()).hexdigest() if inside else None


@dataclass
class Repo:
    """A repository: commits by oid, branch and tag heads, and the LFS objects uploaded to it."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        """Path of the repo's web / git URLs (``datasets/org/name`` for a dataset)."""
        return URL_PREFIXES[self.repo_type] + self.repo_id

    @property
    def object_id(self) -> str:
        """A stable 24-hex id, like the Hub's database ids (``_id``)."""
        return hashlib.sha1(self.url_path.encode()).hexdigest()[:24]

    def resolve(self, revision: str) -> Commit | None:
        """The commit a branch, tag, full ref (``refs/heads/x``, ``refs/tags/x``) or commit oid prefix points to."""
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if revision.startswith(prefix):
                return self.commits.get(refs.get(revision[len(prefix) :], ""))
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and COMMIT_OID.fullmatch(revision):
            matches = [known for known in self.commits if known.startswith(revision)]
            oid = matches[0] if len(matches) == 1 else None
        return self.commits.get(oid or "")

    def history(self, commit: Commit) -> list[Commit]:
        """``commit`` and its ancestors, newest first."""
        chain = [commit]
        while chain[-1].parent is not None:
            chain.append(self.commits[chain[-1].parent])
        return chain

    def read(self, path: str, revision: str = "main") -> bytes:
        """Bytes of ``path`` at ``revision``; KeyError when either is missing."""
        commit = self.resolve(revision)
        if commit is None:
            raise KeyError(f"revision {revision!r} not in {self.repo_id}")
        return commit.files[path].content


class _RequestLine(NamedTuple):
    method: str
    path: str
    headers: HTTPMessage


class RecordedRequest(_RequestLine):
    """A request as received: unpacks as ``(method, path, headers)``; ``body``, ``status`` and ``sent`` (response
    body bytes sent, 0 for HEAD) ride along.

    ``path`` is the raw request target, query string included; ``headers`` look up names case-insensitively
    (``huggingface_hub`` sends them lower-case).
    """

    body: bytes
    status: int
    sent: int

    def __new__(cls, method: str, path: str, headers: HTTPMessage, body: bytes = b"") -> RecordedRequest:
        self = super().__new__(cls, method, path, headers)
        self.body = body
        self.status = 0
        self.sent = 0
        return self


@dataclass
class _Fault:
    pattern: re.Pattern[str]
    status: int
    remaining: int
    method: str | None
    after: bool

    def error(self, request: _Request) -> HubError:
        return HubError(self.status, f"injected failure for {request.method} {request.path}")


@dataclass
class _Request:
    method: str
    path: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: HTTPMessage
    body: bytes
    token: str | None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    @property
    def is_lfs_upload(self) -> bool:
        """LFS PUTs go to what the Hub hands out as pre-signed storage URLs: clients send them no credentials."""
        return self.method == "PUT" and "/info/lfs/objects/" in self.path

    def flag(self, name: str) -> bool:
        return (self.query.get(name) or ["false"])[-1].lower() in {"1", "true", "yes"}


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
        body = json.dumps(payload, default=str).encode()
        return cls(status, {"Content-Type": JSON_TYPE, **(headers or {})}, body)


class HubError(Exception):
    """An HTTP error answered the way the Hub does: JSON ``{"error": ...}`` plus ``X-Error-Code``/``-Message``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}

    def response(self) -> _Response:
        """The HTTP response carrying this error."""
        headers = {**self.headers, "X-Error-Message": self.message.encode("ascii", "replace").decode()}
        if self.code:
            headers["X-Error-Code"] = self.code
        return _Response.json({"error": self.message}, self.status, headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.hub._serve(self)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (``HubServer.requests`` has it)."""

    def read_body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)

    def send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)


class _Server(QuietHTTPServer):
    def __init__(self, address: tuple[str, int], hub: HubServer):
        super().__init__(address, _Handler)
        self.hub = hub


_RepoRoute = Callable[["HubServer", _Request, Repo, list[str]], _Response]


class HubServer(LoopbackServer):
    """A fake Hub on a loopback port; a context manager that starts and stops it.

    Args:
        require_token: when set, any request whose bearer token differs (or is missing) gets 401, except LFS
            uploads, which real clients send without credentials (they go to pre-signed storage URLs).
        lfs_threshold: files at least this large go through LFS (the Hub's limit for regular files is 10 MiB);
            files with a binary suffix (``.parquet``, ``.png``, ``.jpg``...) or binary content always do.
        user: namespace for repos created without one, and the author of every commit.
        host, port: where to listen; port 0 picks a free one.
    """

    thread_name = "fake-hub"

    def __init__(
        self,
        *,
        require_token: str | None = None,
        lfs_threshold: int = LFS_SIZE_THRESHOLD,
        user: str = "fake-user",
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.require_token = require_token
        self.lfs_threshold = lfs_threshold
        self.user = user
        self.requests: list[RecordedRequest] = []
        self.tokens: set[str] = set()
        self.repos: dict[tuple[str, str], Repo] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._init_loopback(host, port)

    def _make_server(self, address: tuple[str, int]) -> _Server:
        return _Server(address, self)

    def client_env(self) -> dict[str, str]:
        """Environment that points ``huggingface_hub`` / ``datasets`` in a subprocess here, and nowhere else.

        Xet is off so uploads take the LFS route; telemetry is off (else huggingface_hub fetches an agent registry
        for its user agent) and so are datasets' download counts (else each load HEADs s3.amazonaws.com).
        """
        return {
            "HF_ENDPOINT": self.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        }

    def fail_next(
        self, pattern: str, status: int = 500, times: int = 1, method: str | None = None, after: bool = False
    ) -> None:
        """Answer the next ``times`` requests whose URL path (no query) matches regex ``pattern`` with ``status``.

        By default the failing request changes nothing; with ``after=True`` it is carried out first and only the
        answer is an error (a response lost on its way back). Clients retry some calls with backoff (1 s, 2 s, 4 s...)
        on 408/429/5xx and network errors: preupload, LFS batch, PUT and verify do, the commit POST does not; to make
        a retried call fail fast, use a 4xx such as 403.
        """
        with self._lock:
            self._faults.append(_Fault(re.compile(pattern), status, times, method and method.upper(), after))

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        """The stored repo, to inspect branches, tags, commits and file bytes; KeyError when missing."""
        return self.repos[(repo_type, repo_id)]

    def calls(self, pattern: str, method: str | None = None) -> list[RecordedRequest]:
        """Logged requests whose URL path matches regex ``pattern`` (and ``method``, if given)."""
        regex = re.compile(pattern)
        return [
            r
            for r in list(self.requests)
            if regex.search(urlsplit(r.path).path) and (method is None or r.method == method.upper())
        ]

    def bytes_sent(self, pattern: str) -> int:
        """Response body bytes sent for logged requests whose URL path matches regex ``pattern``."""
        return sum(r.sent for r in self.calls(pattern))

    def leaks(self, secret: str) -> list[str]:
        """Where ``secret`` shows in logged traffic outside an Authorization header; empty when it never does."""
        found = []
        for r in list(self.requests):
            if secret in unquote(r.path):
                found.append(f"{r.method} {r.path}: URL")
            found.extend(
                f"{r.method} {r.path}: header {name}"
                for name, value in r.headers.items()
                if name.lower() != "authorization" and secret in value
            )
            if secret.encode() in r.body:
                found.append(f"{r.method} {r.path}: body")
        return found

    def _serve(self, handler: _Handler) -> None:
        body = handler.read_body()
        split = urlsplit(handler.path)
        record = RecordedRequest(handler.command, handler.path, handler.headers, body)
        auth = handler.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        request = _Request(
            method=handler.command,
            path=split.path,
            segments=[unquote(s) for s in split.path.strip("/").split("/")],
            query=parse_qs(split.query, keep_blank_values=True),
            headers=handler.headers,
            body=body,
            token=token,
        )
        with self._lock:
            self.requests.append(record)
            if token:
                self.tokens.add(token)
            fault = self._take_fault(request)
            try:
                if fault is not None and not fault.after:
                    raise fault.error(request)
                self._check_token(request)
                response = self._route(request)
                if fault is not None:
                    raise fault.error(request)
            except HubError as err:
                response = err.response()
            except Exception as err:  # a bug in the fake must reach the client as a 500, not as a hung connection
                response = HubError(500, f"fake hub crashed: {type(err).__name__}: {err}").response()
            record.status = response.status
            record.sent = 0 if handler.command == "HEAD" else len(response.body)
        handler.send(response)

    def _take_fault(self, request: _Request) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.method in (None, request.method) and fault.pattern.search(request.path):
                fault.remaining -= 1
                return fault
        return None

    def _check_token(self, request: _Request) -> None:
        if self.require_token is not None and request.token != self.require_token and not request.is_lfs_upload:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _route(self, request: _Request) -> _Response:
        segments, method = request.segments, request.method
        if segments[0] == "api":
            return self._route_api(request, segments[1:])
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(segments[0], "model")
        rest = segments[1:] if repo_type != "model" else segments
        if "resolve" in rest[1:3] and method in ("GET", "HEAD"):
            at = rest.index("resolve")
            repo = self._find_repo(request, repo_type, rest[:at])
            return self._resolve(request, repo, rest[at + 1] if len(rest) > at + 1 else "", "/".join(rest[at + 2 :]))
        git = next((i for i, part in enumerate(rest[:2]) if part.endswith(".git")), None)
        if git is not None and rest[git + 1 : git + 4] == ["info", "lfs", "objects"] and len(rest) == git + 5:
            repo = self._find_repo(request, repo_type, [*rest[:git], rest[git][: -len(".git")]])
            action = rest[-1]
            if action == "batch" and method == "POST":
                return self._lfs_batch(request, repo)
            if action == "verify" and method == "POST":
                return self._lfs_verify(request, repo)
            if method == "PUT":
                return self._lfs_upload(request, repo, action)
        raise HubError(404, f"Not found: {method} {request.path}")

    def _route_api(self, request: _Request, segments: list[str]) -> _Response:
        method = request.method
        if segments == ["repos", "create"] and method == "POST":
            return self._create_repo(request)
        if segments == ["repos", "delete"] and method in ("POST", "DELETE"):
            return self._delete_repo(request)
        if segments == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(request)
        if segments == ["agent-harnesses"] and method == "GET":  # fetched for the user agent unless telemetry is off
            return _Response.json({"standardEnvVars": [], "harnesses": {}})
        if segments == ["whoami-v2"] and method == "GET":
            if request.token is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            return _Response.json({"type": "user", "name": self.user, "fullname": self.user, "orgs": []})
        if any(part in ("xet-write-token", "xet-read-token") for part in segments):
            raise HubError(400, "the fake Hub does not speak Xet: set HF_HUB_DISABLE_XET=1 (see HubServer.client_env)")
        if segments[0] in API_REPO_TYPES and len(segments) > 1:
            repo_type = API_REPO_TYPES[segments[0]]
            namespaced = len(segments) > 2 and (repo_type, "/".join(segments[1:3])) in self.repos
            split = 3 if namespaced or (len(segments) > 2 and segments[2] not in _REPO_ROUTE_NAMES) else 2
            repo = self._find_repo(request, repo_type, segments[1:split])
            action, args = (segments[split], segments[split + 1 :]) if len(segments) > split else ("", [])
            route = _REPO_ROUTES.get((method, action))
            if route is not None:
                return route(self, request, repo, args)
        raise HubError(404, f"Not found: {method} {request.path}")

    def _find_repo(self, request: _Request, repo_type: str, id_parts: list[str]) -> Repo:
        repo = self.repos.get((repo_type, "/".join(id_parts)))
        if repo is None or (repo.private and request.token is None and not request.is_lfs_upload):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision or "main")
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    def _new_commit(
        self, repo: Repo, parent: str | None, files: dict[str, StoredFile], title: str, message: str
    ) -> Commit:
        fingerprint = [parent, title, message, next(self._counter), sorted((p, f.blob_id) for p, f in files.items())]
        oid = hashlib.sha1(json.dumps(fingerprint).encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, files, title, message, _now())
        return repo.commits[oid]

    def _path_entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any] | None:
        oid = commit.node_oid(path)
        if oid is None:
            return None
        stored = commit.files.get(path)
        entry = stored.entry(path) if stored else {"type": "directory", "oid": oid, "size": 0, "path": path}
        if expand:
            last = commit
            for older in repo.history(commit)[1:]:
                if older.node_oid(path) != oid:
                    break
                last = older
            entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return entry

    def _create_repo(self, request: _Request) -> _Response:
        payload = request.json()
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return _Response.json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        repo = Repo(repo_type, repo_id, private, _now())
        initial = self._new_commit(
            repo, None, {".gitattributes": StoredFile(GITATTRIBUTES, False)}, "initial commit", ""
        )
        repo.branches["main"] = initial.oid
        self.repos[(repo_type, repo_id)] = repo
        return _Response.json({"url": url, "name": repo_id, "id": repo.object_id})

    def _delete_repo(self, request: _Request) -> _Response:
        payload = request.json()
        key = (payload.get("type") or "model", f"{payload.get('organization') or self.user}/{payload['name']}")
        if self.repos.pop(key, None) is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return _Response.json({})

    def _validate_yaml(self, request: _Request) -> _Response:
        content = str(request.json().get("content", ""))
        match = re.match(r"---[ \t]*\r?\n(.*?)\r?\n---", content, re.S)
        try:
            if match is not None:
                yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            return _Response.json({"errors": [{"message": str(err)}], "warnings": []}, 400)
        return _Response.json({"errors": [], "warnings": []})

    def _repo_info(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        commit = self._commit_at(repo, "/".join(args))
        blobs = request.flag("blobs")
        siblings = []
        for path in sorted(commit.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                stored = commit.files[path]
                sibling.update(size=len(stored.content), blobId=stored.blob_id)
                if stored.lfs:
                    sibling["lfs"] = {
                        "sha256": stored.sha256,
                        "size": len(stored.content),
                        "pointerSize": len(stored.pointer),
                    }
            siblings.append(sibling)
        card = card_data(commit.files["README.md"].content) if "README.md" in commit.files else None
        tags = card.get("tags") if card and isinstance(card.get("tags"), list) else []
        info: dict[str, Any] = {
            "_id": repo.object_id,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "cardData": card,
            "siblings": siblings,
            "usedStorage": sum(len(f.content) for f in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        expand = request.query.get("expand", []) + request.query.get("expand[]", [])
        if expand:
            info = {key: value for key, value in info.items() if key in {"_id", "id", *expand}}
        return _Response.json(info)

    def _tree(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        commit = self._commit_at(repo, args[0] if args else "main")
        base = "/".join(args[1:]).strip("/")
        if base and (base in commit.files or commit.node_oid(base) is None):
            raise HubError(404, f"Folder not found: {base}", code="EntryNotFound")
        paths = list_tree(commit.files, base, request.flag("recursive"))
        expand = request.flag("expand")
        return _Response.json([self._path_entry(repo, commit, path, expand) for path in paths])

    def _paths_info(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        commit = self._commit_at(repo, "/".join(args))
        if request.headers.get("Content-Type", "").startswith(JSON_TYPE):
            payload = request.json()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(request.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[-1].lower() in {"1", "true"}
        entries = [self._path_entry(repo, commit, path.strip("/"), expand) for path in paths]
        return _Response.json([entry for entry in entries if entry is not None])

    def _preupload(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        commit = self._commit_at(repo, "/".join(args))
        files = []
        for item in request.json().get("files", []):
            lfs = needs_lfs(item["path"], int(item["size"]), base64.b64decode(item["sample"]), self.lfs_threshold)
            existing = commit.files.get(item["path"])
            oid = None if existing is None else existing.sha256 if existing.lfs else existing.blob_id
            files.append(
                {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return _Response.json({"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, request: _Request, repo: Repo) -> _Response:
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "the fake Hub only implements LFS uploads")
        href = f"{self.url}/{repo.url_path}.git/info/lfs/objects"
        objects = []
        for item in payload.get("objects", []):
            obj: dict[str, Any] = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in repo.lfs_objects:
                obj["actions"] = {
                    "upload": {"href": f"{href}/{item['oid']}", "expires_in": 3600},
                    "verify": {"href": f"{href}/verify", "header": {}},
                }
            objects.append(obj)
        body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return _Response.json(body, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, request: _Request, repo: Repo, oid: str) -> _Response:
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            raise HubError(400, f"Invalid LFS oid: {oid}")
        if hashlib.sha256(request.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}")
        repo.lfs_objects[oid] = request.body
        return _Response(200)

    def _lfs_verify(self, request: _Request, repo: Repo) -> _Response:
        payload = request.json()
        stored = repo.lfs_objects.get(payload.get("oid", ""))
        if stored is None or len(stored) != payload.get("size"):
            raise HubError(422, f"LFS object {payload.get('oid')} was not uploaded (or has another size)")
        return _Response.json({"success": True})

    def _commit(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        if request.flag("create_pr"):
            raise HubError(400, "the fake Hub does not implement pull requests (create_pr)")
        branch = "/".join(args).removeprefix("refs/heads/") or "main"
        if branch not in repo.branches:
            if repo.resolve(branch) is not None:
                raise HubError(400, f"Can only commit to a branch, not to {branch}")
            raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        try:
            lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"The commit payload is not NDJSON: {err}") from err
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header, parent = lines[0]["value"], repo.branches[branch]
        expected_parent = header.get("parentCommit")
        if expected_parent and not parent.startswith(expected_parent):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[parent].files)
        for line in lines[1:]:
            self._apply(repo, files, line.get("key"), line.get("value") or {})
        commit = self._new_commit(repo, parent, files, header.get("summary", ""), header.get("description", ""))
        repo.branches[branch] = commit.oid
        commit_url = f"{self.url}/{repo.url_path}/commit/{commit.oid}"
        return _Response.json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": commit_url,
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    def _apply(self, repo: Repo, files: dict[str, StoredFile], key: str | None, value: dict[str, Any]) -> None:
        path = str(value.get("path", "")).strip("/")
        if key == "file":
            content = value.get("content", "")
            data = base64.b64decode(content) if value.get("encoding") == "base64" else str(content).encode()
            files[path] = StoredFile(data, lfs=False)
        elif key == "lfsFile":
            data = repo.lfs_objects.get(value.get("oid", ""))
            if data is None or value.get("size", len(data)) != len(data):
                raise HubError(422, f"LFS pointer for {path} points to an object that was not uploaded")
            files[path] = StoredFile(data, lfs=True)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
        elif key == "deletedFolder":
            inside = [p for p in files if p.startswith(f"{path}/") or not path]
            if not inside:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
            for p in inside:
                del files[p]
        else:
            raise HubError(400, f"Unknown commit operation: {key}")

    def _refs(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        def refs(kind: str, heads: dict[str, str]) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": heads[n]} for n in sorted(heads)]

        body = {"branches": refs("heads", repo.branches), "converts": [], "tags": refs("tags", repo.tags)}
        return _Response.json({**body, "pullRequests": []})

    def _create_tag(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        commit = self._commit_at(repo, "/".join(args))
        tag = str(request.json().get("tag", ""))
        if not tag:
            raise HubError(400, "Missing tag name")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = commit.oid
        return _Response.json({})

    def _delete_tag(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        if repo.tags.pop("/".join(args), None) is None:
            raise HubError(404, f"Invalid rev id: {'/'.join(args)}", code="RevisionNotFound")
        return _Response.json({})

    def _create_branch(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        branch = "/".join(args)
        if branch in repo.branches:
            raise HubError(409, f"Branch {branch} already exists")
        repo.branches[branch] = self._commit_at(repo, request.json().get("startingPoint") or "main").oid
        return _Response.json({})

    def _delete_branch(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        branch = "/".join(args)
        if branch == "main":
            raise HubError(403, "Cannot delete the default branch")
        if repo.branches.pop(branch, None) is None:
            raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        return _Response.json({})

    def _list_commits(self, request: _Request, repo: Repo, args: list[str]) -> _Response:
        author = [{"user": self.user, "avatar": ""}]
        history = repo.history(self._commit_at(repo, "/".join(args)))
        return _Response.json(
            [{"id": c.oid, "title": c.title, "message": c.message, "authors": author, "date": c.date} for c in history]
        )

    def _resolve(self, request: _Request, repo: Repo, revision: str, path: str) -> _Response:
        commit = self._commit_at(repo, revision)
        headers = {"X-Repo-Commit": commit.oid}
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound", headers=headers)
        size, etag = len(stored.content), f'"{stored.sha256 if stored.lfs else stored.blob_id}"'
        headers.update({"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
        if stored.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(size)})
        try:
            span = parse_range(request.headers.get("Range"), size)
        except ValueError as err:
            raise HubError(416, str(err), headers={**headers, "Content-Range": f"bytes */{size}"}) from err
        if span is None:
            return _Response(200, headers, stored.content)
        start, end = span
        return _Response(
            206, {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}, stored.content[start : end + 1]
        )


_REPO_ROUTES: dict[tuple[str, str], _RepoRoute] = {
    ("GET", ""): HubServer._repo_info,
    ("GET", "revision"): HubServer._repo_info,
    ("GET", "tree"): HubServer._tree,
    ("POST", "paths-info"): HubServer._paths_info,
    ("POST", "preupload"): HubServer._preupload,
    ("POST", "commit"): HubServer._commit,
    ("GET", "refs"): HubServer._refs,
    ("POST", "tag"): HubServer._create_tag,
    ("DELETE", "tag"): HubServer._delete_tag,
    ("POST", "branch"): HubServer._create_branch,
    ("DELETE", "branch"): HubServer._delete_branch,
    ("GET", "commits"): HubServer._list_commits,
}
_REPO_ROUTE_NAMES = {action for _, action in _REPO_ROUTES} | {"parquet", "treesize", "lfs-files", "discussions"}


def point_clients_at(server: HubServer, hf_home: Path, monkeypatch: Any) -> None:
    """Aim HF_* (for this process and its children) at ``server``, with a throwaway HF_HOME and no ambient token.

    ``monkeypatch`` is pytest's fixture: everything is undone after the test.
    """
    from huggingface_hub import constants

    for name, value in {**server.client_env(), "HF_HOME": str(hf_home)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub read the environment at import time: patch its constants too, so that a call missing
    # `endpoint=` still lands here rather than on huggingface.co (the tests pass `endpoint=` all the same).
    for name, value in {
        "ENDPOINT": server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_CACHE": str(hf_home / "hub"),
    }.items():
        monkeypatch.setattr(constants, name, value)


def dataset_repo(server: HubServer, repo_id: str, files: dict[str, Path], token: str = "hf_test") -> Any:
    """Create the dataset repo ``repo_id`` on ``server`` and upload ``files`` (path in the repo → local file) with
    ``huggingface_hub``, one commit a file, in order; returns the ``HfApi`` client for more."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=token)
    api.create_repo(repo_id, repo_type="dataset")
    for path_in_repo, local in files.items():
        api.upload_file(path_or_fileobj=local, path_in_repo=path_in_repo, repo_id=repo_id, repo_type="dataset")
    return api

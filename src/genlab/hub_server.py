"""A Hub-compatible HTTP server on 127.0.0.1, for offline push/pull (SPEC H4).

``LocalHubServer`` speaks the part of the Hugging Face Hub API that ``huggingface_hub`` needs to create a repo,
commit files and download them, so ``model.push_to_hub`` / ``from_pretrained(repo_id)`` / ``hf_hub_download`` can
be exercised end to end without a network::

    from genlab.hub_server import LocalHubServer

    with LocalHubServer() as hub:               # free port on 127.0.0.1, repos in a temporary directory
        api = HfApi(endpoint=hub.endpoint)      # or HF_ENDPOINT=hub.endpoint before importing huggingface_hub
        api.create_repo("me/tiny")
        api.upload_folder(folder_path="runs/tiny", repo_id="me/tiny")
        hf_hub_download("me/tiny", "config.json", endpoint=hub.endpoint)

From a shell: ``python -m genlab.hub_server --port 8765`` serves until Ctrl-C.

What it implements (and nothing more): ``POST /api/repos/create``, ``POST /api/{type}s/{id}/preupload/{rev}``
(every file is answered ``uploadMode: "regular"``, so clients send contents inline and never use LFS or Xet),
``POST /api/{type}s/{id}/commit/{rev}`` (NDJSON lines ``header`` / ``file`` (base64) / ``deletedFile`` /
``deletedFolder``), ``POST /api/{type}s/{id}/branch/{branch}``, ``POST /api/validate-yaml``,
``GET /api/{type}s/{id}[/revision/{rev}]`` (``sha`` + ``siblings``), ``GET /api/{type}s/{id}/tree/{rev}[/{path}]``
(``?recursive=true``) and ``HEAD|GET /[{type}s/]{id}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``,
``Content-Length``, byte ranges). Unknown repos, revisions and files answer 404 with the ``X-Error-Code`` the client
maps to ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` / ``EntryNotFoundError``. History is linear per
branch; every commit keeps a full snapshot, so old commit shas stay downloadable. No auth: tokens are ignored and a
repo created without a namespace lands in ``local-user/``. It binds to the loopback interface only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import hashlib
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LocalHubServer"]

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_CHUNK = 1 << 20
_INITIAL_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


class HubError(Exception):
    """An HTTP error answered the way the Hub does: status, ``X-Error-Code`` and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass(frozen=True)
class _Blob:
    git_oid: str  # sha1 of "blob {size}\0{content}", as git computes it: the ETag and the tree `oid`
    sha256: str  # name of the content file in the blob store
    size: int


@dataclass
class _Commit:
    oid: str
    parent: str | None
    title: str
    date: str
    files: dict[str, _Blob]  # full snapshot: path -> blob


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit oid


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class _HubStore:
    """Repos, commits and content-addressed blobs. Every method takes the lock; blob files are immutable."""

    def __init__(self, root: Path, namespace: str):
        self.root, self.namespace = root, namespace
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.lock = threading.Lock()
        self._seq = 0

    def put_blob(self, content: bytes) -> _Blob:
        sha256 = hashlib.sha256(content).hexdigest()
        path = self.root / "blobs" / sha256
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(content)
            tmp.replace(path)
        git_oid = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        return _Blob(git_oid=git_oid, sha256=sha256, size=len(content))

    def blob_path(self, blob: _Blob) -> Path:
        return self.root / "blobs" / blob.sha256

    def create_repo(self, repo_type: str, name: str, organization: str | None, private: bool) -> _Repo:
        if not name or "/" in name:
            raise HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{organization or self.namespace}/{name}"
        gitattributes = self.put_blob(_INITIAL_GITATTRIBUTES)
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            self.repos[(repo_type, repo_id)] = repo
            self._add_commit(repo, "main", None, "initial commit", {".gitattributes": gitattributes})
        return repo

    def get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def resolve(self, repo: _Repo, revision: str) -> _Commit:
        """A branch name or a commit sha (full, or a unique prefix of at least 7 characters) -> commit."""
        oid = repo.branches.get(revision)
        if oid is None and len(revision) >= 7:
            matches = [c for c in repo.commits if c.startswith(revision)]
            oid = matches[0] if len(matches) == 1 else None
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _add_commit(self, repo: _Repo, branch: str, parent: str | None, title: str, files: dict) -> _Commit:
        self._seq += 1
        digest = hashlib.sha1(json.dumps([self._seq, repo.repo_id, parent, title, sorted(
            (path, blob.git_oid) for path, blob in files.items())]).encode()).hexdigest()
        commit = _Commit(oid=digest, parent=parent, title=title, date=_now(), files=files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def commit(self, repo_type: str, repo_id: str, branch: str, lines: list[dict]) -> _Commit:
        """Apply one NDJSON commit payload to the head of ``branch`` (blobs are written before taking the lock)."""
        header: dict = {}
        additions: dict[str, _Blob] = {}
        deletions: list[tuple[str, bool]] = []  # (path, is_folder)
        for line in lines:
            key, value = line.get("key"), line.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported file encoding {value.get('encoding')!r}; use base64")
                try:
                    additions[_clean_path(value["path"])] = self.put_blob(base64.b64decode(value["content"]))
                except (KeyError, binascii.Error) as error:
                    raise HubError(400, f"malformed file line: {error}") from error
            elif key in ("deletedFile", "deletedFolder"):
                deletions.append((_clean_path(value.get("path", "")), key == "deletedFolder"))
            elif key == "lfsFile":
                raise HubError(400, "LFS files are not supported: preupload answers uploadMode 'regular' for all")
            else:
                raise HubError(400, f"unknown commit line key {key!r}")
        with self.lock:
            repo = self.get_repo(repo_type, repo_id)
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to an existing branch)", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != head.oid:
                raise HubError(412, f"A commit has happened since {parent_commit}: the head of {branch} is {head.oid}")
            files = dict(head.files)
            for path, is_folder in deletions:
                doomed = [p for p in files if p == path or (is_folder and p.startswith(path.rstrip("/") + "/"))]
                if not doomed:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            files.update(additions)
            return self._add_commit(repo, branch, head.oid, header.get("summary") or "commit", files)

    def create_branch(self, repo_type: str, repo_id: str, branch: str, starting_point: str | None) -> None:
        with self.lock:
            repo = self.get_repo(repo_type, repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: {branch}")
            repo.branches[branch] = self.resolve(repo, starting_point or "main").oid


def _clean_path(path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise HubError(400, f"invalid path in repo: {path!r}")
    return "/".join(parts)


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; the server instance carries the store (``self.server.hub``)."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is closed after this many seconds
    server: _HubHTTPServer

    # -- plumbing -------------------------------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # silence stderr; keep a bounded log instead
        pass

    def _dispatch(self, method: str) -> None:
        self._is_head = method == "HEAD"
        url = urlsplit(self.path)
        self._query = parse_qs(url.query)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        status = 500
        try:
            status = self._route(method, segments)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except HubError as error:
            status = error.status
            self._send_error(error)
        except Exception as error:  # a server bug: answer 500 with the reason instead of dropping the socket
            self._send_error(HubError(500, f"{type(error).__name__}: {error}"))
        finally:
            self.server.hub.request_log.append((method, self.path, status))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise HubError(411, "a numeric Content-Length is required")
        size = int(length)
        if size > self.server.hub.max_body_bytes:
            raise HubError(413, f"request body of {size} bytes exceeds the limit of {self.server.hub.max_body_bytes}")
        return self.rfile.read(size)

    def _read_json(self):
        try:
            return json.loads(self._read_body() or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"request body is not JSON: {error}") from error

    def _send(self, status: int, body: bytes, headers: dict | None = None, content_type="application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not self._is_head:
            self.wfile.write(body)

    def _send_json(self, obj, status: int = 200, headers: dict | None = None) -> int:
        self._send(status, json.dumps(obj).encode(), headers)
        return status

    def _send_error(self, error: HubError) -> None:
        # The request body may be unread: close the connection so it cannot be taken for the next request.
        self.close_connection = True
        headers = {"Connection": "close", "X-Error-Message": error.message.encode("ascii", "replace").decode(),
                   **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._send(error.status, json.dumps({"error": error.message}).encode(), headers)

    # -- routing --------------------------------------------------------------------------------------------
    def _route(self, method: str, seg: list[str]) -> int:
        hub = self.server.hub
        if seg[:1] == ["api"]:
            if seg[1:] == ["repos", "create"] and method == "POST":
                return self._create_repo()
            if seg[1:] == ["validate-yaml"] and method == "POST":
                return self._validate_yaml()
            if len(seg) == 3 and seg[1] in _REPO_TYPES:  # a repo id without a namespace is never created here
                raise HubError(404, f"Repository not found: {seg[2]}", "RepoNotFound")
            if len(seg) >= 4 and seg[1] in _REPO_TYPES:
                repo_type, repo_id, rest = _REPO_TYPES[seg[1]], "/".join(seg[2:4]), seg[4:]
                with hub.store.lock:
                    repo = hub.store.get_repo(repo_type, repo_id)
                if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
                    return self._repo_info(repo, rest[1] if rest else "main")
                if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                    return self._tree(repo, rest[1], "/".join(rest[2:]))
                if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                    return self._preupload(repo, rest[1])
                if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                    return self._commit(repo, rest[1])
                if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                    payload = self._read_json()
                    hub.store.create_branch(repo_type, repo_id, rest[1], payload.get("startingPoint"))
                    return self._send_json({})
            raise HubError(404, f"no such endpoint on LocalHubServer: {method} {self.path}")
        repo_type = "model"
        if seg and seg[0] in ("datasets", "spaces"):
            repo_type, seg = _REPO_TYPES[seg[0]], seg[1:]
        if method in ("GET", "HEAD") and len(seg) >= 5 and seg[2] == "resolve":
            return self._resolve(repo_type, "/".join(seg[:2]), seg[3], "/".join(seg[4:]))
        if method in ("GET", "HEAD") and len(seg) >= 4 and seg[1] == "resolve":  # a repo id without a namespace
            raise HubError(404, f"Repository not found: {seg[0]}", "RepoNotFound")
        raise HubError(404, f"no such endpoint on LocalHubServer: {method} {self.path}")

    # -- endpoints ------------------------------------------------------------------------------------------
    def _create_repo(self) -> int:
        payload = self._read_json()
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"repo type must be one of {sorted(_URL_PREFIX)}, got {repo_type!r}")
        hub = self.server.hub
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        try:
            repo = hub.store.create_repo(repo_type, payload.get("name", ""), payload.get("organization"), private)
        except HubError as error:
            if error.status == 409:  # the Hub answers the existing repo's url with the conflict
                repo_id = f"{payload.get('organization') or hub.store.namespace}/{payload.get('name')}"
                url = f"{hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
                return self._send_json({"error": error.message, "url": url}, status=409)
            raise
        return self._send_json({"url": f"{hub.endpoint}/{_URL_PREFIX[repo_type]}{repo.repo_id}", "name": repo.repo_id})

    def _validate_yaml(self) -> int:
        content = self._read_json().get("content", "")
        errors = []
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end < 0:
                errors.append({"message": "the YAML metadata block is not closed by '---'"})
            else:
                try:  # PyYAML comes with huggingface_hub; without it the block is accepted unchecked
                    import yaml

                    metadata = yaml.safe_load(content[3:end])
                    if metadata is not None and not isinstance(metadata, dict):
                        errors.append({"message": "the YAML metadata must be a mapping"})
                except ImportError:
                    pass
                except yaml.YAMLError as error:
                    errors.append({"message": f"invalid YAML: {error}"})
        return self._send_json({"errors": errors, "warnings": []}, status=400 if errors else 200)

    def _repo_info(self, repo: _Repo, revision: str) -> int:
        with self.server.hub.store.lock:
            commit = self.server.hub.store.resolve(repo, revision)
        author = repo.repo_id.split("/")[0]
        siblings = [{"rfilename": p, "size": b.size, "blobId": b.git_oid} for p, b in sorted(commit.files.items())]
        return self._send_json({
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "author": author, "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings,
        })

    def _tree(self, repo: _Repo, revision: str, path: str) -> int:
        with self.server.hub.store.lock:
            commit = self.server.hub.store.resolve(repo, revision)
        recursive = self._query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries: dict[str, dict] = {}
        for file_path, blob in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders between the listed path and the file
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    oid = hashlib.sha1(f"{commit.oid}:{folder}".encode()).hexdigest()
                    entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entries[file_path] = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": file_path}
        if prefix and not entries:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        return self._send_json(list(entries.values()))

    def _preupload(self, repo: _Repo, revision: str) -> int:
        payload = self._read_json()
        with self.server.hub.store.lock:
            head = repo.commits.get(repo.branches.get(revision, ""))
        files = []
        for item in payload.get("files", []):
            remote = head.files.get(item.get("path", "")) if head is not None else None
            files.append({"path": item.get("path"), "uploadMode": "regular", "shouldIgnore": False,
                          "oid": remote.git_oid if remote else None})
        return self._send_json({"files": files, "commitOid": head.oid if head else None})

    def _commit(self, repo: _Repo, revision: str) -> int:
        if self._query.get("create_pr", ["0"])[0] in ("1", "true"):
            raise HubError(400, "pull requests are not supported by LocalHubServer; commit to a branch instead")
        body = self._read_body()
        try:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise HubError(400, f"commit payload is not NDJSON: {error}") from error
        hub = self.server.hub
        commit = hub.store.commit(repo.repo_type, repo.repo_id, revision, lines)
        url = f"{hub.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return self._send_json({"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": "",
                                "pullRequestUrl": None})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> int:
        store = self.server.hub.store
        with store.lock:
            commit = store.resolve(store.get_repo(repo_type, repo_id), revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        start, end = 0, blob.size - 1
        status = 200
        byte_range = self.headers.get("Range", "")
        if byte_range.startswith("bytes=") and "," not in byte_range and blob.size > 0:
            first, _, last = byte_range[6:].partition("-")
            if first.isdigit() and int(first) < blob.size:
                start, end = int(first), min(int(last), blob.size - 1) if last.isdigit() else blob.size - 1
                status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1 if blob.size else 0))
        self.send_header("ETag", f'"{blob.git_oid}"')
        self.send_header("X-Repo-Commit", commit.oid)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{blob.size}")
        self.end_headers()
        if not self._is_head and blob.size:
            with open(store.blob_path(blob), "rb") as f:
                f.seek(start)
                remaining = end - start + 1
                while remaining > 0:  # bounded by the blob size
                    chunk = f.read(min(_CHUNK, remaining))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
        return status


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHubServer


class LocalHubServer:
    """A Hub-compatible server on 127.0.0.1 (SPEC H4); see the module docstring for the endpoints.

    Args:
        root: directory for the blob store; a temporary directory (removed by ``stop``) when omitted.
        port: TCP port; 0 (default) picks a free one. The server always binds to 127.0.0.1.
        namespace: owner of repos created without one (``create_repo("tiny")`` -> ``local-user/tiny``).
        max_body_bytes: largest accepted request body (a commit carries its files inline, base64).

    Use as a context manager, or call ``start()`` / ``stop()``. ``endpoint`` is ``http://127.0.0.1:PORT``;
    ``request_log`` holds the last requests as ``(method, path, status)``; ``list_files(repo_id)`` shows a repo.
    """

    def __init__(self, root: str | Path | None = None, *, port: int = 0, namespace: str = "local-user",
                 max_body_bytes: int = 4 << 30):
        self._root_arg, self._port_arg = root, port
        self.namespace, self.max_body_bytes = namespace, max_body_bytes
        self.request_log: collections.deque = collections.deque(maxlen=2000)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.store: _HubStore | None = None

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("LocalHubServer is not running: call start() or use it as a context manager")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> LocalHubServer:
        if self._httpd is not None:
            return self
        if self._root_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="genlab-hub-")
            root = Path(self._tmp.name)
        else:
            root = Path(self._root_arg)
        self.store = _HubStore(root, self.namespace)
        self._httpd = _HubHTTPServer(("127.0.0.1", self._port_arg), _Handler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="genlab-local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, int]:
        """``{path: size}`` of a repo at ``revision`` (raises ``KeyError`` for an unknown repo or revision)."""
        with self.store.lock:
            try:
                commit = self.store.resolve(self.store.get_repo(repo_type, repo_id), revision)
            except HubError as error:
                raise KeyError(error.message) from None
            return {path: blob.size for path, blob in sorted(commit.files.items())}


def main(argv: list[str] | None = None) -> None:
    """``python -m genlab.hub_server [--port N] [--root DIR]``: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Hub-compatible server on 127.0.0.1 for offline push/pull.")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    parser.add_argument("--root", default=None, help="blob store directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with LocalHubServer(args.root, port=args.port) as hub:
        print(f"LocalHubServer at {hub.endpoint}  (export HF_ENDPOINT={hub.endpoint}); Ctrl-C stops it", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

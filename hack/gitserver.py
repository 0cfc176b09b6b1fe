"""A real git server on loopback for tests and the demo: bare repositories served over smart HTTP by git's own
`git http-backend` (through a small CGI bridge), and working repos to commit and push changes.

    with GitServer(tmp_path / "srv", username="u", password="p") as server:
        repo = WorkRepo.create(tmp_path / "work", {"k8s/cm.yaml": "..."}, remote=server.create_repo("app"))
        sha = repo.commit("first")
        repo.push()
        server.url("app")  # http://127.0.0.1:<port>/app.git
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

HTTP_BACKEND = Path("/usr/lib/git-core/git-http-backend")

# Git must behave the same whatever the machine's global config says (no signing, no templates).
_ISOLATED = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Gantry Tests",
    "GIT_AUTHOR_EMAIL": "tests@gantry.invalid",
    "GIT_COMMITTER_NAME": "Gantry Tests",
    "GIT_COMMITTER_EMAIL": "tests@gantry.invalid",
}


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    """Run the git CLI with the machine's own git config ignored; stdout without the last newline."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, env={**os.environ, **_ISOLATED}
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.rstrip("\n")


def git_http_backend() -> Path:
    if HTTP_BACKEND.exists():
        return HTTP_BACKEND
    return Path(git("--exec-path")) / "git-http-backend"


def init_bare(path: Path, default_branch: str = "main") -> Path:
    """A bare repository whose HEAD names `default_branch`, which accepts pushes over HTTP."""
    git("init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(path))
    git("config", "http.receivepack", "true", cwd=path)
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=path)
    return path


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # e.g. /app.git/info/refs
    query: str  # e.g. service=git-upload-pack
    status: int
    user: str | None  # the basic-auth user name when it was accepted


class GitServer:
    """Serves every bare repo under `root` as http://127.0.0.1:<port>/<name>.git.

    With `username`/`password`, every request must carry them as HTTP basic auth; a request that
    does not gets 401 with `WWW-Authenticate`, so git reports an authentication failure.
    """

    def __init__(self, root: Path, *, username: str | None = None, password: str | None = None,
                 port: int = 0) -> None:
        self.root = Path(root)
        self._bind_port = port
        self.root.mkdir(parents=True, exist_ok=True)
        self.username = username
        self.password = password
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> GitServer:
        handler = type("Handler", (_CgiBridge,), {"server_ref": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._bind_port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="gitserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> GitServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return self._httpd.server_address[1]

    # -- repositories ------------------------------------------------------------------------

    def url(self, repo_name: str, *, credentials: bool = False) -> str:
        """The clone URL of `repo_name` (with `user:password@` in it when `credentials`)."""
        name = repo_name if repo_name.endswith(".git") else f"{repo_name}.git"
        auth = f"{self.username}:{self.password}@" if credentials and self.username else ""
        return f"http://{auth}127.0.0.1:{self.port}/{name}"

    def repo_path(self, repo_name: str) -> Path:
        return self.root / (repo_name if repo_name.endswith(".git") else f"{repo_name}.git")

    def create_repo(self, repo_name: str, default_branch: str = "main") -> Path:
        """A new empty bare repo served as `url(repo_name)`; returns its path (a push target)."""
        return init_bare(self.repo_path(repo_name), default_branch)

    def fetches(self, repo_name: str) -> int:
        """How many fetches (ref advertisements for upload-pack) the server answered for the repo."""
        name = self.repo_path(repo_name).name
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.path == f"/{name}/info/refs" and "service=git-upload-pack" in r.query and r.status == 200
            )

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _CgiBridge(BaseHTTPRequestHandler):
    """Hands each request to `git http-backend` as CGI and relays its answer."""

    server_ref: GitServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle's algorithm on, the body waits for the
    # client's delayed ACK of the headers (40 ms on Linux), which made every git request ~50 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (the base class's name)
        pass  # the request log is GitServer.requests

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        server = self.server_ref
        parts = urlsplit(self.path)
        user = self._authenticated_user()
        if server.username is not None and user is None:
            body = b"authentication required\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="gantry-tests"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            server._record(Request(self.command, parts.path, parts.query, 401, None))
            return
        body = self._read_body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        if user:
            env["REMOTE_USER"] = user
        for header in ("Git-Protocol", "Content-Encoding", "Accept"):
            if self.headers.get(header):
                env["HTTP_" + header.upper().replace("-", "_")] = self.headers[header]
        result = subprocess.run([str(git_http_backend())], input=body, env=env, capture_output=True, timeout=120)
        separator = b"\r\n\r\n" if b"\r\n\r\n" in result.stdout else b"\n\n"
        head, _, payload = result.stdout.partition(separator)
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        if result.returncode != 0 and status == 200 and not payload:
            status, payload = 500, result.stderr
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        server._record(Request(self.command, parts.path, parts.query, status, user))

    def _authenticated_user(self) -> str | None:
        server = self.server_ref
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            username, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        if server.username is None or (username == server.username and password == server.password):
            return username
        return None

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class WorkRepo:
    """A working repository to change and push, as a developer would: write files, commit, tag, push."""

    def __init__(self, path: Path, remote: str | Path | None = None) -> None:
        self.path = Path(path)
        self.remote = str(remote) if remote is not None else None

    @classmethod
    def create(
        cls, path: Path, files: dict[str, str] | None = None, *, remote: str | Path | None = None, branch: str = "main"
    ) -> WorkRepo:
        """A new repo at `path` holding `files` (relative path → text), not yet committed."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", f"--initial-branch={branch}", cwd=path)
        # Set locally too, so the repo works for plain `git` commands with no global config.
        git("config", "user.name", _ISOLATED["GIT_AUTHOR_NAME"], cwd=path)
        git("config", "user.email", _ISOLATED["GIT_AUTHOR_EMAIL"], cwd=path)
        git("config", "commit.gpgsign", "false", cwd=path)
        repo = cls(path, remote)
        if files:
            repo.write(files)
        return repo

    def git(self, *args: str, check: bool = True) -> str:
        return git(*args, cwd=self.path, check=check)

    def write(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    def delete(self, *names: str) -> None:
        for name in names:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()

    def symlink(self, name: str, points_to: str) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(points_to)

    def commit(self, message: str = "change") -> str:
        """Commit everything in the work tree (additions, changes, deletions); returns the SHA."""
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "--no-verify", "-m", message)
        return self.head

    def tag(self, name: str, *, message: str | None = None, commit: str = "HEAD") -> None:
        """A lightweight tag, or an annotated one when `message` is given."""
        if message is None:
            self.git("tag", name, commit)
        else:
            self.git("tag", "--annotate", "-m", message, name, commit)

    def branch(self, name: str, *, start: str = "HEAD") -> None:
        """Create branch `name` at `start` and switch to it."""
        self.git("switch", "--quiet", "-c", name, start)

    def switch(self, name: str) -> None:
        self.git("switch", "--quiet", name)

    def push(self, *refs: str, force: bool = False) -> None:
        """Push `refs` (default: every branch and tag) to the remote."""
        assert self.remote, "this WorkRepo has no remote"
        flags = ["--force"] if force else []
        if refs:
            self.git("push", "--quiet", *flags, self.remote, *refs)
        else:
            self.git("push", "--quiet", *flags, self.remote, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*")

    @property
    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def rev(self, revision: str) -> str:
        return self.git("rev-parse", f"{revision}^{{commit}}")


def main(argv: list[str] | None = None) -> int:
    """`python hack/gitserver.py serve ROOT PORT`: serve ROOT's bare repos until stopped (the demo)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="serve bare git repositories over smart HTTP on 127.0.0.1")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("root", type=Path)
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    server = GitServer(args.root, port=args.port).start()
    print(f"serving {args.root} at http://127.0.0.1:{server.port}/", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

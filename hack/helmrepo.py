"""A real Helm repository on loopback for tests: charts packaged by the real helm (`helm package`),
indexed by `helm repo index`, and served as static files over HTTP, with basic auth if asked.

    with HelmRepo(tmp_path / "charts", helm, username="u", password="p") as repo:
        repo.publish({"Chart.yaml": "apiVersion: v2\\nname: shop\\nversion: 1.0.0\\n", ...})
        repo.url  # http://127.0.0.1:<port>/charts
"""

from __future__ import annotations

import base64
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HelmRepo:
    """Serves `root` under /charts; `requests` records the paths asked for (index, archives)."""

    def __init__(self, root: Path, helm: Path, *, username: str | None = None, password: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.helm = Path(helm)
        self.credentials = (username, password) if username else None
        self.requests: list[tuple[str, int]] = []  # (path, status)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the repository first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/charts"

    def publish(self, files: dict[str, str]) -> Path:
        """Package a chart made of `files` (relative to its folder) and index the repository again;
        the archive's path."""
        with tempfile.TemporaryDirectory() as work:
            chart = Path(work) / "chart"
            for name, text in files.items():
                (chart / name).parent.mkdir(parents=True, exist_ok=True)
                (chart / name).write_text(text)
            out = subprocess.run([str(self.helm), "package", str(chart), "--destination", str(self.root)],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
        self.index()
        return Path(out.strip().rsplit(": ", 1)[-1])

    def index(self) -> None:
        subprocess.run([str(self.helm), "repo", "index", str(self.root), "--url", self.url], capture_output=True,
                       text=True, timeout=60, check=True)

    def __enter__(self) -> "HelmRepo":
        repo = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                status = repo._status(self.path, self.headers.get("Authorization"))
                repo.requests.append((self.path, status))
                file = repo.root / self.path.removeprefix("/charts/")
                if status != 200:
                    self.send_response(status)
                    if status == 401:
                        self.send_header("WWW-Authenticate", 'Basic realm="charts"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _status(self, path: str, authorization: str | None) -> int:
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if authorization != expected:
                return 401
        name = path.removeprefix("/charts/")
        if not path.startswith("/charts/") or "/" in name or not (self.root / name).is_file():
            return 404
        return 200

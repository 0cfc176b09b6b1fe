"""A real OCI registry on loopback for tests: crane's in-memory registry (`crane registry serve`,
plain HTTP), charts packaged by the real helm (`helm package`) and pushed by it (`helm push`).

    with OciRegistry(crane, helm) as registry:
        registry.publish({"Chart.yaml": "apiVersion: v2\\nname: shop\\nversion: 1.0.0\\n", ...})
        registry.url  # oci://127.0.0.1:<port>/charts
        registry.requests()  # the registry's log of requests: ["GET /v2/charts/shop/manifests/1.0.0", ...]

With username and password, pulls go through a proxy in front of it that asks for them with
basic auth (a 401 and `WWW-Authenticate: Basic`, as a registry without a token service does;
crane's registry asks for nothing); charts are pushed to crane directly. `credentials` may be
changed while it runs. Nothing is kept: the registry's content goes with its process.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_SERVING = re.compile(r"serving on port (\d+)")
_REQUEST = re.compile(r"^\S+ \S+ ((?:GET|HEAD|PUT|POST|PATCH|DELETE) /v2/\S*)", re.M)


class OciRegistry:
    """crane's registry on 127.0.0.1 at a port the kernel picks (no race for a free one)."""

    def __init__(self, crane: Path, helm: Path, *, username: str | None = None, password: str | None = None) -> None:
        self.crane = Path(crane)
        self.helm = Path(helm)
        self.credentials = (username, password) if username else None
        self.port = 0  # where pulls go: crane's, or the proxy's when credentials are asked for
        self._crane_port = 0
        self._proxy: ThreadingHTTPServer | None = None
        self._work = tempfile.TemporaryDirectory(prefix="gantry-oci-")
        self._log = Path(self._work.name) / "registry.log"
        self._process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        assert self.port, "start the registry first"
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The repository charts are pushed to, as an Application's repoURL names it."""
        return f"oci://{self.host}/charts"

    def publish(self, files: dict[str, str]) -> Path:
        """Package a chart made of `files` (relative to its folder) and push it; the archive's path."""
        work = Path(tempfile.mkdtemp(dir=self._work.name))
        chart = work / "chart"
        for name, text in files.items():
            (chart / name).parent.mkdir(parents=True, exist_ok=True)
            (chart / name).write_text(text)
        out = self._helm("package", str(chart), "--destination", str(work))
        archive = Path(out.strip().rsplit(": ", 1)[-1])
        self._helm("push", str(archive), f"oci://127.0.0.1:{self._crane_port}/charts", "--plain-http")
        return archive

    def requests(self) -> list[str]:
        """The requests the registry has answered, in order (`GET /v2/charts/shop/manifests/1.0.0`)."""
        return _REQUEST.findall(self._log.read_text(errors="replace"))

    def _helm(self, *args: str) -> str:
        home = Path(self._work.name) / "helm-home"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
               "HELM_DATA_HOME": str(home / "data")}
        return subprocess.run([str(self.helm), *args], capture_output=True, text=True, timeout=60, check=True,
                              env=env).stdout

    def __enter__(self) -> "OciRegistry":
        log = self._log.open("wb")
        self._process = subprocess.Popen([str(self.crane), "registry", "serve", "--address", "127.0.0.1:0"],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while not (found := _SERVING.search(self._log.read_text(errors="replace"))):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"crane registry serve did not start: {self._log.read_text(errors='replace')}")
            time.sleep(0.05)  # a process starting, not an assertion
        self.port = self._crane_port = int(found[1])
        if self.credentials is not None:
            self._proxy = ThreadingHTTPServer(("127.0.0.1", 0), self._proxy_handler())
            self.port = self._proxy.server_address[1]
            threading.Thread(target=self._proxy.serve_forever, daemon=True).start()
        return self

    def _proxy_handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                user, password = registry.credentials or ("", "")
                wanted = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                if self.headers.get("Authorization") != wanted:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="gantry-test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", registry._crane_port, timeout=30)
                try:
                    upstream.request(self.command, self.path, headers={k: v for k, v in self.headers.items()
                                                                      if k.lower() not in ("authorization", "host")})
                    response = upstream.getresponse()
                    body = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        return Handler

    def __exit__(self, *exc) -> None:
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()
            self._proxy = None
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None
        self._work.cleanup()

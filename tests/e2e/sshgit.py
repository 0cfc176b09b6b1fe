"""A real git server over SSH on loopback, for tests of `sshPrivateKey` credentials: paramiko speaks
SSH (public-key auth only), and each `git-upload-pack '<repo>'` / `git-receive-pack '<repo>'` the
client asks to exec runs git's own program against a bare repo under `root`.

    key = ClientKey.generate()
    with SshGitServer(tmp_path / "srv", authorized=[key]) as server:
        bare = server.create_repo("app")          # push to it by path, as with GitServer
        server.url("app")                          # ssh://git@127.0.0.1:<port>/app.git
        key.openssh                                # what a repository Secret's sshPrivateKey holds
"""

from __future__ import annotations

import io
import os
import shlex
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from gitserver import init_bare

GIT_PROGRAMS = ("git-upload-pack", "git-receive-pack")


@dataclass(frozen=True)
class ClientKey:
    """An Ed25519 key pair: `openssh` is the private key as ssh-keygen writes it."""

    openssh: str
    public: paramiko.PKey

    @classmethod
    def generate(cls) -> ClientKey:
        text = _openssh_private(ed25519.Ed25519PrivateKey.generate())
        return cls(text, paramiko.Ed25519Key(file_obj=io.StringIO(text)))

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint


@dataclass(frozen=True)
class Login:
    user: str
    fingerprint: str  # of the public key offered
    accepted: bool


def _openssh_private(key: ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()


class SshGitServer:
    """Serves every bare repo under `root` as ssh://git@127.0.0.1:<port>/<name>.git to the keys in
    `authorized`. `port` lets a test start a second server (a new host key) where the first was."""

    def __init__(self, root: Path, *, authorized: list[ClientKey], user: str = "git", port: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.authorized = {key.public.asbytes() for key in authorized}
        self.user = user
        self.host_key = paramiko.Ed25519Key(file_obj=io.StringIO(_openssh_private(ed25519.Ed25519PrivateKey.generate())))
        self.logins: list[Login] = []
        self.commands: list[str] = []  # every exec request, as the client sent it
        self._bind_port = port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._port: int | None = None  # kept after stop(), for a server started in its place
        self._transports: list[paramiko.Transport] = []
        self._stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SshGitServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A restarted server takes the same port at once, though the old one's sockets linger.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._bind_port))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener, self._port = listener, listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="sshgit-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._acceptor is not None:
            self._acceptor.join()  # before the close: a socket closed under accept() may keep listening
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            transports, self._transports = self._transports, []
        for transport in transports:
            transport.close()

    def __enter__(self) -> SshGitServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._port is not None, "start() the server first"
        return self._port

    # -- repositories ------------------------------------------------------------------------

    def url(self, repo_name: str) -> str:
        name = repo_name if repo_name.endswith(".git") else f"{repo_name}.git"
        return f"ssh://{self.user}@127.0.0.1:{self.port}/{name}"

    def create_repo(self, repo_name: str, default_branch: str = "main") -> Path:
        """A new empty bare repo served as `url(repo_name)`; returns its path (a push target)."""
        name = repo_name if repo_name.endswith(".git") else f"{repo_name}.git"
        return init_bare(self.root / name, default_branch)

    def fetches(self, repo_name: str) -> int:
        name = repo_name if repo_name.endswith(".git") else f"{repo_name}.git"
        with self._lock:
            return sum(1 for command in self.commands if command.startswith("git-upload-pack") and name in command)

    # -- the SSH side ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.host_key)
            with self._lock:
                self._transports.append(transport)
            try:
                transport.start_server(server=_Session(self, transport))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()  # a client that gave up during the handshake

    def _record_login(self, login: Login) -> None:
        with self._lock:
            self.logins.append(login)

    def _repo_for(self, argument: str) -> Path | None:
        """The bare repo a client names ('/app.git' or 'app.git'), never a path outside `root`."""
        path = (self.root / argument.lstrip("/")).resolve()
        if path.parent != self.root.resolve() or not (path / "HEAD").is_file():
            return None
        return path

    def _exec(self, channel: paramiko.Channel, command: str, env: dict[str, str]) -> None:
        with self._lock:
            self.commands.append(command)
        try:
            words = shlex.split(command)
        except ValueError:
            words = []
        repo = self._repo_for(words[1]) if len(words) == 2 and words[0] in GIT_PROGRAMS else None
        if repo is None:
            channel.sendall_stderr(f"fatal: '{command}' is not a git command this server runs\n".encode())
            channel.send_exit_status(128)
            channel.close()
            return
        process = subprocess.Popen(
            ["git", words[0].removeprefix("git-"), str(repo)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
                 "GIT_CONFIG_GLOBAL": os.devnull, **env},
        )
        pumps = [
            threading.Thread(target=_client_to_process, args=(channel, process), daemon=True),
            threading.Thread(target=_process_to_client, args=(process.stdout, channel.sendall), daemon=True),
            threading.Thread(target=_process_to_client, args=(process.stderr, channel.sendall_stderr), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        status = process.wait()
        for pump in pumps[1:]:
            pump.join()
        channel.send_exit_status(status)
        channel.close()


class _Session(paramiko.ServerInterface):
    """One client connection: who may log in, and what it may run."""

    def __init__(self, server: SshGitServer, transport: paramiko.Transport) -> None:
        self.server = server
        self.env: dict[str, str] = {}

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        accepted = username == self.server.user and key.asbytes() in self.server.authorized
        self.server._record_login(Login(username, key.fingerprint, accepted))
        return paramiko.AUTH_SUCCESSFUL if accepted else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes, value: bytes) -> bool:
        # git asks for protocol v2 through GIT_PROTOCOL (ssh's SendEnv); nothing else gets through.
        if name == b"GIT_PROTOCOL":
            self.env["GIT_PROTOCOL"] = value.decode()
            return True
        return False

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        # Runs in paramiko's transport thread: answer now, serve the command in a thread of its own.
        threading.Thread(target=self.server._exec, args=(channel, command.decode(), dict(self.env)),
                         name="sshgit-exec", daemon=True).start()
        return True


def _client_to_process(channel: paramiko.Channel, process: subprocess.Popen) -> None:
    assert process.stdin is not None
    try:
        while data := channel.recv(65536):
            process.stdin.write(data)
            process.stdin.flush()
    except (OSError, EOFError):
        pass  # the process is gone (it closed its stdin) or the client went away
    finally:
        try:
            process.stdin.close()
        except OSError:
            pass


def _process_to_client(stream, send) -> None:
    try:
        while data := stream.read1(65536):
            send(data)
    except (OSError, EOFError):
        pass

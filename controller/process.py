"""Running the render tools (kustomize, helm) for render.py and helm.py: bounded in time, output and
memory, and killed with whatever they started. No knowledge of either tool here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OUT_OF_MEMORY", "Run", "limit_hit", "run_bounded", "with_memory_limit"]


# How Go dies when the data segment limit (or the system) gives it no more memory: a fatal error,
# or, when it fails where it cannot say so, a segmentation fault.
OUT_OF_MEMORY = re.compile(r"^fatal error: .*(?:out of memory|cannot allocate memory)|^SIGSEGV", re.M)


def with_memory_limit(data_bytes: int, command: list[str]) -> list[str]:
    """`command` under a data segment limit, set by a shell between fork and exec: preexec_fn would
    run Python in a child forked from a threaded process, which may deadlock. RLIMIT_DATA rather
    than RLIMIT_AS: Go reserves address space far beyond what it uses, and fails to start under
    some RLIMIT_AS values that leave it plenty."""
    return ["/bin/sh", "-c", 'ulimit -d "$1" && shift && exec "$@"', "sh", str(data_bytes // 1024), *command]


@dataclass
class Run:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    output_over: bool = False


def run_bounded(command: list[str], *, cwd: Path, env: dict[str, str], timeout: float, max_output: int) -> Run:
    """Run `command`, keeping at most `max_output` bytes of its output and 64 KiB of its errors
    (Go prints every goroutine's stack when it runs out of memory); killed once it prints more
    or runs longer than `timeout`."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    stdout, stderr = bytearray(), bytearray()
    over = threading.Event()

    def read(stream, into: bytearray, keep: int, kill_beyond: bool) -> None:
        received = 0
        while chunk := stream.read(1 << 16):
            received += len(chunk)
            if len(into) < keep:
                into += chunk[:keep - len(into)]
            if kill_beyond and received > keep:
                over.set()
                _kill_group(process)
                return

    readers = [threading.Thread(target=read, args=(process.stdout, stdout, max_output, True), daemon=True),
               threading.Thread(target=read, args=(process.stderr, stderr, 1 << 16, False), daemon=True)]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
    finally:
        if process.returncode is None:  # interrupted: leave no kustomize behind
            _kill_group(process)
        process.wait()
        for reader in readers:
            reader.join()
        process.stdout.close()
        process.stderr.close()
    return Run(process.returncode, bytes(stdout), bytes(stderr), timed_out, over.is_set())


def _kill_group(process: subprocess.Popen) -> None:
    """The tool and whatever it started (git for a remote base)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def limit_hit(run: Run, what: str, *, timeout: float, max_output: str, memory: str) -> str | None:
    """Which bound a finished run of `what` hit, said for users, or None (it passed, or failed on
    its own). `max_output` and `memory` are the limits as the message names them."""
    if run.timed_out:
        return f"{what} did not finish within {timeout:g}s"
    if run.output_over:
        return f"{what} printed more than the {max_output} limit for one app's manifests: split the app"
    stderr = run.stderr.decode("utf-8", "replace")
    if run.returncode != 0 and (OUT_OF_MEMORY.search(stderr) or run.returncode == -signal.SIGSEGV):
        return f"{what} ran out of memory: it may use {memory}"
    if run.returncode is not None and run.returncode < 0:
        return f"{what} was killed by {signal.Signals(-run.returncode).name}"
    return None

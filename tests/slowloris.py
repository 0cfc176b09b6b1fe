"""A slowloris client for the tests of the webhook port, unit and end to end alike: the attack the
security issue's part 5 names, written once."""

from __future__ import annotations

import select
import socket
import threading


def slowloris(address: tuple[str, int], stop: threading.Event, answers: list[bytes], *, every: float = 0.5,
              pause: float = 0.1) -> None:
    """One attacker's connection: a request line, then a header byte every `every` seconds, never
    the end; when the server answers (its first bytes go to `answers`) or hangs up, `pause` seconds
    and the next connection (not a loop that would only measure the CPU). Until `stop`."""
    while not stop.is_set():
        try:
            with socket.create_connection(address, timeout=10) as conn:
                conn.sendall(b"POST /api/webhook HTTP/1.1\r\nHost: gantry\r\nX-Slow: ")
                while not stop.is_set():
                    readable, _, _ = select.select([conn], [], [], every)
                    if readable:
                        answers.append(conn.recv(12))
                        break
                    conn.sendall(b"x")
        except OSError:
            pass
        stop.wait(pause)

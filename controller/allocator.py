"""Process housekeeping for the controller's memory (glibc's allocator), used by operator.py.

Not a stage of the flow: a long-running Python process with many threads keeps memory it freed;
these two calls give it back. On a libc without them (musl) they do nothing.
"""

from __future__ import annotations

import ctypes

__all__ = ["limit_malloc_arenas", "release_free_memory"]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # glibc only (not musl)
        libc.mallopt
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own arena, up to 8 per core, and memory freed in
    one cannot serve another: with a reconcile pool and a watch thread per type, that is memory
    held idle. Contention for fewer arenas matters little: our threads allocate while holding the
    GIL, one at a time. Must run before the threads start."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, 2)


def release_free_memory() -> None:
    """Give free heap pages back to the system (glibc's malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)

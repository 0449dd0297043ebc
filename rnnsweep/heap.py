"""glibc's heap in a long-lived process: the sweep's driver, and a worker between trials.

Each trial leaves the driver garbage of every size (its record unpickled, its MLflow
writes, its config patch) between a few small objects that live on (its result, its
console line). glibc's allocator keeps the freed memory in its arenas, one per thread
that allocates, and the holes rarely fit the next trial's sizes: over a thousand tiny
trials the live heap grew about 4 KB a trial (``mallinfo2``'s in-use bytes) while the
free memory glibc held grew 20 KB a trial, and the process's resident size with it. Two
arenas rather than one per thread, and the free pages handed back every 20 trials
(``malloc_trim``, under a millisecond), keep the driver's resident size level during the
trials; every 100 trials left a saw-tooth of 9 MB on a 2,000-trial sweep
(``benchmarks/sweep_scale.py`` has the figures).

Elsewhere than glibc these do nothing. ``fewer_arenas`` overrides a ``MALLOC_ARENA_MAX``
the user set, in the CLI's own process only.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2
TRIM_EVERY = 20  # finished trials


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded: no search, no subprocess
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has none of this)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def fewer_arenas() -> None:
    """For the CLI's own process, before Ray starts its threads: arenas are made as
    threads first allocate."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, ARENAS)


def give_back() -> None:
    """Returns the free pages of every arena to the system (a few milliseconds)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)

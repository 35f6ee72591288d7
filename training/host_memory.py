"""Keep freed host memory in the process, so each jitted step does not page-fault its buffers anew.

XLA:CPU allocates the temporary buffers of every call of a jitted function as one block from
`posix_memalign` (79 MB for the CLI's default train step, ~260 MB for `benchmarks.train_step`'s
model), on one of its worker threads.  glibc serves a block that large (above its 32 MB
ceiling for the mmap threshold) with a fresh `mmap` and hands it back with `munmap` as soon as
it is freed, so on every step the kernel maps and zeroes ~20,000 new pages: a default
`python main.py --version jax` took 27 million minor page faults and ~55 s of system time,
and the JAX forward of `benchmarks.train_step` ran 1.4x slower than with the memory kept.

`keep_freed_memory()` tells glibc (`mallopt`) to serve every block from one arena's heap
(`M_ARENA_MAX=1`: a worker thread's own arena could not grow past 64 MB and would fall back to
mmap), never to use mmap (`M_MMAP_MAX=0`) and never to give freed memory back
(`M_TRIM_THRESHOLD` at its largest, 2 GiB), so the second step reuses the first step's pages.  The price is that the
process keeps its peak heap until it exits, which is what a training or benchmark process
wants.  It changes the whole process, so only the training and benchmark command lines call it
(`main.py`, `benchmarks/`), before JAX starts its threads; a library import never does.  Not
`parity.check`: it is compile-bound, and XLA's compiler threads sharing one arena made it
slower (20.8 s against 16.1 s with a cold cache), while a `main.py` run gains (400 steps:
pytorch 21.1 s against 23.7 s, jax 31.9 s against 32.7 s).
`TLAB_KEEP_HOST_MEMORY=0` turns it off; on a C library other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os

ENV = "TLAB_KEEP_HOST_MEMORY"
# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
NEVER_TRIM = 2**31 - 1  # mallopt takes a C int: trim only above 2 GiB of free top

_applied: bool | None = None


def glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None where the C library is another (musl, macOS, Windows)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (AttributeError, ValueError, OSError):
        return None


def keep_freed_memory() -> bool:
    """Apply the module docstring's malloc settings once; True when they are in force.

    Call it before the first JAX computation (XLA's worker threads take their malloc arena
    when they first allocate); later calls return the first call's answer."""
    global _applied
    if _applied is None:
        libc = None if os.environ.get(ENV, "1") == "0" else glibc()
        _applied = libc is not None and all(
            libc.mallopt(param, value) == 1
            for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0),
                                 (M_TRIM_THRESHOLD, NEVER_TRIM)))
    return _applied


def describe() -> str:
    """One line for a benchmark's header: which allocator behaviour the numbers were taken with."""
    state = "freed memory kept" if _applied else "system default"
    return f"host malloc: {state} (training.host_memory, {ENV})"

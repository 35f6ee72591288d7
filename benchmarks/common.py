"""Shared by the benchmark scripts: one thread setting for both frameworks, round-robin timing."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from training.host_memory import keep_freed_memory

# Every benchmark is a command line: glibc keeps freed memory before JAX starts its threads,
# so neither framework's steps pay for page faults (training/host_memory.py says why).
keep_freed_memory()


def limit_threads(n: int) -> None:
    """torch and XLA to `n` CPU threads; call before jax is imported (XLA reads its flags once).

    One thread each keeps a side-by-side comparison fair on a small shared machine, where
    torch's default thread count was many times slower than one thread."""
    import torch

    torch.set_num_threads(n)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               f"{'true' if n > 1 else 'false'} intra_op_parallelism_threads={n}")


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int, warmup: int
                        ) -> dict[str, float]:
    """Median seconds of each call, timed round-robin (one call of each per round), so that a
    change in the machine's load hits every row alike instead of whichever ran at the time."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def load_average() -> str:
    """`uptime`'s 1/5/15-minute load averages, printed beside each run (the machine is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"

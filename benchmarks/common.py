"""Shared by the benchmark scripts: the model flags, one thread setting for both frameworks,
round-robin timing."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from lab_cli.args import int_at_least
from training.host_memory import keep_freed_memory

# Every benchmark is a command line: glibc keeps freed memory before JAX starts its threads,
# so neither framework's steps pay for page faults (training/host_memory.py says why).
keep_freed_memory()


# The benchmark model's size flags (`benchmarks.train_step.bench_config`) and their defaults:
# the small preset's d_model 256, 3+3 layers, 8 heads, with vocabulary 8000, batch 32 x 32.
MODEL_FLAGS = {"d_model": (256, "d_model"), "layers": (3, "encoder and decoder layers each"),
               "heads": (8, "attention heads"), "vocab": (8000, "source = target vocabulary"),
               "batch": (32, "rows per step"), "length": (32, "source and target length")}


def add_model_flags(p: argparse.ArgumentParser, *names: str) -> None:
    """`--<name>` for each of `names` (keys of MODEL_FLAGS; all when none are given), positive
    integers, and `--threads` (default 1; 0: the libraries' own defaults)."""
    for name in names or MODEL_FLAGS:
        default, what = MODEL_FLAGS[name]
        p.add_argument(f"--{name}", type=int_at_least(1), default=default, help=what)
    p.add_argument("--threads", type=int_at_least(0), default=1,
                   help="CPU threads for torch and XLA alike (0: the libraries' defaults); on "
                        "a small shared machine torch's default can be many times slower")


def apply_threads(args: argparse.Namespace) -> None:
    """`limit_threads(args.threads)` unless it is 0 (the libraries' defaults)."""
    if args.threads > 0:
        limit_threads(args.threads)


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

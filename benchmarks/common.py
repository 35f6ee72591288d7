"""Shared by the benchmark scripts: one thread setting for both frameworks."""

from __future__ import annotations

import os


def limit_threads(n: int) -> None:
    """torch and XLA to `n` CPU threads; call before jax is imported (XLA reads its flags once).

    One thread each keeps a side-by-side comparison fair on a small shared machine, where
    torch's default thread count was many times slower than one thread."""
    import torch

    torch.set_num_threads(n)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               f"{'true' if n > 1 else 'false'} intra_op_parallelism_threads={n}")

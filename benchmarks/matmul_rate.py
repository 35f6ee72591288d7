"""The machine's measured float32 matmul rate, in JAX (jit) and torch, in the calling process.

    python -m benchmarks.matmul_rate --threads 1

A square `[n, n] @ [n, n]` float32 matmul (2 n^3 FLOPs) at full precision, timed round-robin in
both frameworks (median of `repeats`), with whatever threads the process already uses (call
`benchmarks.common.limit_threads` first, as the benchmark scripts do).  This is the practical
ceiling every MFU in `benchmarks/` is read against: the same BLAS / Eigen kernels the models'
own matmuls run on, so a row at 100% would be pure large-matmul speed.  The higher of the two
frameworks' rates is the machine's (`MatmulRate.best`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import interleaved_medians, limit_threads, load_average  # noqa: E402


@dataclasses.dataclass(frozen=True)
class MatmulRate:
    """FLOP/s of one large float32 matmul in each framework."""

    n: int
    jax: float
    torch: float

    @property
    def best(self) -> float:
        return max(self.jax, self.torch)

    def describe(self) -> str:
        return (f"measured float32 matmul rate ({self.n}x{self.n} @ {self.n}x{self.n}): jax "
                f"{self.jax / 1e9:.1f} GFLOP/s, torch {self.torch / 1e9:.1f} GFLOP/s; MFU below "
                f"is against the higher, {self.best / 1e9:.1f} GFLOP/s")


JAX_ROW, TORCH_ROW = "jax jit matmul (float32)", "torch matmul (float32)"


def matmul_calls(n: int = 2048) -> dict[str, Callable[[], object]]:
    """Zero-argument calls, one per framework, each one `[n, n] @ [n, n]` float32 matmul at
    full precision (to time beside other rows, under the same load)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is invalid: expected a positive integer")
    import jax
    import jax.numpy as jnp
    import torch

    import torch_model

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))  # [n, n]
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    jmm = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))

    def torch_mm() -> None:
        with torch_model.full_precision():
            torch.mm(ta, tb)

    return {JAX_ROW: lambda: jmm(ja, jb).block_until_ready(), TORCH_ROW: torch_mm}


def from_seconds(n: int, seconds: dict[str, float]) -> MatmulRate:
    """The rate from the median seconds of `matmul_calls(n)`'s rows."""
    flops = 2 * n ** 3
    return MatmulRate(n, flops / seconds[JAX_ROW], flops / seconds[TORCH_ROW])


def measure(n: int = 2048, repeats: int = 5, warmup: int = 1) -> MatmulRate:
    """`MatmulRate` of an `[n, n] @ [n, n]` float32 matmul, both frameworks interleaved."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} is invalid: expected a positive integer")
    return from_seconds(n, interleaved_medians(matmul_calls(n), repeats, warmup))


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch and XLA threads (0: defaults)")
    args = p.parse_args(argv)
    if args.threads > 0:
        limit_threads(args.threads)
    text = f"{measure(args.n, args.repeats).describe()}; {load_average()}"
    print(text)
    return text


if __name__ == "__main__":
    main()

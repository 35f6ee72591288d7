"""XLA:CPU compiler options for the JAX train step, each compiled in this one process and timed
round-robin against the defaults, with the first step's loss and gradient norm checked to be
the same (an option that changes the numbers is reported, not used).

    python -m benchmarks.xla_flags                     # train_step.py's config, 1 thread
    python -m benchmarks.xla_flags --repeats 10

Options go through `jit(...).lower(...).compile(compiler_options=...)` (XLA's debug options,
the same names as `XLA_FLAGS` without the dashes), so every variant sees the same load.  The
candidates are the jaxlib 0.10 flags that can change speed without changing float32 results;
fast-math flags are left out on purpose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_model_flags,
    apply_threads,
    interleaved_medians,
    load_average,
)
from lab_cli.args import int_at_least  # noqa: E402

CANDIDATES: dict[str, dict[str, str | bool]] = {
    "defaults": {},
    "prefer_vector_width=512": {"xla_cpu_prefer_vector_width": "512"},
    "ynn fusions off (Eigen dots)": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "onednn": {"xla_cpu_use_onednn": True},
    "concurrency scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
}


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_flags(p, "d_model", "layers", "vocab", "batch", "length")
    p.add_argument("--repeats", type=int_at_least(1), default=5)
    args = p.parse_args(argv)
    apply_threads(args)
    import jax
    import numpy as np

    from benchmarks.train_step import bench_config, jax_bench_step

    config = bench_config(args.d_model, args.layers, 8, args.vocab, args.length)
    step, state, micro = jax_bench_step(config, args.batch, args.length, donate=False)
    lowered = step.lower(state, micro)
    calls, firsts, refused = {}, {}, {}
    for name, options in CANDIDATES.items():
        try:
            compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
        except Exception as error:  # an option this jaxlib does not know or cannot use
            refused[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
            continue
        _, metrics = compiled(state, micro)
        firsts[name] = (float(metrics["loss"]), float(metrics["grad_norm"]))
        calls[name] = (lambda c: lambda: jax.block_until_ready(c(state, micro)))(compiled)
    seconds = interleaved_medians(calls, args.repeats, warmup=1)
    base = seconds["defaults"]
    ref = np.array(firsts["defaults"])
    lines = [f"XLA:CPU options for the JAX train step (d_model {config.d_model}, "
             f"{args.layers}+{args.layers} layers, vocab {args.vocab}, batch "
             f"{args.batch}x{args.length}), median of {args.repeats} rounds; {load_average()}",
             "", "| options | median ms | speed vs defaults | same loss and grad norm |",
             "|---|---:|---:|---|"]
    for name, s in seconds.items():
        same = "yes" if np.allclose(firsts[name], ref, rtol=1e-6, atol=0) else \
            f"NO ({firsts[name][0]:.7f}, {firsts[name][1]:.7f})"
        lines.append(f"| {name} | {s * 1e3:.1f} | {base / s:.2f}x | {same} |")
    for name, why in refused.items():
        lines.append(f"| {name} | refused: {why} | | |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()

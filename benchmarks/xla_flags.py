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

from benchmarks.common import interleaved_medians, limit_threads, load_average  # noqa: E402

CANDIDATES: dict[str, dict[str, str | bool]] = {
    "defaults": {},
    "prefer_vector_width=512": {"xla_cpu_prefer_vector_width": "512"},
    "ynn fusions off (Eigen dots)": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "onednn": {"xla_cpu_use_onednn": True},
    "concurrency scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
}


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads > 0:
        limit_threads(args.threads)
    import jax
    import numpy as np

    import spec
    from benchmarks.train_step import bench_config, make_batch
    from jax_model import train as jt

    config = bench_config(args.d_model, args.layers, 8, args.vocab, args.length)
    train = spec.TrainConfig(batch_size=args.batch)
    micro = {k: jax.numpy.asarray(v)[None]
             for k, v in make_batch(config, args.batch, args.length, 0).items()}
    step = jt.make_train_step(config, train, donate=False)
    state = jt.create_train_state(config, train)
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

"""Where the JAX train step's time goes on this machine: a `jax.profiler` trace of a few steps,
each XLA op's time matched to the optimised HLO's instruction and, through its `op_name`
metadata (the JAX source path), to a part of the model.

    python -m benchmarks.profile_step                   # train_step.py's config, 1 thread
    python -m benchmarks.profile_step --rng_impl threefry2x32 --top 25
    python -m benchmarks.profile_step --hlo /tmp/step.hlo   # also keep the optimised HLO

Prints the op time by part (dropout RNG, embedding gather / scatter-add, logits matmul, other
matmuls, loss and softmax, LayerNorm, attention softmax and masks, optimizer, other), the
share of each, and the most expensive ops with their source path.  Times are summed over the
ops as the profiler saw them; XLA:CPU may run independent ops on two threads at once, so the
sum can exceed the wall time, and the shares are of op time, not of wall time.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_model_flags, apply_threads, load_average  # noqa: E402
from lab_cli.args import int_at_least  # noqa: E402

# (part, pattern on the op's JAX source path), first match wins
PARTS = (
    ("dropout RNG and masks", r"dropout|rng_bit_generator|random_bits|threefry"),
    ("embedding gather / scatter-add", r"embed.*(gather|scatter|take)|(gather|scatter)"),
    ("logits matmul (fwd + bwd)", r"(attend|output/).*dot_general"),
    ("attention QK^T and AV matmuls", r"bh[qk][dk],bh[kd][dk]->|bhqk|bhqd"),
    ("projection and FFN matmuls", r"dot_general"),
    ("loss: log-softmax, cross-entropy, argmax", r"log_softmax|cross_entropy|argmax|jvp\(\)/|"
                                                 r"reduce_max|logsumexp"),
    ("LayerNorm", r"_norm|final_norm"),
    ("attention softmax and masks", r"self_attn|cross_attn"),
    ("optimizer (Adam, clipping, norm)", r"adam|clip|optax|norm|apply_updates|tree"),
    ("FFN activation and residuals", r"ffn|layer_"),
)
# ops whose profiler event encloses the events of the ops they call: counted through those
CONTAINERS = ("call", "while", "conditional")
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\b([a-z][\w\-]*)\(")
OP_NAME = re.compile(r'op_name="([^"]*)"')


def op_names(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (opcode, JAX source path) for every instruction of the HLO module
    (containers left out: their time is their callees')."""
    out = {}
    for line in hlo_text.splitlines():
        match = INSTRUCTION.match(line)
        if match and match.group(2) not in CONTAINERS:
            path = OP_NAME.search(line)
            out[match.group(1)] = (match.group(2), path.group(1) if path else "")
    return out


def part_of(opcode: str, path: str) -> str:
    text = f"{path} {opcode}"
    for part, pattern in PARTS:
        if re.search(pattern, text):
            return part
    return "other"


def op_times(trace_dir: Path, names: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Microseconds per HLO instruction, summed over the trace's complete events."""
    trace = next(trace_dir.rglob("perfetto_trace.json.gz"))
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    times: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("ph") == "X" and event.get("name") in names:
            times[event["name"]] += float(event.get("dur", 0.0))
    return times


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_flags(p, "d_model", "layers", "vocab", "batch", "length")
    p.add_argument("--steps", type=int_at_least(1), default=3,
                   help="profiled steps (after 2 warm-up)")
    p.add_argument("--rng_impl", default="rbg")
    p.add_argument("--top", type=int_at_least(1), default=15, help="most expensive ops to list")
    p.add_argument("--hlo", type=Path, default=None, help="write the optimised HLO here")
    args = p.parse_args(argv)
    apply_threads(args)
    import jax

    from benchmarks.train_step import bench_config, jax_bench_step

    config = bench_config(args.d_model, args.layers, 8, args.vocab, args.length)
    step, state, micro = jax_bench_step(config, args.batch, args.length, rng_impl=args.rng_impl)
    hlo = step.lower(state, micro).compile().as_text()
    if args.hlo is not None:
        args.hlo.write_text(hlo)
    names = op_names(hlo)
    for _ in range(2):
        state, metrics = step(state, micro)
        jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.steps):
                state, metrics = step(state, micro)
                jax.block_until_ready(metrics)
        wall = (time.perf_counter() - start) / args.steps
        times = op_times(Path(tmp), names)
    per_step = {name: us / args.steps / 1e3 for name, us in times.items()}  # ms per step
    total = sum(per_step.values())
    parts: dict[str, float] = collections.defaultdict(float)
    for name, ms in per_step.items():
        parts[part_of(*names[name])] += ms
    lines = [f"JAX train step profile: d_model {config.d_model}, {args.layers}+{args.layers} "
             f"layers, vocab {args.vocab}, batch {args.batch}x{args.length}, dropout "
             f"{config.dropout_rate} ({args.rng_impl}), {args.threads or 'default'} XLA "
             f"thread(s); {load_average()}",
             f"wall {wall * 1e3:.1f} ms per step (profiler on), op time {total:.1f} ms per step",
             "", "| part | ms per step | share of op time |", "|---|---:|---:|"]
    for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {part} | {ms:.1f} | {ms / total:.1%} |")
    lines += ["", f"top {args.top} ops:", "", "| op | ms per step | part | JAX source path |",
              "|---|---:|---|---|"]
    for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1])[:args.top]:
        opcode, path = names[name]
        lines.append(f"| {name} | {ms:.1f} | {part_of(opcode, path)} | "
                     f"{path.replace('jit(step)/', '')[:90]} |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()

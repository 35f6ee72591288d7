"""Train-step and forward speed, JAX vs PyTorch, side by side in one process on one config.

    python -m benchmarks.train_step                       # d_model 256, 3+3 layers, batch 32x32
    python -m benchmarks.train_step --results benchmarks/RESULTS.md   # also write the table
    python -m benchmarks.train_step --threads 0         # the libraries' own thread counts

Rows (each the median of `--repeats` timed calls after warm-up, and its speed relative to torch
eager: >1 is faster):
- train step: JAX jit (optax Adam, the trainer's `make_train_step`), the same with every
  intermediate captured (returned, kept on device), the same with threefry / unsafe_rbg dropout
  keys instead of rbg; torch eager (forward + CrossEntropyLoss(label_smoothing, ignore pad) +
  backward + clipping + Adam), the same through `torch.compile` (compile time reported apart);
- forward: JAX jit without and with capture (intermediates fetched to numpy), torch eager
  without and with `torch_model.capture` (numpy), all deterministic.
Both start from the same canonical weights and see the same batch; dropout is on in training;
both frameworks get `--threads` threads (default 1).  A large float32 matmul in each framework
(`benchmarks.matmul_rate`) is timed in the same rounds, so every row's model FLOPs
(`benchmarks.flops`), achieved FLOP/s and MFU read against the machine's measured matmul rate
under the same load.  The load average before and after is printed with the table.
Targets (issue 13): JAX train step >= 1.2x torch eager and >= torch.compile, >= 50% MFU on the
small preset; capture costs <= 5% of a JAX train step.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spec  # noqa: E402
from benchmarks import flops, matmul_rate  # noqa: E402
from benchmarks.common import (  # noqa: E402
    add_model_flags,
    apply_threads,
    interleaved_medians,
    load_average,
)
from lab_cli.args import int_at_least  # noqa: E402
from training import host_memory  # noqa: E402

JAX_STEP = "jax jit train step (rbg dropout)"


def bench_config(d_model: int, layers: int, heads: int, vocab: int, length: int
                 ) -> spec.TransformerConfig:
    """The benchmark's model: the small preset resized (d_ff = 4 d_model), dropout 0.1."""
    return spec.TransformerConfig.preset(
        "small", d_model=d_model, num_heads=heads, num_encoder_layers=layers,
        num_decoder_layers=layers, d_ff=4 * d_model, src_vocab_size=vocab,
        tgt_vocab_size=vocab, max_len=max(length, 64))


def make_batch(config: spec.TransformerConfig, batch: int, length: int, seed: int
               ) -> dict[str, np.ndarray]:
    """Random ids `[b, length]`, the last quarter of each row padding (so masks matter)."""
    rng = np.random.default_rng(seed)
    real = length - length // 4
    out = {}
    for name, vocab in (("src", config.src_vocab_size), ("tgt_in", config.tgt_vocab_size),
                        ("labels", config.tgt_vocab_size)):
        ids = rng.integers(3, vocab, (batch, length)).astype(np.int32)
        ids[:, real:] = config.pad_id
        out[name] = ids
    out["tgt_in"][:, 0] = config.bos_id
    return out


def jax_bench_step(config: spec.TransformerConfig, batch_size: int, length: int,
                   **step_options) -> tuple[Callable, object, dict]:
    """`(step, state, micro)`: the jitted JAX train step (`make_train_step(**step_options)`) on
    the bench model, a fresh state and one `make_batch` micro-batch `[accum=1, b, length]`
    (profile_step.py and xla_flags.py time this)."""
    import jax

    from jax_model import train as jt

    train = spec.TrainConfig(batch_size=batch_size)
    micro = {k: jax.numpy.asarray(v)[None]
             for k, v in make_batch(config, batch_size, length, 0).items()}
    return (jt.make_train_step(config, train, **step_options),
            jt.create_train_state(config, train), micro)


def jax_calls(config, train, batch) -> tuple[dict[str, Callable[[], object]], dict]:
    """The JAX rows as zero-argument calls that block until their result is ready."""
    import jax

    import jax_model
    from jax_model import train as jt

    params = jax_model.init(config, train.seed)
    micro = {k: jax.numpy.asarray(v)[None] for k, v in batch.items()}  # [accum=1, b, len]
    calls = {}

    def train_call(**kwargs) -> Callable[[], None]:
        step = jt.make_train_step(config, train, **kwargs)
        # a copy of the weights per row: the step donates (deletes) the buffers it is given
        holder = {"state": jt.create_train_state(config, train, jax.tree.map(np.array, params))}

        def run() -> None:
            holder["state"], metrics = step(holder["state"], micro)
            jax.block_until_ready(metrics)

        return run

    calls[JAX_STEP] = train_call()
    calls["jax jit train step + capture"] = train_call(capture=True)
    calls["jax jit train step (threefry dropout)"] = train_call(rng_impl="threefry2x32")
    calls["jax jit train step (unsafe_rbg dropout)"] = train_call(rng_impl="unsafe_rbg")

    src, tgt = micro["src"][0], micro["tgt_in"][0]
    plain = jax.jit(lambda p, s, t: jt.apply_model(p, config, s, t)[0])
    captured = jax.jit(lambda p, s, t: jt.apply_model(p, config, s, t, capture=True))
    calls["jax jit forward"] = lambda: plain(params, src, tgt).block_until_ready()
    calls["jax jit forward + capture (to numpy)"] = lambda: jax.device_get(
        captured(params, src, tgt))
    return calls, jax_model.to_canonical(params)


def torch_calls(config, train, batch, flat) -> tuple[dict[str, Callable[[], object]], float]:
    """The torch rows as zero-argument calls, and torch.compile's compile time (seconds)."""
    import torch

    import torch_model

    src, tgt, labels = (torch.as_tensor(batch[k], dtype=torch.long)
                        for k in ("src", "tgt_in", "labels"))
    calls = {}

    def make_step(model):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(train.adam_b1, train.adam_b2),
                               eps=train.adam_eps)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=train.label_smoothing,
                                            ignore_index=config.pad_id)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            logits = model(src, tgt)  # [b, t, v]
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_norm)
            opt.step()

        return step

    def fresh():
        return torch_model.Transformer(config).load_canonical(flat).train()

    calls["torch eager train step"] = make_step(fresh())
    compiled_step = make_step(torch.compile(fresh()))
    start = time.perf_counter()
    compiled_step()  # compiles the forward and backward graphs
    compile_seconds = time.perf_counter() - start
    calls["torch.compile train step"] = compiled_step

    model = fresh().eval()

    def forward() -> None:
        with torch.no_grad():
            model(src, tgt)

    def forward_capture() -> None:
        with torch.no_grad(), torch_model.capture(model):
            model(src, tgt)

    calls["torch eager forward"] = forward
    calls["torch eager forward + capture (to numpy)"] = forward_capture
    return calls, compile_seconds


def table(rows: dict[str, float], compile_seconds: float, header: str, step_flops: int,
          forward_flops: int, rate: matmul_rate.MatmulRate) -> str:
    """Markdown: each row's median, its speed relative to torch eager (same kind of row), its
    model FLOPs, achieved FLOP/s and MFU against the measured matmul rate."""
    lines = [header, "", rate.describe(), "",
             "| measurement | median ms | speed vs torch eager | GFLOP | GFLOP/s | MFU |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, seconds in rows.items():
        if name in (matmul_rate.JAX_ROW, matmul_rate.TORCH_ROW):
            continue
        train = "train step" in name
        base = rows["torch eager train step" if train else "torch eager forward"]
        work = step_flops if train else forward_flops
        lines.append(f"| {name} | {seconds * 1e3:.1f} | {base / seconds:.2f}x | {work / 1e9:.2f} "
                     f"| {work / seconds / 1e9:.1f} | {flops.mfu(work, seconds, rate.best):.1%} |")
    jax_step = rows[JAX_STEP]
    capture = rows["jax jit train step + capture"] / jax_step - 1
    speedup = rows["torch eager train step"] / jax_step
    vs_compile = rows["torch.compile train step"] / jax_step
    step_mfu = flops.mfu(step_flops, jax_step, rate.best)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines += ["", f"torch.compile compile time: {compile_seconds:.1f} s (first step, excluded above)",
              f"JAX train step vs torch eager: {speedup:.2f}x (target >= 1.2x: "
              f"{verdict(speedup >= 1.2)})",
              f"JAX train step vs torch.compile: {vs_compile:.2f}x (target >= 1x: "
              f"{verdict(vs_compile >= 1.0)})",
              f"JAX train step MFU: {step_mfu:.1%} of the measured matmul rate (target >= 50%: "
              f"{verdict(step_mfu >= 0.5)})",
              f"capture overhead in the JAX train step: {capture * 100:+.1f}% (target <= 5%: "
              f"{verdict(capture <= 0.05)})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_flags(p)
    p.add_argument("--repeats", type=int_at_least(1), default=20)
    p.add_argument("--warmup", type=int_at_least(0), default=3)
    p.add_argument("--matmul_n", type=int_at_least(1), default=2048,
                   help="size of the matmul-rate probe")
    p.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    apply_threads(args)

    config = bench_config(args.d_model, args.layers, args.heads, args.vocab, args.length)
    train = spec.TrainConfig(batch_size=args.batch)
    batch = make_batch(config, args.batch, args.length, seed=0)
    calls, flat = jax_calls(config, train, batch)
    torch_part, compile_seconds = torch_calls(config, train, batch, flat)
    calls.update(torch_part)
    calls.update(matmul_rate.matmul_calls(args.matmul_n))
    import jax
    import torch

    import torch_model

    load_before = load_average()
    with torch_model.full_precision():
        rows = interleaved_medians(calls, args.repeats, args.warmup)
    rate = matmul_rate.from_seconds(args.matmul_n, rows)

    header = (f"## Train step and forward, d_model {config.d_model}, {args.layers}+{args.layers} "
              f"layers, {config.num_heads} heads, d_ff {config.d_ff}, vocab {args.vocab}, batch "
              f"{args.batch}x{args.length}, dropout {config.dropout_rate}\n\n"
              f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
              f"({torch.get_num_threads()} threads, XLA {args.threads or 'default'}), "
              f"{platform.processor() or platform.machine()}, median of {args.repeats} rounds "
              f"(every row once per round) after {args.warmup} warm-up rounds; before: "
              f"{load_before}; after: {load_average()}; {host_memory.describe()}")
    text = table(rows, compile_seconds, header,
                 flops.train_step_flops(config, args.batch, args.length, args.length),
                 flops.forward_flops(config, args.batch, args.length, args.length).total, rate)
    print(text)
    if args.results is not None:
        write_section(args.results, text)
    return text


def write_section(path: Path, text: str) -> None:
    """Put `text` between this script's markers in `path`, keeping other scripts' sections."""
    begin, end = "<!-- benchmarks.train_step: begin -->", "<!-- benchmarks.train_step: end -->"
    section = f"{begin}\n`python -m benchmarks.train_step` output:\n\n{text}\n{end}\n"
    old = path.read_text() if path.exists() else "# Benchmark results (written by the scripts)\n\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    path.write_text(new)


if __name__ == "__main__":
    main()

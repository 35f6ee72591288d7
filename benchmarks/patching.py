"""Activation-patching sweep speed: JAX's `metric_under` (vmap over the stacked patch sites)
against the torch adapter's loop (one patched forward per site), one process, same weights.

    .venv/bin/python benchmarks/patching.py                # small preset, s = t = 24
    .venv/bin/python benchmarks/patching.py --threads 2 --repeats 5

The sweep is `analysis.patching`'s full layer x head sweep of each attention kind (denoising:
the corrupt run with one head's clean `{attn}/context` put back), on the small preset (d_model
256, 8 heads, 3+3 layers): 3 kinds x 3 layers x 8 heads = 72 patched forwards.  Timed: the
median of `--repeats` full sweeps after one warm-up sweep (JAX's compilation, reported apart).
Both sides' metric values are checked to agree.  Target: JAX >= 3x faster than the torch loop.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import limit_threads  # noqa: E402
from spec import TransformerConfig, random_params  # noqa: E402
from spec.interventions import logit_diff  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--src_len", type=int, default=24)
    p.add_argument("--tgt_len", type=int, default=24)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    limit_threads(args.threads)
    import jax_model
    import torch_model
    from analysis import patching
    from jax_model.adapter import JaxAdapter
    from torch_model.adapter import TorchAdapter

    cfg = TransformerConfig.preset(args.preset, src_vocab_size=args.vocab,
                                   tgt_vocab_size=args.vocab, dropout_rate=0.0)
    flat = random_params(cfg, 0, weight_std=0.05)
    rng = np.random.default_rng(0)
    clean = rng.integers(3, args.vocab, (1, args.src_len)).astype(np.int32)
    corrupt = clean.copy()
    mid = args.src_len // 2
    corrupt[0, mid] = 3 if clean[0, mid] != 3 else 4  # one source token differs
    tgt = rng.integers(3, args.vocab, (1, args.tgt_len)).astype(np.int32)
    tgt[0, 0] = cfg.bos_id
    metric = logit_diff(1, args.tgt_len, args.vocab, args.tgt_len - 1, 10, 11)
    grids = [patching.head_grid(cfg, kind) for kind in
             ("encoder/self_attn", "decoder/self_attn", "decoder/cross_attn")]
    sites = sum(len(g.rows) * len(g.columns) for g in grids)
    adapters = {"jax": JaxAdapter(jax_model.from_canonical(flat, cfg), cfg),
                "torch": TorchAdapter(torch_model.Transformer(cfg).load_canonical(flat))}
    runs = patching.prepare(adapters["jax"], clean, corrupt, tgt, metric)
    times, first, values = {}, {}, {}
    for name, ad in adapters.items():
        def sweep(ad=ad):
            return patching.activation_patching(ad, clean, corrupt, tgt, metric, grids,
                                                runs=runs)

        start = time.perf_counter()
        sweep()
        first[name] = time.perf_counter() - start
        laps = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            values[name] = sweep()
            laps.append(time.perf_counter() - start)
        times[name] = statistics.median(laps)
    worst = max(float(np.abs(values["jax"][g.label]["values"]
                             - values["torch"][g.label]["values"]).max()) for g in grids)
    ratio = times["torch"] / times["jax"]
    print(f"patching sweep: {args.preset} preset (d_model {cfg.d_model}, {cfg.num_heads} heads, "
          f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers), s={args.src_len} "
          f"t={args.tgt_len}, {sites} head sites, {args.threads} thread(s), median of "
          f"{args.repeats}")
    for name in adapters:
        print(f"  {name:5s} {times[name] * 1e3:9.1f} ms per sweep ({times[name] / sites * 1e3:.2f} "
              f"ms per site; first sweep {first[name]:.1f} s)")
    print(f"  JAX vmap / torch loop speed-up: {ratio:.2f}x (target >= 3x); max |metric "
          f"difference| {worst:.2e}")
    if worst > 1e-3 * max(1.0, abs(runs.clean_value)):
        raise SystemExit(f"jax and torch sweeps disagree by {worst}")
    return {"times": times, "first": first, "ratio": ratio, "max_diff": worst}


if __name__ == "__main__":
    main()

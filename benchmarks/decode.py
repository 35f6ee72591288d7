"""Decoding speed side by side: greedy and beam search, with and without the KV cache, in JAX
(jit), PyTorch, and Hugging Face `generate`, one process, one model, the same weights.

    .venv/bin/python benchmarks/decode.py                  # d_model 256, 3+3 layers, batch 8
    .venv/bin/python benchmarks/decode.py --steps 32 --repeats 3 --only jax,torch

What is timed (median of `--repeats` calls after one warm-up call, which for JAX includes the
compilation, reported apart):
- cached:   `jax_model.greedy_decode` / `beam_search` (jitted), `torch_model.decoding`'s
            `greedy_decode` / `beam_search`, HF `generate(use_cache=True)`;
- uncached: the encoder runs once, then the decoder recomputes every position of the prefix at
            every step: in JAX over a fixed `[rows, steps]` buffer (one compilation; the causal
            mask hides the unfilled tail), in PyTorch over the growing prefix, in HF
            `generate(use_cache=False)`.  The uncached beam search is the textbook one (top
            `beams` of beams x vocabulary by summed log-probability).
Every run generates exactly `--steps` tokens: the output bias of eos is set to -1e9, so no
hypothesis ever ends early and all implementations do the same amount of work; the tokens of
every variant are checked to be identical to JAX's cached ones.
Targets: cached >= 5x faster than uncached; JAX beam search at least as fast as HF generate;
JAX cached greedy decoding per token at or ahead of HF `generate`.  The cached greedy rows are
also read against the machine: model FLOPs of the call (`benchmarks.flops`: the encoder, the
cross-attention keys and values once, then one decoder step per token over the filled prefix)
over its time, against the float32 matmul rate measured in this process just before
(`benchmarks.matmul_rate`); one-token steps are far from matmul-bound, so expect a small MFU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import flops, matmul_rate  # noqa: E402
from benchmarks.common import limit_threads, load_average  # noqa: E402
from spec import TransformerConfig  # noqa: E402

EOS_SUPPRESSION = -1.0e9


def build(args: argparse.Namespace) -> tuple[TransformerConfig, dict, np.ndarray]:
    """The model config, canonical weights (JAX init, eos suppressed) and a source batch."""
    import jax_model

    config = TransformerConfig(
        src_vocab_size=args.vocab, tgt_vocab_size=args.vocab, d_model=args.d_model,
        num_heads=args.heads, num_encoder_layers=args.layers, num_decoder_layers=args.layers,
        d_ff=4 * args.d_model, dropout_rate=0.0, max_len=max(args.steps, args.src_len) + 1,
        output_bias=True)
    flat = jax_model.to_canonical(jax_model.init(config, args.seed))
    flat["output/bias"] = flat["output/bias"].copy()
    flat["output/bias"][config.eos_id] = EOS_SUPPRESSION
    rng = np.random.default_rng(args.seed)
    src = rng.integers(4, args.vocab, size=(args.batch, args.src_len)).astype(np.int32)
    src[:, -1] = config.eos_id  # [b, s]
    return config, flat, src


# -- JAX -------------------------------------------------------------------------------------
def jax_variants(config: TransformerConfig, flat: dict, src: np.ndarray, steps: int,
                 beams: int) -> dict[tuple[str, str], Callable[[], np.ndarray]]:
    import jax
    import jax.numpy as jnp

    import jax_model

    params = jax_model.from_canonical(flat, config)
    model = jax_model.Transformer(config)
    src_j = jnp.asarray(src)
    b = src.shape[0]

    def encode(p, s):
        return model.apply({"params": p}, s, method=jax_model.Transformer.encode)

    def decoder_logits(p, encoded, s, tgt):  # tgt [rows, steps] -> [rows, steps, v]
        return model.apply({"params": p}, tgt, encoded, s != config.pad_id,
                           method=jax_model.Transformer.decode)

    @jax.jit
    def greedy_uncached(p, s):
        encoded = encode(p, s)
        tokens = jnp.full((b, steps + 1), config.pad_id, jnp.int32).at[:, 0].set(config.bos_id)

        def body(i, tokens):
            logits = decoder_logits(p, encoded, s, tokens[:, :steps])       # [b, n, v]
            nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, 1, False), -1)  # [b]
            return tokens.at[:, i + 1].set(nxt.astype(jnp.int32))

        return jax.lax.fori_loop(0, steps, body, tokens)[:, 1:]

    @jax.jit
    def beam_uncached(p, s):
        encoded = jnp.repeat(encode(p, s), beams, axis=0)                  # [b*k, s, m]
        s_k = jnp.repeat(s, beams, axis=0)
        tokens = jnp.full((b, beams, steps + 1), config.pad_id, jnp.int32).at[..., 0].set(
            config.bos_id)                                                   # [b, k, n+1]
        scores = jnp.tile(jnp.array([0.0] + [-1e9] * (beams - 1)), (b, 1))  # [b, k]

        def body(i, carry):
            tokens, scores = carry
            logits = decoder_logits(p, encoded, s_k, tokens.reshape(b * beams, -1)[:, :steps])
            step = jax.lax.dynamic_index_in_dim(logits, i, 1, False)        # [b*k, v]
            logp = jax.nn.log_softmax(step, -1).reshape(b, beams, -1)        # [b, k, v]
            cand = (scores[..., None] + logp).reshape(b, -1)                 # [b, k*v]
            scores, idx = jax.lax.top_k(cand, beams)                         # [b, k]
            origin, tok = idx // logp.shape[-1], idx % logp.shape[-1]
            tokens = jnp.take_along_axis(tokens, origin[..., None], axis=1)
            tokens = tokens.at[:, :, i + 1].set(tok.astype(jnp.int32))
            return tokens, scores

        tokens, _ = jax.lax.fori_loop(0, steps, body, (tokens, scores))
        return tokens[:, 0, 1:]

    # The public searches jit themselves (one compilation per config and length).
    def greedy_cached(p, s):
        return jax_model.greedy_decode(p, config, s, steps)

    def beam_cached(p, s):
        return jax_model.beam_search(p, config, s, beams, steps)

    def call(fn):
        def run():
            with jax.default_matmul_precision("highest"):
                return np.asarray(jax.block_until_ready(fn(params, src_j)))
        return run

    return {("greedy", "cached"): call(greedy_cached), ("greedy", "uncached"): call(greedy_uncached),
            (f"beam-{beams}", "cached"): call(beam_cached),
            (f"beam-{beams}", "uncached"): call(beam_uncached)}


# -- PyTorch ---------------------------------------------------------------------------------
def torch_variants(config: TransformerConfig, flat: dict, src: np.ndarray, steps: int,
                   beams: int, device: str) -> dict[tuple[str, str], Callable[[], np.ndarray]]:
    import torch

    import torch_model
    from torch_model import decoding

    model = torch_model.Transformer(config).load_canonical(flat).to(device).eval()
    src_t = torch.as_tensor(src, dtype=torch.int64, device=device)
    b = src.shape[0]

    @torch.no_grad()
    def greedy_uncached():
        mask = model.source_mask(src_t)
        memory = model.encode(src_t, mask)                                   # [b, s, m]
        tokens = torch.full((b, 1), config.bos_id, dtype=torch.int64, device=device)
        for _ in range(steps):
            logits = model.decode(tokens, memory, mask)                      # [b, t, v]
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return tokens[:, 1:]

    @torch.no_grad()
    def beam_uncached():
        s_k = src_t.repeat_interleave(beams, 0)
        mask = model.source_mask(s_k)
        memory = model.encode(s_k, mask)                                     # [b*k, s, m]
        tokens = torch.full((b, beams, 1), config.bos_id, dtype=torch.int64, device=device)
        scores = torch.full((b, beams), -1e9, device=device)
        scores[:, 0] = 0.0                                                   # [b, k]
        for _ in range(steps):
            logits = model.decode(tokens.reshape(b * beams, -1), memory, mask)[:, -1]
            logp = torch.log_softmax(logits.float(), -1).reshape(b, beams, -1)  # [b, k, v]
            scores, idx = (scores[..., None] + logp).reshape(b, -1).topk(beams, -1)
            origin, tok = idx // logp.shape[-1], idx % logp.shape[-1]
            tokens = torch.take_along_dim(tokens, origin[..., None], dim=1)
            tokens = torch.cat([tokens, tok[..., None]], dim=-1)
        return tokens[:, 0, 1:]

    def call(fn):
        def run():
            with torch_model.full_precision():
                out = fn()
            if device != "cpu":
                torch.cuda.synchronize()
            return out.cpu().numpy()
        return run

    return {("greedy", "cached"): call(lambda: decoding.greedy_decode(model, src_t, steps)),
            ("greedy", "uncached"): call(greedy_uncached),
            (f"beam-{beams}", "cached"): call(lambda: decoding.beam_search(model, src_t, beams,
                                                                            steps)),
            (f"beam-{beams}", "uncached"): call(beam_uncached)}


# -- Hugging Face ----------------------------------------------------------------------------
def hf_variants(config: TransformerConfig, flat: dict, src: np.ndarray, steps: int, beams: int,
                device: str) -> dict[tuple[str, str], Callable[[], np.ndarray]]:
    import torch

    import torch_model
    from hf_bridge import TransformerLabForConditionalGeneration

    model = TransformerLabForConditionalGeneration.from_canonical(flat, config).to(device)
    ids = torch.as_tensor(src, dtype=torch.int64, device=device)

    def generate(num_beams: int, use_cache: bool):
        def run():
            with torch.no_grad(), torch_model.full_precision():
                out = model.generate(
                    input_ids=ids, attention_mask=(ids != config.pad_id).long(),
                    decoder_start_token_id=config.bos_id, eos_token_id=config.eos_id,
                    pad_token_id=config.pad_id, max_new_tokens=steps, min_new_tokens=0,
                    num_beams=num_beams, length_penalty=1.0, early_stopping=False,
                    do_sample=False, use_cache=use_cache)
            if device != "cpu":
                torch.cuda.synchronize()
            return out[:, 1:].cpu().numpy()
        return run

    return {("greedy", "cached"): generate(1, True), ("greedy", "uncached"): generate(1, False),
            (f"beam-{beams}", "cached"): generate(beams, True),
            (f"beam-{beams}", "uncached"): generate(beams, False)}


# -- timing and report ------------------------------------------------------------------------
def measure(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, list[float], np.ndarray]:
    """(first call seconds, later call seconds, tokens of the first call)."""
    start = time.perf_counter()
    tokens = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, times, tokens




def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--layers", type=int, default=3, help="encoder layers = decoder layers")
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--src_len", type=int, default=32)
    p.add_argument("--steps", type=int, default=64, help="tokens generated per row")
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch and XLA (0: the libraries' defaults); one thread "
                        "keeps the comparison fair on a shared machine")
    p.add_argument("--only", default="jax,torch,hf",
                   help="comma-separated subset of jax, torch, hf")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    only = {x.strip() for x in args.only.split(",")}
    unknown = only - {"jax", "torch", "hf"}
    if unknown:
        raise SystemExit(f"--only: unknown implementation(s) {sorted(unknown)}; expected jax, "
                         f"torch, hf")
    if args.threads > 0:
        limit_threads(args.threads)
    config, flat, src = build(args)
    print(f"model d_model {config.d_model}, {config.num_heads} heads, "
          f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, vocab "
          f"{config.tgt_vocab_size}; batch {args.batch}, source {args.src_len} tokens, "
          f"{args.steps} new tokens; median of {args.repeats} after a warm-up call; "
          f"{args.threads or 'default'} thread(s); {load_average()}")
    variants = {}
    if "jax" in only:
        variants["jax"] = jax_variants(config, flat, src, args.steps, args.beams)
    if "torch" in only:
        variants["torch"] = torch_variants(config, flat, src, args.steps, args.beams,
                                           args.device)
    if "hf" in only:
        variants["hf generate"] = hf_variants(config, flat, src, args.steps, args.beams,
                                              args.device)
    medians: dict[tuple[str, str, str], float] = {}
    reference: dict[str, np.ndarray] = {}
    print(f"{'implementation':<14} {'search':<8} {'cache':<9} {'median s':>9} {'first s':>8}"
          f"  tokens")
    for impl, table in variants.items():
        for (search, cache), fn in table.items():
            first, times, tokens = measure(fn, args.repeats)
            medians[impl, search, cache] = statistics.median(times)
            ref = reference.setdefault(search, tokens)
            same = "same" if np.array_equal(ref, tokens) else \
                f"DIFFER from the first ({float(np.mean(ref == tokens)):.1%} equal)"
            print(f"{impl:<14} {search:<8} {cache:<9} {medians[impl, search, cache]:>9.4f} "
                  f"{first:>8.3f}  {same}", flush=True)
    print()
    for impl in variants:
        for search in ("greedy", f"beam-{args.beams}"):
            if (impl, search, "uncached") in medians:
                ratio = medians[impl, search, "uncached"] / medians[impl, search, "cached"]
                verdict = "meets" if ratio >= 5 else "MISSES"
                print(f"{impl:<14} {search:<8} cached is {ratio:5.1f}x faster than uncached "
                      f"({verdict} the 5x target)")
    rate = matmul_rate.measure(repeats=3)
    work = (flops.forward_flops(config, args.batch, args.src_len, 1).encoder
            + flops.cross_kv_flops(config, args.batch, args.src_len)
            + sum(flops.decode_step_flops(config, args.batch, args.src_len, i + 1).total
                  for i in range(args.steps)))
    print(f"\n{rate.describe()}; {load_average()}")
    for impl in variants:
        seconds = medians[impl, "greedy", "cached"]
        print(f"{impl:<14} greedy cached: {seconds / args.steps * 1e3:.2f} ms per token (batch "
              f"{args.batch}), {work / 1e9:.2f} GFLOP per call, {work / seconds / 1e9:.1f} "
              f"GFLOP/s, MFU {flops.mfu(work, seconds, rate.best):.1%}")
    if ("jax", "greedy", "cached") in medians and ("hf generate", "greedy", "cached") in medians:
        ratio = medians["hf generate", "greedy", "cached"] / medians["jax", "greedy", "cached"]
        verdict = "meets" if ratio >= 1 else "MISSES"
        print(f"jax greedy (cached) per token is {ratio:.2f}x the speed of HF generate "
              f"({verdict} the >= 1x target)")
    beam = f"beam-{args.beams}"
    if ("jax", beam, "cached") in medians and ("hf generate", beam, "cached") in medians:
        ratio = medians["hf generate", beam, "cached"] / medians["jax", beam, "cached"]
        verdict = "meets" if ratio >= 1 else "MISSES"
        print(f"jax {beam} (cached) is {ratio:.2f}x the speed of HF generate ({verdict} the "
              f">= 1x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

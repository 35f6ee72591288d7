"""Beam search that reproduces Hugging Face `generate(num_beams=K, ...)` token for token.

A jittable transcription of transformers' `GenerationMixin._beam_search` (v5) and its helpers
(`_get_top_k_continuations`, `_get_running_beams_for_next_iteration`,
`_update_finished_beams`, `_check_early_stop_heuristic`,
`_beam_search_has_unfinished_sequences`), in the static-shape style of flax
`examples/wmt/decode.py`.  Per batch row it keeps K running beams and K finished hypotheses:

* every step scores the K*V continuations (running score + log-softmax), keeps the top 2K;
* a continuation ending in eos, or reaching `max_len`, "hits a stopping criterion"; among the
  top 2K the best K that did not are the next running beams (the others get -1e9);
* those of the *first K* that did are candidates for the finished set with score
  `logprob_sum / generated_length ** alpha`; candidates are blocked (-1e9) when the row's
  finished set is full and `early_stopping is True`, or when the row's early-stop heuristic
  says no running beam can still beat its worst finished one;
* the loop ends when no row can improve, or (early_stopping True) every row is full, or every
  top-2K continuation hit a criterion (at `max_len`).

The -1e9 offsets are float32 additions exactly as in HF, including the initial running scores
(0 for beam 0, -1e9 for the others, so the first step expands beam 0 only).  As in
`generate(num_beams=1)`, beam_size 1 is greedy search.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from spec import TransformerConfig
from spec.patching import decode_plan

from .api import Params, traced_with
from .decoding import (
    capture_buffers,
    check_decode_inputs,
    check_positive_int,
    decode_step,
    encode,
    greedy_decode,
    record,
    run_search,
    start_cache,
    step_patch,
)
from .model import Transformer

NEG = -1.0e9  # HF's "impossible" score offset (exactly representable in float32)
EARLY_STOPPING = (True, False, "never")


class BeamState(NamedTuple):
    """The loop state of the search (a pytree, as flax `examples/wmt/decode.py`'s BeamState);
    torch_model.decoding.BeamState has the same fields.  b batch, K beams, L max_len."""

    step: jax.Array             # []: tokens generated so far (HF cur_len - 1)
    running: jax.Array          # [b, K, L] running beams' tokens
    running_scores: jax.Array   # [b, K] their summed log-probs (beams 1.. start at -1e9)
    finished_seqs: jax.Array    # [b, K, L] finished hypotheses
    finished_scores: jax.Array  # [b, K] their length-penalised scores (-1e9: empty slot)
    is_finished: jax.Array      # [b, K] which finished slots hold a hypothesis
    can_improve: jax.Array      # [b, 1] HF's is_early_stop_heuristic_unsatisfied
    last: jax.Array             # [b*K] the token fed at this step
    done: jax.Array             # []: the whole search stops
    cache: dict                 # the flax `cache` collection, rows = batch * K + beam
    buffers: dict               # capture: {name: [L, b*K, ...]}


def length_penalties(max_len: int, alpha: float) -> np.ndarray:
    """`[max_len + 1]` float32 table of n ** alpha (python float, then float32: torch divides a
    float32 tensor by the python scalar cast to float32).  Entry 0 is unused."""
    return np.array([1.0] + [float(n) ** alpha for n in range(1, max_len + 1)], np.float32)


def gather_beams(x: jax.Array, index: jax.Array) -> jax.Array:
    """HF `_gather_beams`: `[B, N, ...]`, `[B, K]` -> `[B, K, ...]` along the beam axis."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def beam_body(config: TransformerConfig, beams: int, max_len: int, alpha: float,
              early_stopping: bool | str, capture: bool):
    """The pure search `run(params, src, coeffs) -> (best [b, max_len], steps, buffers)`."""
    model = Transformer(config)
    vocab, keep = config.tgt_vocab_size, 2 * beams           # HF: max(2, 1 + n_eos) * beams
    penalty = jnp.asarray(length_penalties(max_len, alpha))  # [max_len + 1]
    stop_early = early_stopping is True
    # "never" with a positive alpha bounds the running beams at the longest possible length
    heuristic_at_max = early_stopping == "never" and alpha > 0.0
    top_k_mask = jnp.arange(keep) < beams                     # [2K]: only the first K can finish

    def run(params: Params, src: jax.Array, coeffs: dict):
        b = src.shape[0]
        rows = b * beams
        encoded = encode(model, params, src, coeffs)                           # [b, s, m]
        encoded = jnp.repeat(encoded, beams, axis=0)    # [b*K, s, m], row = batch * K + beam
        src_k = jnp.repeat(src, beams, axis=0)          # [b*K, s]
        cache = start_cache(model, params, encoded, src_k, max_len)
        first = jnp.full((rows,), config.bos_id, jnp.int32)
        buffers = {}
        if capture:
            shapes = jax.eval_shape(lambda c: decode_step(
                model, params, c, encoded, src_k, first, True, step_patch(coeffs, 0))[2], cache)
            buffers = capture_buffers(shapes, max_len)
        state = BeamState(
            step=jnp.array(0, jnp.int32),
            running=jnp.full((b, beams, max_len), config.pad_id, jnp.int32),
            running_scores=jnp.zeros((b, beams), jnp.float32).at[:, 1:].set(NEG),
            finished_seqs=jnp.full((b, beams, max_len), config.pad_id, jnp.int32),
            finished_scores=jnp.full((b, beams), NEG, jnp.float32),
            is_finished=jnp.zeros((b, beams), bool),
            can_improve=jnp.ones((b, 1), bool),
            last=first,
            done=jnp.array(False),
            cache=cache,
            buffers=buffers,
        )

        def body(s: BeamState) -> BeamState:
            t = s.step
            logits, cache, inter = decode_step(model, params, s.cache, encoded, src_k,
                                               s.last, capture, step_patch(coeffs, t))
            # logits [b*K, V]
            log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            log_probs = log_probs.reshape(b, beams, vocab) + s.running_scores[:, :, None]
            log_probs = log_probs.reshape(b, beams * vocab)                   # [b, K*V]

            # top-2K continuations (HF _get_top_k_continuations)
            top_scores, top_index = lax.top_k(log_probs, keep)                # [b, 2K]
            source_beam, token = top_index // vocab, top_index % vocab        # [b, 2K]
            top_seqs = gather_beams(s.running, source_beam).at[:, :, t].set(token)
            hits = (token == config.eos_id) | (t + 1 >= max_len)              # [b, 2K]

            # next running beams (HF _get_running_beams_for_next_iteration)
            running_scores = top_scores + hits.astype(jnp.float32) * NEG
            _, next_index = lax.top_k(running_scores, beams)                 # [b, K]
            running = gather_beams(top_seqs, next_index)                      # [b, K, L]
            running_scores = gather_beams(running_scores, next_index)         # [b, K]
            running_source = gather_beams(source_beam, next_index)            # [b, K]

            # finished hypotheses (HF _update_finished_beams)
            just_finished = hits & top_k_mask[None, :]
            candidate = top_scores / penalty[t + 1]
            full = jnp.all(s.is_finished, axis=-1, keepdims=True) & stop_early
            candidate = candidate + full.astype(jnp.float32) * NEG
            candidate = candidate + (~s.can_improve).astype(jnp.float32) * NEG
            candidate = candidate + (~just_finished).astype(jnp.float32) * NEG
            merged_scores = jnp.concatenate([s.finished_scores, candidate], axis=1)  # [b, 3K]
            _, best = lax.top_k(merged_scores, beams)                                  # [b, K]
            finished_seqs = gather_beams(
                jnp.concatenate([s.finished_seqs, top_seqs], axis=1), best)
            finished_scores = gather_beams(merged_scores, best)
            is_finished = gather_beams(
                jnp.concatenate([s.is_finished, just_finished], axis=1), best)

            # reorder the cache rows to follow their beams (HF cache.reorder_cache)
            rows_index = (jnp.arange(b)[:, None] * beams + running_source).reshape(rows)
            cache = jax.tree.map(lambda x: x[rows_index] if x.ndim else x, cache)

            # whole-search stopping (HF _check_early_stop_heuristic and
            # _beam_search_has_unfinished_sequences), at HF's incremented cur_len
            length = max_len if heuristic_at_max else t + 1
            best_running = running_scores[:, :1] / penalty[length]             # [b, 1]
            worst_finished = jnp.where(
                is_finished, jnp.min(finished_scores, axis=1, keepdims=True), NEG)  # [b, K]
            can_improve = s.can_improve & jnp.any(best_running > worst_finished, axis=-1,
                                                     keepdims=True)
            go_on = (jnp.any(can_improve) & ~(jnp.all(is_finished) & stop_early)
                     & ~jnp.all(hits))
            return BeamState(step=t + 1, running=running, running_scores=running_scores,
                             finished_seqs=finished_seqs, finished_scores=finished_scores,
                             is_finished=is_finished, can_improve=can_improve,
                             last=running[:, :, t].reshape(rows), done=~go_on, cache=cache,
                             buffers=record(s.buffers, inter, t))

        out = lax.while_loop(lambda s: ~s.done, body, state)
        return out.finished_seqs[:, 0], out.step, out.buffers

    return run


@functools.lru_cache(maxsize=32)
def _beam_fn(config: TransformerConfig, beams: int, max_len: int, alpha: float,
             early_stopping: bool | str, capture: bool):
    return jax.jit(beam_body(config, beams, max_len, alpha, early_stopping, capture))


def beam_search(params: Params, config: TransformerConfig, src: object, beam_size: int,
                max_len: int, alpha: float = 1.0, early_stopping: bool | str = False,
                capture: bool = False, patch=None):
    """HF-identical beam search: `src [b, s]` -> best hypothesis per row `[b, max_len]` (numpy
    int32; eos included, pad after), or `(tokens, {name: [steps, b * beam_size, ...]})` with
    `capture=True`.  `alpha` is HF's `length_penalty`; `early_stopping` True, False or "never".
    `patch` as in `greedy_decode`; a per-example batch axis of a coefficient is repeated per beam.
    """
    beam_size = check_positive_int("beam_size", beam_size)
    src_np = check_decode_inputs(config, src, max_len)
    if (isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer))
            or not np.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite real number (the length penalty; negative "
                         f"favours short hypotheses, as in HF), got {alpha!r}")
    if not any(early_stopping is v or (isinstance(v, str) and early_stopping == v)
               for v in EARLY_STOPPING):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if beam_size == 1:  # generate(num_beams=1) is greedy search
        return greedy_decode(params, config, src_np, max_len, patch=patch, capture=capture)
    fns, coeffs = decode_plan(patch, config, *src_np.shape, int(max_len), beam_size)
    args = (config, beam_size, int(max_len), float(alpha), early_stopping, bool(capture))
    fn = jax.jit(traced_with(fns, beam_body(*args))) if fns else _beam_fn(*args)
    return run_search(fn, params, src_np, capture, coeffs)

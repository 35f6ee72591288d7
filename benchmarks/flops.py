"""Model FLOPs of a forward pass, a train step and a cached decoding step, from the config and
the shapes alone (framework-free), so every timing can be read against the machine's matmul rate.

What is counted: the matmuls, at 2 FLOPs per multiply-add, as they are computed (padding
positions included, the causal half of the decoder's self-attention scores included: the models
compute the full square and mask it):
- per attention block: the query, key, value and output projections (`2 m m` per token each;
  cross-attention projects keys and values on the source tokens), the scores `QK^T`
  (`2 lk m` per query token, m = h * d) and the context `weights @ V` (the same);
- per FFN: `w1` and `w2` (`2 m f` per token each);
- the logits (`2 m v` per target token), tied or not.
Not counted: the embedding gather, biases, LayerNorm, softmax, activations, dropout, the loss and
the optimizer update (all O(tokens * m) or O(params), under 2% of the total on the benchmark
configs).  A train step is 3x the forward (the backward computes two matmuls per forward one:
gradients of the inputs and of the weights), the usual convention (Kaplan et al. 2020; PaLM's
MFU).  Shapes: b batch, s source length, t target length, m d_model, f d_ff, v vocabulary.
"""

from __future__ import annotations

import dataclasses

from spec import TransformerConfig


@dataclasses.dataclass(frozen=True)
class Flops:
    """FLOPs of one pass, by part; `total` is their sum."""

    encoder: int
    decoder: int
    logits: int

    @property
    def total(self) -> int:
        return self.encoder + self.decoder + self.logits


def _check(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: expected a positive integer")


def attention_flops(m: int, queries: int, keys: int, *, project_keys: bool = True) -> int:
    """One attention block over `queries` query and `keys` key tokens (per sequence).

    `project_keys=False` leaves out the key and value projections (a decoding step's
    cross-attention reads them from the cache, projected once at cache creation)."""
    projections = 2 * 2 * m * m * queries + (2 * 2 * m * m * keys if project_keys else 0)
    return projections + 2 * 2 * queries * keys * m  # + QK^T and weights @ V


def ffn_flops(m: int, f: int, tokens: int) -> int:
    return 2 * 2 * m * f * tokens


def forward_flops(config: TransformerConfig, batch: int, src_len: int, tgt_len: int) -> Flops:
    """The teacher-forced forward on `[batch, src_len]` sources and `[batch, tgt_len]` targets."""
    for name, value in (("batch", batch), ("src_len", src_len), ("tgt_len", tgt_len)):
        _check(name, value)
    m, f, s, t = config.d_model, config.d_ff, src_len, tgt_len
    encoder = config.num_encoder_layers * (attention_flops(m, s, s) + ffn_flops(m, f, s))
    decoder = config.num_decoder_layers * (attention_flops(m, t, t) + attention_flops(m, t, s)
                                           + ffn_flops(m, f, t))
    return Flops(encoder * batch, decoder * batch, 2 * m * config.tgt_vocab_size * t * batch)


def train_step_flops(config: TransformerConfig, batch: int, src_len: int, tgt_len: int,
                     grad_accum_steps: int = 1) -> int:
    """One optimizer update: 3x the forward of each of its micro-batches."""
    _check("grad_accum_steps", grad_accum_steps)
    return 3 * grad_accum_steps * forward_flops(config, batch, src_len, tgt_len).total


def decode_step_flops(config: TransformerConfig, batch: int, src_len: int, cache_len: int
                      ) -> Flops:
    """One cached decoding step: every decoder layer on one new position per row, its
    self-attention over `cache_len` cached keys (jax_model attends over the whole fixed-length
    cache, masked; torch and HF over the filled prefix), cross-attention over the `src_len`
    cached encoder keys, then the logits.  `encoder` is 0: the encoder runs once per call,
    see `forward_flops(...).encoder` and the cross-attention key/value projections
    (`cross_kv_flops`)."""
    for name, value in (("batch", batch), ("src_len", src_len), ("cache_len", cache_len)):
        _check(name, value)
    m, f = config.d_model, config.d_ff
    per_layer = (attention_flops(m, 1, cache_len, project_keys=False) + 2 * 2 * m * m
                 + attention_flops(m, 1, src_len, project_keys=False) + ffn_flops(m, f, 1))
    # + 2*2*m*m: the new position's own key and value projections in self-attention
    return Flops(0, config.num_decoder_layers * per_layer * batch,
                 2 * m * config.tgt_vocab_size * batch)


def cross_kv_flops(config: TransformerConfig, batch: int, src_len: int) -> int:
    """The cross-attention key and value projections of the encoder output, done once per
    decoding call (at cache creation) in every decoder layer."""
    return config.num_decoder_layers * 2 * 2 * config.d_model ** 2 * src_len * batch


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the measured matmul rate (a fraction)."""
    if not seconds > 0 or not peak_flops_per_s > 0:
        raise ValueError(f"seconds={seconds!r} and peak_flops_per_s={peak_flops_per_s!r} must "
                         f"be positive")
    return flops / seconds / peak_flops_per_s

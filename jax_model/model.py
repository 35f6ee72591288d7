"""The encoder-decoder Transformer as Flax linen modules, named so that the params tree IS the
canonical parameter set and every `tap` (patch, perturb, sow: jax_model/capture.py) lands on a
canonical intermediate name.

The modules, their order and their call signatures mirror torch_model/model.py one for one
(docs/architecture.md); the axis legend is spec/names.py's (b batch, s/t source/target length,
l either, q/k query/key length, h heads, d head dim, m d_model, f d_ff, v vocabulary).  Dropout (training only, `deterministic=False` with a "dropout" rng)
follows the paper: on the embedding output, on each sublayer's output before the residual add,
and on the attention weights when `attention_dropout_rate > 0`; none inside the FFN.

`decode=True` runs one target position per call against a `cache` collection (the Flax way,
as in flax `examples/wmt/models.py`): the first call, with a full-length dummy target, only
creates the cache (zero keys/values for self-attention, the projected encoder keys/values for
cross-attention, which are never recomputed); each later call appends one position.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from spec import TransformerConfig, position_table

from .attention import (
    attention_scores,
    causal_mask,
    masked_softmax,
    merge_heads,
    padding_mask,
    prefix_mask,
    split_heads,
    weighted_values,
)
from .capture import tap

# Xavier/Glorot for every projection (the Annotated Transformer), zero biases; token tables
# N(0, 1/m) so that tokens * sqrt(m) have unit variance (tensor2tensor).
KERNEL_INIT = nn.initializers.xavier_uniform()
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact erf form
    "swish": jax.nn.silu,
}


@functools.lru_cache(maxsize=16)
def fixed_positions(config: TransformerConfig) -> np.ndarray:
    """The spec's `[max_len + offset, m]` sinusoid table, computed once per config (a constant)."""
    return position_table(config)


def dense(features: int, name: str) -> nn.Dense:
    """A Dense with canonical `kernel [in, out]` and `bias [out]`."""
    return nn.Dense(features, kernel_init=KERNEL_INIT, bias_init=nn.initializers.zeros, name=name)


class TokenTable(nn.Module):
    """One token embedding table, param `embedding [v, m]`; a module of its own so that it can
    be shared by the encoder, the decoder and the tied output layer."""

    config: TransformerConfig
    side: str  # "encoder" or "decoder": which vocabulary

    def setup(self) -> None:
        vocab = self.config.src_vocab_size if self.side == "encoder" else self.config.tgt_vocab_size
        init = nn.initializers.normal(stddev=self.config.d_model ** -0.5)
        self.embedding = self.param("embedding", init, (vocab, self.config.d_model))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0)  # [b, l] -> [b, l, m]

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output: similarity of each state with every token vector."""
        return jnp.einsum("blm,vm->blv", x, self.embedding)


class Embed(nn.Module):
    """Token vectors -> scaled by sqrt(m) -> + positions -> [embed_norm] -> dropout; sows
    `tokens`, `output`.

    Token j reads position row j + `position_offset` of the fixed sinusoid table or of the
    learned param `positions [max_len + offset, m]`; with `zero_pad_positions` a pad token gets
    a zero position vector.  `norm` is the stack's `embed_norm` LayerNorm (`embedding_norm`),
    owned by the stack so that its canonical name is `{side}/embed_norm`.  With `decode=True`
    the position is the cache index (one position per call)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, ids: jax.Array, table: TokenTable, deterministic: bool = True,
                 decode: bool = False, norm: LayerNorm | None = None) -> jax.Array:
        cfg = self.config
        vectors = table(ids)  # [b, l] -> [b, l, m]
        if cfg.scale_embeddings:
            vectors = vectors * math.sqrt(cfg.d_model)
        vectors = tap(self, "tokens", vectors)
        if cfg.positional_encoding == "learned":
            table = self.param("positions", nn.initializers.normal(stddev=0.02),
                               (cfg.max_len + cfg.position_offset, cfg.d_model))
            table = table.astype(vectors.dtype)
        else:  # in the vectors' dtype, so a bfloat16 params tree computes in bfloat16 throughout
            table = jnp.asarray(fixed_positions(cfg), dtype=vectors.dtype)
        start = cfg.position_offset
        positions = table[None, start: start + vectors.shape[1]]  # [1, l, m]
        if decode:
            initialized = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialized:
                positions = lax.dynamic_slice_in_dim(table, start + index.value, 1)[None]  # [1, 1, m]
                index.value = index.value + 1
        if cfg.zero_pad_positions:
            positions = positions * (ids != cfg.pad_id)[..., None].astype(vectors.dtype)  # [b, l, m]
        x = vectors + positions
        if norm is not None:
            x = norm(x)
        x = nn.Dropout(cfg.dropout_rate, name="dropout")(x, deterministic=deterministic)
        return tap(self, "output", x)


class LayerNorm(nn.Module):
    """LayerNorm over m with params `scale`, `bias`; sows `input`, `output`.

    Two-pass variance (mean of squared deviations), as torch computes it, rather than flax's
    default E[x^2] - E[x]^2, so the mirrored models agree to float32 rounding."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        m = self.config.d_model
        scale = self.param("scale", nn.initializers.ones, (m,))
        bias = self.param("bias", nn.initializers.zeros, (m,))
        x = tap(self, "input", x)
        mean = jnp.mean(x, axis=-1, keepdims=True)                      # [b, l, 1]
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)    # [b, l, 1]
        y = (x - mean) * lax.rsqrt(var + self.config.layer_norm_eps) * scale + bias
        return tap(self, "output", y)


class Attention(nn.Module):
    """Multi-head attention with Dense `query`, `key`, `value`, `out` ([m, m] kernels).

    Head i owns columns i*d:(i+1)*d of the query/key/value kernels.  Sows q, k, v, scores
    (before masking), weights and context (before dropout) and output, each where it is made.  `cross=True` attends
    to `memory` (the encoder output); in decode mode its keys/values are projected once, at
    cache creation.  Self-attention in decode mode appends one key/value per call."""

    config: TransformerConfig
    cross: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, memory: jax.Array | None = None,
                 mask: jax.Array | None = None, deterministic: bool = True,
                 decode: bool = False) -> jax.Array:
        """x [b, q, m] attends over memory [b, k, m] (cross) or over itself (memory None)."""
        cfg = self.config
        h = cfg.num_heads
        key_proj, value_proj = dense(cfg.d_model, "key"), dense(cfg.d_model, "value")
        q = tap(self, "q", split_heads(dense(cfg.d_model, "query")(x), h))  # [b, h, q, d]
        if not self.cross:
            k, v = split_heads(key_proj(x), h), split_heads(value_proj(x), h)
            if decode:
                k, v, mask = self._append_to_cache(k, v, mask)
        elif decode and self.has_variable("cache", "cached_key"):
            k, v = self.get_variable("cache", "cached_key"), self.get_variable("cache", "cached_value")
        else:
            k, v = split_heads(key_proj(memory), h), split_heads(value_proj(memory), h)
            if decode:
                self.put_variable("cache", "cached_key", k)
                self.put_variable("cache", "cached_value", v)

        k, v = tap(self, "k", k), tap(self, "v", v)                     # [b, h, k, d]
        scores = tap(self, "scores", attention_scores(q, k))           # [b, h, q, k]
        weights = tap(self, "weights", masked_softmax(scores, mask))   # [b, h, q, k]
        dropped = nn.Dropout(cfg.attention_dropout_rate, name="weights_dropout")(
            weights, deterministic=deterministic)
        context = tap(self, "context", weighted_values(dropped, v))    # [b, h, q, d]
        return tap(self, "output", dense(cfg.d_model, "out")(merge_heads(context)))  # [b, q, m]

    def _append_to_cache(self, k: jax.Array, v: jax.Array, mask: jax.Array
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """flax linen's decode cache: the creating call stores zeros of the full length and
        attends normally; later calls write one position and see slots 0..index."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:
            return k, v, mask
        if k.shape[2] != 1:
            raise ValueError(f"decode mode takes one target position per call, got {k.shape[2]}")
        i = index.value
        k = lax.dynamic_update_slice(cached_key.value, k, (0, 0, i, 0))    # [b, h, L, d]
        v = lax.dynamic_update_slice(cached_value.value, v, (0, 0, i, 0))  # [b, h, L, d]
        cached_key.value, cached_value.value = k, v
        index.value = i + 1
        return k, v, prefix_mask(i, k.shape[2])


class FeedForward(nn.Module):
    """The paper's act(x W1 + b1) W2 + b2 with Dense `w1`, `w2`; sows pre_activation,
    activation, output."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        pre = tap(self, "pre_activation", dense(cfg.d_ff, "w1")(x))     # [b, l, f]
        act = tap(self, "activation", ACTIVATIONS[cfg.activation](pre))  # [b, l, f]
        return tap(self, "output", dense(cfg.d_model, "w2")(act))      # [b, l, m]


def residual(config: TransformerConfig, x: jax.Array, deterministic: bool, sublayer: nn.Module,
             *args) -> jax.Array:
    """One residual sublayer `sublayer(x, *args)`, creating `{name}_norm` (name =
    the sublayer's) in the calling module, as torch_model's `_Layer.residual` does.

    post-LN (the paper): norm(x + dropout(sublayer(x)));  pre-LN: x + dropout(sublayer(norm(x))).
    """
    name = sublayer.name
    norm = LayerNorm(config, name=f"{name}_norm")
    drop = nn.Dropout(config.dropout_rate, name=f"{name}_dropout")
    if config.norm_position == "pre":
        return x + drop(sublayer(norm(x), *args), deterministic=deterministic)
    return norm(x + drop(sublayer(x, *args), deterministic=deterministic))


def embed_norm(config: TransformerConfig) -> LayerNorm | None:
    """The stack's `embed_norm` (created in the calling stack module) when `embedding_norm`."""
    return LayerNorm(config, name="embed_norm") if config.embedding_norm else None


class EncoderLayer(nn.Module):
    """self_attn (keys masked at padding) then ffn, each a residual sublayer."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        x = residual(cfg, x, deterministic, Attention(cfg, name="self_attn"), None, mask,
                     deterministic)
        return residual(cfg, x, deterministic, FeedForward(cfg, name="ffn"))


class DecoderLayer(nn.Module):
    """Causal self_attn, cross_attn over the encoder output, then ffn."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, memory: jax.Array, self_mask: jax.Array,
                 cross_mask: jax.Array, deterministic: bool = True,
                 decode: bool = False) -> jax.Array:
        cfg = self.config
        x = residual(cfg, x, deterministic, Attention(cfg, name="self_attn"), None, self_mask,
                     deterministic, decode)
        x = residual(cfg, x, deterministic, Attention(cfg, cross=True, name="cross_attn"), memory,
                     cross_mask, deterministic, decode)
        return residual(cfg, x, deterministic, FeedForward(cfg, name="ffn"))


class Encoder(nn.Module):
    """embed -> layer_0..layer_{n-1} -> final_norm (pre-LN only); sows `output` [b, s, m]."""

    config: TransformerConfig
    shared: TokenTable | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, src: jax.Array, src_mask: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        """src [b, s] ids, src_mask [b, s] (True = real token) -> [b, s, m]."""
        cfg = self.config
        table = self.shared if self.shared is not None else TokenTable(cfg, "encoder",
                                                                        name="embedding")
        x = Embed(cfg, name="embed")(src, table, deterministic=deterministic,
                                     norm=embed_norm(cfg))
        mask = padding_mask(src_mask)  # [b, 1, 1, s]
        # remat: keep only each layer's input for the backward pass; `deterministic` (argument
        # 3, counting self) is a Python bool, so static
        layer = nn.remat(EncoderLayer, static_argnums=(3,)) if self.remat else EncoderLayer
        for i in range(cfg.num_encoder_layers):
            x = layer(cfg, name=f"layer_{i}")(x, mask, deterministic)
        if cfg.norm_position == "pre":
            x = LayerNorm(cfg, name="final_norm")(x)
        return tap(self, "output", x)


class Output(nn.Module):
    """Logits: tied (the decoder's token table) or `kernel [m, v]`, plus optional `bias [v]`."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, table: TokenTable) -> jax.Array:
        cfg = self.config
        if cfg.tie_output:
            logits = table.attend(x)  # [b, t, v]
        else:
            kernel = self.param("kernel", KERNEL_INIT, (cfg.d_model, cfg.tgt_vocab_size))
            logits = jnp.einsum("btm,mv->btv", x, kernel)
        if cfg.output_bias:
            logits = logits + self.param("bias", nn.initializers.zeros, (cfg.tgt_vocab_size,))
        return logits


class Decoder(nn.Module):
    """embed -> layers (causal self_attn, cross_attn, ffn) -> final_norm (pre-LN) -> logits;
    sows `output` [b, t, m].  The output layer is owned by the Transformer (canonical
    `output/*`) and applied here to the decoder's own table, as in torch_model."""

    config: TransformerConfig
    projection: Output
    shared: TokenTable | None = None
    remat: bool = False

    @nn.compact
    def __call__(self, tgt: jax.Array, memory: jax.Array, src_mask: jax.Array,
                 deterministic: bool = True, decode: bool = False) -> jax.Array:
        """tgt [b, t] ids (one position per call with decode=True), memory [b, s, m],
        src_mask [b, s] -> logits [b, t, v]."""
        cfg = self.config
        table = self.shared if self.shared is not None else TokenTable(cfg, "decoder",
                                                                        name="embedding")
        x = Embed(cfg, name="embed")(tgt, table, deterministic=deterministic, decode=decode,
                                     norm=embed_norm(cfg))
        self_mask = causal_mask(tgt.shape[1])        # [1, 1, t, t]
        cross_mask = padding_mask(src_mask)          # [b, 1, 1, s]
        # remat as in the Encoder; `deterministic` and `decode` are arguments 5 and 6
        layer = nn.remat(DecoderLayer, static_argnums=(5, 6)) if self.remat else DecoderLayer
        for i in range(cfg.num_decoder_layers):
            x = layer(cfg, name=f"layer_{i}")(x, memory, self_mask, cross_mask, deterministic,
                                              decode)
        if cfg.norm_position == "pre":
            x = LayerNorm(cfg, name="final_norm")(x)
        return self.projection(tap(self, "output", x), table)  # [b, t, v]


class Transformer(nn.Module):
    """The whole model: `__call__(src, tgt)` -> logits `[b, t, v]`, or `encode` then `decode`.

    `Transformer(config).apply({"params": params}, src, tgt, deterministic=False,
    rngs={"dropout": key})` is the pure training forward; add `mutable=["intermediates"]` to
    also get every sown intermediate.  `remat=True` recomputes each encoder and decoder layer
    in the backward pass (gradient checkpointing: less memory, the same gradients)."""

    config: TransformerConfig
    remat: bool = False

    def setup(self) -> None:
        cfg = self.config
        shared = None
        if cfg.share_embeddings:
            self.shared_embedding = TokenTable(cfg, "encoder")
            shared = self.shared_embedding
        self.output = Output(cfg)
        self.encoder = Encoder(cfg, shared=shared, remat=self.remat)
        self.decoder = Decoder(cfg, projection=self.output, shared=shared, remat=self.remat)

    def source_mask(self, src: jax.Array) -> jax.Array:
        """[b, s] True for real source tokens (keys equal to pad_id are masked)."""
        return src != self.config.pad_id

    def encode(self, src: jax.Array, src_mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
        """src [b, s] ids -> encoder output [b, s, m]."""
        if src_mask is None:
            src_mask = self.source_mask(src)
        return self.encoder(src, src_mask, deterministic=deterministic)

    def decode(self, tgt: jax.Array, memory: jax.Array, src_mask: jax.Array,
               deterministic: bool = True, decode: bool = False) -> jax.Array:
        """tgt [b, t] (one position per call with decode=True), memory [b, s, m], src_mask
        [b, s] -> logits [b, t, v]; taps `logits`."""
        logits = self.decoder(tgt, memory, src_mask, deterministic=deterministic, decode=decode)
        return tap(self, "logits", logits)

    def __call__(self, src: jax.Array, tgt: jax.Array, deterministic: bool = True) -> jax.Array:
        """src [b, s], tgt [b, t] (starts with bos) -> logits [b, t, v]."""
        src_mask = self.source_mask(src)
        return self.decode(tgt, self.encode(src, src_mask, deterministic), src_mask, deterministic)

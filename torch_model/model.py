"""The encoder-decoder Transformer as torch modules whose paths are the canonical names.

`encoder.layer_0.self_attn.query` is the Linear behind `encoder/layer_0/self_attn/query/*`, and
every canonical intermediate passes through a `Tap` at its own path (`...self_attn.weights`).
Modules own parameters and wiring; the math is in `attention.py`.  The modules, their order and
their call signatures mirror jax_model/model.py one for one (docs/architecture.md); the axis
legend is spec/names.py's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from spec import TransformerConfig, position_table

from .attention import (
    attention_scores,
    causal_mask,
    fused_attention,
    masked_softmax,
    merge_heads,
    padding_mask,
    split_heads,
    weighted_values,
)
from .canonical import canonical_grads, load_canonical, to_canonical
from .taps import Tap, name_taps

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": lambda x: F.gelu(x, approximate="none"),  # the exact erf form, never tanh
    "swish": F.silu,
}


def _dropout(rate: float) -> nn.Module:
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


class TokenTable(nn.Embedding):
    """One token embedding table, `weight [v, m]` (canonical `embedding`); the tied output
    layer reads the same weight (jax_model's `TokenTable.attend`)."""

    def __init__(self, config: TransformerConfig, side: str) -> None:
        vocab = config.src_vocab_size if side == "encoder" else config.tgt_vocab_size
        super().__init__(vocab, config.d_model)


class Embed(nn.Module):
    """Token vectors (scaled by sqrt(m)) plus positions, [the stack's embed_norm], then dropout.

    The token table is passed in, since it may be shared by both sides (`shared_embedding`).
    `positions` [max_len + position_offset, m] is a fixed sinusoid buffer, or the learned
    parameter `{side}/embed/positions`; token j reads row j + position_offset, and a pad token
    none with `zero_pad_positions`.  `offset` is the index of the first token (the KV cache
    length while decoding).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
        rows = config.max_len + config.position_offset
        if config.positional_encoding == "learned":
            self.positions = nn.Parameter(torch.zeros(rows, config.d_model))  # [rows, m]
        else:
            self.register_buffer("positions", torch.zeros(rows, config.d_model),
                                 persistent=False)  # [rows, m]
            self.reset_positions()
        self.dropout = _dropout(config.dropout_rate)
        self.tokens = Tap()
        self.output = Tap()

    def canonical_params(self) -> dict[str, tuple[nn.Parameter, bool]]:
        """A learned table is canonical `{side}/embed/positions` [rows, m]; a fixed one none."""
        if isinstance(self.positions, nn.Parameter):
            return {"positions": (self.positions, False)}
        return {}

    def reset_positions(self) -> None:
        """Refill a fixed sinusoid table (learned positions are parameters: left alone)."""
        if self.config.positional_encoding == "sinusoidal":
            with torch.no_grad():
                self.positions.copy_(torch.from_numpy(position_table(self.config)))

    def forward(self, ids: torch.Tensor, table: nn.Embedding, offset: int = 0,
                norm: LayerNorm | None = None) -> torch.Tensor:
        """ids [b, l], or the token vectors [b, l, m] that `table(ids)` would give (HF's
        `inputs_embeds`): either way they are scaled here."""
        vectors = table(ids) if ids.dim() == 2 else ids         # [b, l, m]
        x = self.tokens(vectors * self.scale)                   # [b, l, m]
        start = self.config.position_offset + offset
        positions = self.positions[start:start + ids.shape[1]].to(x.dtype)  # [l, m] over b
        if self.config.zero_pad_positions:
            if ids.dim() != 2:
                raise ValueError("zero_pad_positions needs token ids to find the pads; "
                                 "inputs_embeds cannot be used with this config")
            positions = positions * (ids != self.config.pad_id)[..., None].to(x.dtype)  # [b, l, m]
        x = x + positions
        if norm is not None:
            x = norm(x)
        return self.output(self.dropout(x))


class LayerNorm(nn.LayerNorm):
    """LayerNorm (`weight` <-> canonical `scale`) with `input` and `output` taps."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config.d_model, eps=config.layer_norm_eps)
        self.input = Tap()
        self.output = Tap()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input(x)
        return self.output(F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps))


class Attention(nn.Module):
    """Multi-head attention; `cross` reads keys and values from the encoder output.

    Taps (canonical order): q, k, v [b, h, l, d]; scores (before the mask) and weights (after
    the masked softmax, before dropout) [b, h, q, k]; context [b, h, q, d]; output [b, q, m]
    (after the `out` projection, before the residual dropout).

    `sdpa = True` (set by the HF bridge for `attn_implementation="sdpa"`) computes the context
    with torch's fused `scaled_dot_product_attention`, which never materialises scores or
    weights: their taps then see nothing, so while a hook is on either of them (capture, patch,
    HF's `output_attentions`) the layer runs the eager path instead.
    """

    sdpa = False

    def __init__(self, config: TransformerConfig, cross: bool = False) -> None:
        super().__init__()
        d = config.d_model
        self.num_heads = config.num_heads
        self.cross = cross
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.weights_dropout = _dropout(config.attention_dropout_rate)
        self.q, self.k, self.v = Tap(), Tap(), Tap()
        self.scores, self.weights, self.context, self.output = Tap(), Tap(), Tap(), Tap()

    def _project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = split_heads(self.key(source), self.num_heads)    # [b, h, k, d]
        v = split_heads(self.value(source), self.num_heads)  # [b, h, k, d]
        return k, v

    def _cached_kv(self, source: torch.Tensor, cache: Any, layer_idx: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V through an `EncoderDecoderCache`-like cache (transformers' or `cache.py`'s).

        Self-attention appends this step's K/V and attends over everything cached; cross-
        attention projects the encoder output once, on the first step, then reuses it.
        """
        if self.cross:
            cross = cache.cross_attention_cache
            if cache.is_updated.get(layer_idx, False):
                layer = cross.layers[layer_idx]
                return layer.keys, layer.values
            k, v = cross.update(*self._project_kv(source), layer_idx)
            cache.is_updated[layer_idx] = True
            return k, v
        self_cache = getattr(cache, "self_attention_cache", cache)
        return self_cache.update(*self._project_kv(source), layer_idx)

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, cache: Any = None,
                layer_idx: int = 0) -> torch.Tensor:
        """x [b, q, m] attends over source [b, k, m] (cross) or over itself (source None)."""
        if source is None:
            source = x
        q = self.q(split_heads(self.query(x), self.num_heads))           # [b, h, q, d]
        if cache is None:
            k, v = self._project_kv(source)
        else:
            k, v = self._cached_kv(source, cache, layer_idx)
        k, v = self.k(k), self.v(v)                                     # [b, h, k, d]
        if mask is not None and mask.shape[-1] < k.shape[-2]:
            # a static (preallocated) cache returns all its slots: those past the mask are empty
            mask = torch.cat([mask, mask.new_zeros(*mask.shape[:-1], k.shape[-2] - mask.shape[-1])],
                             dim=-1)
        if self.sdpa and not (self.scores._forward_hooks or self.weights._forward_hooks):
            rate = self.weights_dropout.p if self.training and hasattr(self.weights_dropout, "p") \
                else 0.0
            context = self.context(fused_attention(q, k, v, mask, rate))  # [b, h, q, d]
            return self.output(self.out(merge_heads(context)))             # [b, q, m]
        scores = self.scores(attention_scores(q, k))                    # [b, h, q, k]
        weights = self.weights(masked_softmax(scores, mask))           # [b, h, q, k]
        context = self.context(weighted_values(self.weights_dropout(weights), v))  # [b, h, q, d]
        return self.output(self.out(merge_heads(context)))             # [b, q, m]


class FeedForward(nn.Module):
    """The paper's position-wise `act(x W1 + b1) W2 + b2`; no dropout inside."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.d_model, config.d_ff)
        self.w2 = nn.Linear(config.d_ff, config.d_model)
        self.act_fn = ACTIVATIONS[config.activation]  # not `activation`: that name is the tap
        self.pre_activation, self.activation, self.output = Tap(), Tap(), Tap()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre_activation(self.w1(x))      # [b, l, f]
        h = self.activation(self.act_fn(h))      # [b, l, f]
        return self.output(self.w2(h))           # [b, l, m]


class _Layer(nn.Module):
    """Shared residual wiring (jax_model's `residual`): post-LN `norm(x + drop(f(x)))`, pre-LN
    `x + drop(f(norm(x)))`, with `f = sublayer(., *args)` and `norm` its `{sublayer}_norm`."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.dropout = _dropout(config.dropout_rate)

    def residual(self, x: torch.Tensor, norm: LayerNorm, sublayer: nn.Module,
                 *args: Any) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(norm(x), *args))
        return norm(x + self.dropout(sublayer(x, *args)))


class EncoderLayer(_Layer):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.self_attn = Attention(config)
        self.self_attn_norm = LayerNorm(config)
        self.ffn = FeedForward(config)
        self.ffn_norm = LayerNorm(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.residual(x, self.self_attn_norm, self.self_attn, None, mask)
        return self.residual(x, self.ffn_norm, self.ffn)


class DecoderLayer(_Layer):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.self_attn = Attention(config)
        self.self_attn_norm = LayerNorm(config)
        self.cross_attn = Attention(config, cross=True)
        self.cross_attn_norm = LayerNorm(config)
        self.ffn = FeedForward(config)
        self.ffn_norm = LayerNorm(config)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor,
                cross_mask: torch.Tensor, cache: Any = None, layer_idx: int = 0) -> torch.Tensor:
        x = self.residual(x, self.self_attn_norm, self.self_attn, None, self_mask, cache,
                          layer_idx)
        x = self.residual(x, self.cross_attn_norm, self.cross_attn, memory, cross_mask, cache,
                          layer_idx)
        return self.residual(x, self.ffn_norm, self.ffn)


class _Stack(nn.Module):
    """Embedding taps, `layer_{i}` children (add_module: ModuleList would name them `0`, `1`),
    the pre-LN `final_norm`, and the `output` tap."""

    def __init__(self, config: TransformerConfig, side: str, layer_cls: type, n: int) -> None:
        super().__init__()
        if not config.share_embeddings:
            self.embedding = TokenTable(config, side)
        self.embed = Embed(config)
        if config.embedding_norm:
            self.embed_norm = LayerNorm(config)
        self.num_layers = n
        for i in range(n):
            self.add_module(f"layer_{i}", layer_cls(config))
        if config.norm_position == "pre":
            self.final_norm = LayerNorm(config)
        self.output = Tap()
        self.gradient_checkpointing = False

    def _embed(self, ids: torch.Tensor, table: nn.Embedding | None, offset: int = 0
               ) -> torch.Tensor:
        """The embedding output [b, l, m], through `embed_norm` when the config has one."""
        return self.embed(ids, table if table is not None else self.embedding, offset,
                          getattr(self, "embed_norm", None))

    @property
    def layers(self) -> list[nn.Module]:
        return [getattr(self, f"layer_{i}") for i in range(self.num_layers)]

    def _run(self, layer: nn.Module, *args: Any) -> torch.Tensor:
        # a layer whose own flag is on (transformers' GradientCheckpointingLayer) checkpoints itself
        own = getattr(layer, "gradient_checkpointing", False)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and not own:
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "final_norm"):
            x = self.final_norm(x)
        return self.output(x)


class Encoder(_Stack):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config, "encoder", EncoderLayer, config.num_encoder_layers)

    def forward(self, src: torch.Tensor, key_mask: torch.Tensor,
                table: nn.Embedding | None = None) -> torch.Tensor:
        """src [b, s] ids, key_mask [b, s] (True = real token) -> [b, s, m]."""
        x = self._embed(src, table)
        mask = padding_mask(key_mask)  # [b, 1, 1, s]
        for layer in self.layers:
            x = self._run(layer, x, mask)
        return self._finish(x)


class Output(nn.Module):
    """The logits projection: `weight` [v, m] is canonical `output/kernel` transposed when the
    output is untied; when tied, the decoder's token table is passed in instead.  `bias` [v] is
    canonical `output/bias` (output_bias), which may exist alone beside a tied table."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        v, m = config.tgt_vocab_size, config.d_model
        self.register_parameter(
            "weight", None if config.tie_output else nn.Parameter(torch.empty(v, m)))
        self.register_parameter(
            "bias", nn.Parameter(torch.zeros(v)) if config.output_bias else None)

    def canonical_params(self) -> dict[str, tuple[nn.Parameter, bool]]:
        """`output/kernel` is `weight` [v, m] transposed; `output/bias` is `bias`."""
        params = {}
        if self.weight is not None:
            params["kernel"] = (self.weight, True)  # [v, m] -> [m, v]
        if self.bias is not None:
            params["bias"] = (self.bias, False)
        return params

    def forward(self, x: torch.Tensor, tied_weight: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight is not None else tied_weight
        return F.linear(x, weight, self.bias)  # [b, t, v]


class Decoder(_Stack):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config, "decoder", DecoderLayer, config.num_decoder_layers)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_key_mask: torch.Tensor,
                table: nn.Embedding | None, projection: Output, cache: Any = None,
                self_key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tgt [b, t] ids (the new ones only, when a cache holds the earlier ones),
        memory [b, s, m], memory_key_mask [b, s] -> logits [b, t, v].  The output layer is the
        Transformer's (canonical `output/*`), applied here to the decoder's table, as in
        jax_model.  `self_key_mask` [b, offset + t] (True = real) also hides target keys (HF's
        `decoder_attention_mask`); None: causal only.
        """
        offset = 0 if cache is None else cache.get_seq_length()
        x = self._embed(tgt, table, offset)
        t = tgt.shape[1]
        self_mask = causal_mask(t, offset + t, tgt.device)  # [1, 1, t, offset + t]
        if self_key_mask is not None:
            self_mask = self_mask & padding_mask(self_key_mask)  # [b, 1, t, offset + t]
        cross_mask = padding_mask(memory_key_mask)           # [b, 1, 1, s]
        for i, layer in enumerate(self.layers):
            if cache is None:
                x = self._run(layer, x, memory, self_mask, cross_mask)
            else:
                x = layer(x, memory, self_mask, cross_mask, cache, i)
        table = table if table is not None else self.embedding
        return projection(self._finish(x), table.weight)  # [b, t, v]


def init_module(module: nn.Module, d_model: int, generator: torch.Generator | None = None) -> None:
    """Initialise one module's own parameters: Xavier-uniform projections, N(0, 1/m) token
    tables, unit norms, zero biases (the HF bridge's `_init_weights` calls it per module)."""
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight, generator=generator)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=d_model ** -0.5, generator=generator)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Embed) and isinstance(module.positions, nn.Parameter):
            nn.init.normal_(module.positions, std=0.02, generator=generator)  # learned table
        elif isinstance(module, Output):
            if module.weight is not None:
                nn.init.xavier_uniform_(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class Transformer(nn.Module):
    """The whole model.  `forward(src, tgt)` -> logits [b, t, v]; see `api.forward` for the
    checked, captured, deterministic entry point."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"config must be a spec.TransformerConfig, got {type(config).__name__}")
        self.config = config
        if config.share_embeddings:
            self.shared_embedding = TokenTable(config, "encoder")
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.output = Output(config)
        self.logits = Tap()
        self.reset_parameters()
        name_taps(self)

    # -- parameters --------------------------------------------------------------------------
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Every module's `init_module`; deterministic under `torch.manual_seed` (or the given
        generator).  Cross-framework parity loads the same canonical weights, so these need not
        match Flax's initialisers."""
        for module in self.modules():
            init_module(module, self.config.d_model, generator)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        """Recompute each layer in the backward pass (training only) to save memory."""
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = bool(on)

    def load_canonical(self, flat: Any) -> Transformer:
        load_canonical(self, flat)
        return self

    def to_canonical(self) -> dict:
        return to_canonical(self)

    def canonical_grads(self) -> dict:
        return canonical_grads(self)

    # -- computation -------------------------------------------------------------------------
    @property
    def src_table(self) -> nn.Embedding:
        return self.shared_embedding if self.config.share_embeddings else self.encoder.embedding

    @property
    def tgt_table(self) -> nn.Embedding:
        return self.shared_embedding if self.config.share_embeddings else self.decoder.embedding

    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        """[b, s] True for real source tokens (keys equal to pad_id are masked)."""
        return src != self.config.pad_id

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src [b, s] -> encoder output [b, s, m]."""
        if src_mask is None:
            src_mask = self.source_mask(src)
        return self.encoder(src, src_mask, self.src_table)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               cache: Any = None, tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tgt [b, t] (new ids only, with a cache), memory [b, s, m], src_mask [b, s],
        tgt_mask [b, cached + t] or None (see `Decoder.forward`) -> logits [b, t, v]."""
        logits = self.decoder(tgt, memory, src_mask, self.tgt_table, self.output, cache, tgt_mask)
        return self.logits(logits)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor,
                src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src [b, s], tgt [b, t] (starts with bos) -> logits [b, t, v]."""
        if src_mask is None:
            src_mask = self.source_mask(src)
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

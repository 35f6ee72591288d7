"""Canonical names: every parameter and every intermediate, in the order the model runs.

These lists are the contract between the implementations: the Flax sow names, the torch tap
paths, the parity report and the plot titles all use them.

The one axis legend, used by every einsum string and shape comment in jax_model and
torch_model (and in the flax / gemma style of `"bhqd,bhkd->bhqk"`):

    b batch          s source length     t target length     l either length
    q query length   k key length        h heads             d head dim (d_model / h)
    m d_model        f d_ff              v vocabulary

(docs/architecture.md writes a head's width as "k" in its shape table, as the paper's d_k;
the code uses d, so that k can name the key axis of attention.)
"""

from __future__ import annotations

from .config import TransformerConfig

AXES = {"b": "batch", "s": "source length", "t": "target length", "l": "either length",
        "q": "query length", "k": "key length", "h": "heads", "d": "head dim (d_model / h)",
        "m": "d_model", "f": "d_ff", "v": "vocabulary"}

ATTENTION_POINTS = ("q", "k", "v", "scores", "weights", "context", "output")
FFN_POINTS = ("pre_activation", "activation", "output")
SIDES = ("encoder", "decoder")


def layer_index(name: str) -> int | None:
    """i of a canonical `{side}/layer_{i}/...` name, else None (embeddings, final norms,
    output, logits): the one parser of layer numbers."""
    parts = name.split("/")
    if len(parts) >= 2 and parts[0] in SIDES and parts[1].startswith("layer_"):
        tail = parts[1][len("layer_"):]
        if tail.isdigit():
            return int(tail)
    return None


def sublayers(side: str) -> tuple[str, ...]:
    """Sublayers of one layer, in order: encoder (self_attn, ffn), decoder adds cross_attn."""
    return ("self_attn", "ffn") if side == "encoder" else ("self_attn", "cross_attn", "ffn")


def num_layers(config: TransformerConfig, side: str) -> int:
    return config.num_encoder_layers if side == "encoder" else config.num_decoder_layers


def embedding_names(config: TransformerConfig) -> dict[str, str]:
    """Which parameter holds the token table of each side (they coincide when shared)."""
    if config.share_embeddings:
        return {"encoder": "shared_embedding/embedding", "decoder": "shared_embedding/embedding"}
    return {"encoder": "encoder/embedding/embedding", "decoder": "decoder/embedding/embedding"}


def param_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter name -> shape.  Dense kernels are [in, out].

    Learned positions `{side}/embed/positions` are `[max_len + position_offset, d]` (row j +
    offset is token j's); `{side}/embed_norm/*` exist with `embedding_norm`.
    Heads are contiguous column blocks: head h owns columns h*k:(h+1)*k of the query, key and
    value kernels (and rows h*k:(h+1)*k of the out kernel).
    """
    d, f = config.d_model, config.d_ff
    shapes: dict[str, tuple[int, ...]] = {}
    if config.share_embeddings:
        shapes["shared_embedding/embedding"] = (config.src_vocab_size, d)
    else:
        shapes["encoder/embedding/embedding"] = (config.src_vocab_size, d)
        shapes["decoder/embedding/embedding"] = (config.tgt_vocab_size, d)
    for side in SIDES:
        if config.positional_encoding == "learned":
            shapes[f"{side}/embed/positions"] = (config.max_len + config.position_offset, d)
        if config.embedding_norm:
            shapes[f"{side}/embed_norm/scale"] = (d,)
            shapes[f"{side}/embed_norm/bias"] = (d,)
        for i in range(num_layers(config, side)):
            for sub in sublayers(side):
                prefix = f"{side}/layer_{i}/{sub}"
                if sub == "ffn":
                    shapes[f"{prefix}/w1/kernel"] = (d, f)
                    shapes[f"{prefix}/w1/bias"] = (f,)
                    shapes[f"{prefix}/w2/kernel"] = (f, d)
                    shapes[f"{prefix}/w2/bias"] = (d,)
                else:
                    for proj in ("query", "key", "value", "out"):
                        shapes[f"{prefix}/{proj}/kernel"] = (d, d)
                        shapes[f"{prefix}/{proj}/bias"] = (d,)
                shapes[f"{prefix}_norm/scale"] = (d,)
                shapes[f"{prefix}_norm/bias"] = (d,)
        if config.norm_position == "pre":
            shapes[f"{side}/final_norm/scale"] = (d,)
            shapes[f"{side}/final_norm/bias"] = (d,)
    if not config.tie_output:
        shapes["output/kernel"] = (d, config.tgt_vocab_size)
    if config.output_bias:
        shapes["output/bias"] = (config.tgt_vocab_size,)
    return shapes


def intermediate_shapes(config: TransformerConfig, batch: int, src_len: int,
                        tgt_len: int) -> dict[str, tuple[int, ...]]:
    """Every canonical intermediate name -> shape, in execution order.

    Post-LN runs sublayer -> norm (norm/input = x + sublayer(x)); pre-LN runs norm -> sublayer
    (norm/input = x).  The order is what the parity report walks to name the first divergence.
    """
    b, h, k, d, f = batch, config.num_heads, config.head_dim, config.d_model, config.d_ff
    out: dict[str, tuple[int, ...]] = {}
    for side in SIDES:
        n = src_len if side == "encoder" else tgt_len
        out[f"{side}/embed/tokens"] = (b, n, d)
        if config.embedding_norm:  # on tokens + positions, before the embedding dropout
            out[f"{side}/embed_norm/input"] = (b, n, d)
            out[f"{side}/embed_norm/output"] = (b, n, d)
        out[f"{side}/embed/output"] = (b, n, d)
        for i in range(num_layers(config, side)):
            for sub in sublayers(side):
                prefix = f"{side}/layer_{i}/{sub}"
                norm = {f"{prefix}_norm/input": (b, n, d), f"{prefix}_norm/output": (b, n, d)}
                if config.norm_position == "pre":
                    out.update(norm)
                if sub == "ffn":
                    out[f"{prefix}/pre_activation"] = (b, n, f)
                    out[f"{prefix}/activation"] = (b, n, f)
                    out[f"{prefix}/output"] = (b, n, d)
                else:
                    lk = src_len if sub == "cross_attn" else n
                    out[f"{prefix}/q"] = (b, h, n, k)
                    out[f"{prefix}/k"] = (b, h, lk, k)
                    out[f"{prefix}/v"] = (b, h, lk, k)
                    out[f"{prefix}/scores"] = (b, h, n, lk)
                    out[f"{prefix}/weights"] = (b, h, n, lk)
                    out[f"{prefix}/context"] = (b, h, n, k)
                    out[f"{prefix}/output"] = (b, n, d)
                if config.norm_position == "post":
                    out.update(norm)
        if config.norm_position == "pre":
            out[f"{side}/final_norm/input"] = (b, n, d)
            out[f"{side}/final_norm/output"] = (b, n, d)
        out[f"{side}/output"] = (b, n, d)
    out["logits"] = (b, tgt_len, config.tgt_vocab_size)
    return out


def attention_names(config: TransformerConfig) -> list[str]:
    """Every attention block's prefix, e.g. `decoder/layer_1/cross_attn`, in execution order."""
    names = []
    for side in SIDES:
        for i in range(num_layers(config, side)):
            names += [f"{side}/layer_{i}/{sub}" for sub in sublayers(side) if sub != "ffn"]
    return names

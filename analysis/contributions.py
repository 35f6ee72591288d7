"""How much each sublayer changes the residual stream, and its direct effect on the logits.

Residual stream.  For sublayer `{side}/layer_{i}/{sub}` with input x (the residual stream it
reads) and output f = `{sub}/output`:
  pre-LN:  x = `{sub}_norm/input`                 (the norm sits on the branch)
  post-LN: x = `{sub}_norm/input` - f            (docs/architecture.md: norm/input = x + f(x))
`norm_ratio` = ||f|| / ||x|| and `cosine` = cos(f, x), per token, averaged over real tokens.

Direct effect on the logits (direct logit attribution, as TransformerLens does for GPT-2).
The decoder's final residual stream is a sum of pieces, each mapped to the logits linearly once
the LayerNorm scales are frozen:
  pre-LN:  decoder/output = LN_final(e + sum_l f_l), e = `decoder/embed/output`;
  post-LN: r <- LN_l(r + f_l) after every sublayer l, so piece c, added before norm l, reaches
           the output through every later norm on the residual path.
Approximation (post-LN and pre-LN alike): each LayerNorm on the residual path is replaced by
the affine map it applied on this input, c -> gamma * (c - mean(c)) / sigma, with sigma the
per-token standard deviation measured on the captured `{norm}/input`.  The norms' biases beta
are collected into their own piece ("norm_biases").  Then pieces + norm biases + output bias
reproduce the logits exactly (`reconstruction_error` reports the check), but a piece's effect
counts only the residual path: in post-LN, the later sublayers' reaction to it (its indirect
effect) is not included, and the frozen sigma is the one all pieces together produced.
Encoder sublayers have no direct path to the logits (only through cross-attention).
Per head (`per_head=True`): an attention sublayer's output is the sum of its heads' pieces
(context[:, h] @ W_out rows of head h) and the out bias, so the same frozen-norm map splits it
exactly into heads, as TransformerLens' `stack_head_results` does.
"""

from __future__ import annotations

import numpy as np

from spec import TransformerConfig, embedding_names, num_layers, sublayers


def _rows(x: np.ndarray, tokens: np.ndarray | None) -> np.ndarray:
    """[b, len, d] -> [real tokens, d]."""
    x = np.asarray(x, dtype=np.float64)
    return x[tokens] if tokens is not None else x.reshape(-1, x.shape[-1])


def residual_input(inter: dict, prefix: str, config: TransformerConfig) -> np.ndarray:
    """The residual stream sublayer `prefix` reads: [b, len, d]."""
    norm_in = np.asarray(inter[f"{prefix}_norm/input"], dtype=np.float64)
    if config.norm_position == "pre":
        return norm_in
    return norm_in - np.asarray(inter[f"{prefix}/output"], dtype=np.float64)


def sublayer_prefixes(config: TransformerConfig, side: str | None = None) -> list[str]:
    """Every sublayer (`{side}/layer_{i}/{sub}`) in execution order."""
    sides = ("encoder", "decoder") if side is None else (side,)
    return [f"{s}/layer_{i}/{sub}" for s in sides for i in range(num_layers(config, s))
            for sub in sublayers(s)]


def layer_contributions(inter: dict, config: TransformerConfig,
                        src_real: np.ndarray | None = None,
                        tgt_real: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """{sublayer prefix: {"norm_ratio", "cosine", "output_norm", "residual_norm"}}.

    src_real / tgt_real (bool [b, s] / [b, t]) select the real tokens of each side.
    A diverged model's intermediates can be inf or NaN; its statistics are then NaN (null in
    the report), without warnings.
    """
    out = {}
    for prefix in sublayer_prefixes(config):
        if f"{prefix}/output" not in inter or f"{prefix}_norm/input" not in inter:
            continue
        tokens = src_real if prefix.startswith("encoder") else tgt_real
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            f = _rows(inter[f"{prefix}/output"], tokens)  # [n, d]
            x = _rows(residual_input(inter, prefix, config), tokens)  # [n, d]
            nf, nx = np.linalg.norm(f, axis=-1), np.linalg.norm(x, axis=-1)
            tiny = np.finfo(np.float64).tiny
            out[prefix] = {
                "norm_ratio": float(np.mean(nf / np.maximum(nx, tiny))),
                "cosine": float(np.mean((f * x).sum(-1) / np.maximum(nf * nx, tiny))),
                "output_norm": float(nf.mean()),
                "residual_norm": float(nx.mean()),
            }
    return out


def unembedding(params: dict, config: TransformerConfig) -> np.ndarray:
    """The [d, v] matrix the logits are read with (tied: the decoder embedding table, [v, d]^T)."""
    if config.tie_output:
        return np.asarray(params[embedding_names(config)["decoder"]], dtype=np.float64).T
    return np.asarray(params["output/kernel"], dtype=np.float64)


def _frozen_norm(inter: dict, params: dict, norm: str, config: TransformerConfig):
    """The affine map a LayerNorm applied on this input, with sigma frozen: c -> gamma*(c-mean)/sigma."""
    x = np.asarray(inter[f"{norm}/input"], dtype=np.float64)  # [b, len, d]
    sigma = np.sqrt(x.var(-1, keepdims=True) + config.layer_norm_eps)  # [b, len, 1]
    gamma = np.asarray(params[f"{norm}/scale"], dtype=np.float64)

    def apply(c: np.ndarray) -> np.ndarray:
        return gamma * (c - c.mean(-1, keepdims=True)) / sigma

    return apply, np.asarray(params[f"{norm}/bias"], dtype=np.float64)


def head_outputs(inter: dict, params: dict, prefix: str, config: TransformerConfig
                 ) -> dict[str, np.ndarray]:
    """Attention block `prefix`'s output split into `{prefix}/head_{h}` pieces and
    `{prefix}/out_bias`, each [b, q, d], that sum to `{prefix}/output`.

    Head h owns rows h*k:(h+1)*k of the out kernel (docs/architecture.md), so its piece is
    context[:, h] @ W_out[h*k:(h+1)*k]."""
    ctx = np.asarray(inter[f"{prefix}/context"], np.float64)                # [b, h, q, k]
    k = config.head_dim
    w_out = np.asarray(params[f"{prefix}/out/kernel"], np.float64)          # [h*k, d]
    w_heads = w_out.reshape(config.num_heads, k, -1)                        # [h, k, d]
    per_head = np.einsum("bhqk,hkd->hbqd", ctx, w_heads)                    # [h, b, q, d]
    out = {f"{prefix}/head_{h}": per_head[h] for h in range(config.num_heads)}
    bias = np.asarray(params[f"{prefix}/out/bias"], np.float64)
    out[f"{prefix}/out_bias"] = np.broadcast_to(bias, per_head.shape[1:]).copy()
    return out


def residual_pieces(inter: dict, params: dict, config: TransformerConfig,
                    per_head: bool = False) -> dict[str, np.ndarray]:
    """The decoder's final residual stream split into pieces [b, t, d] that sum to it.

    Keys: `decoder/embed/output`, every decoder sublayer prefix, `norm_biases`; with
    `per_head`, each attention sublayer is split into its heads and out bias (`head_outputs`).
    """
    pieces = {"decoder/embed/output": np.asarray(inter["decoder/embed/output"], np.float64)}
    pieces["norm_biases"] = np.zeros_like(pieces["decoder/embed/output"])

    def through(norm: str) -> None:
        apply, beta = _frozen_norm(inter, params, norm, config)
        for name in pieces:
            pieces[name] = apply(pieces[name])
        pieces["norm_biases"] = pieces["norm_biases"] + beta

    for prefix in sublayer_prefixes(config, "decoder"):
        if per_head and not prefix.endswith("/ffn"):
            pieces.update(head_outputs(inter, params, prefix, config))
        else:
            pieces[prefix] = np.asarray(inter[f"{prefix}/output"], dtype=np.float64)
        if config.norm_position == "post":
            through(f"{prefix}_norm")
    if config.norm_position == "pre":
        through("decoder/final_norm")
    return pieces


def direct_logit_effects(inter: dict, params: dict, config: TransformerConfig,
                         per_head: bool = False) -> tuple[dict[str, np.ndarray], float]:
    """({piece: logits contribution [b, t, v]}, reconstruction error max|sum - logits|).

    Adds `output/bias` as a piece when the config has one; `per_head` splits attention
    sublayers into heads (see `residual_pieces`).
    """
    w_u = unembedding(params, config)  # [d, v]
    effects = {name: np.einsum("btm,mv->btv", c, w_u)
               for name, c in residual_pieces(inter, params, config, per_head).items()}
    if config.output_bias:
        bias = np.asarray(params["output/bias"], dtype=np.float64)
        effects["output/bias"] = np.broadcast_to(bias, next(iter(effects.values())).shape)
    total = sum(effects.values())
    error = float(np.abs(total - np.asarray(inter["logits"], np.float64)).max())
    return effects, error


def direct_logit_summary(effects: dict[str, np.ndarray], targets: np.ndarray,
                         tokens: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Per piece: the mean norm of its centred logit contribution, and its attribution.

    Logits matter only up to a shift (softmax), so each contribution is centred over the
    vocabulary first.  `attribution` is the centred contribution to the `targets` token
    ([b, t] ids: the labels, or the model's own predictions), averaged over real positions.
    """
    out = {}
    for name, e in effects.items():
        centred = e - e.mean(-1, keepdims=True)  # [b, t, v]
        at_target = np.take_along_axis(centred, targets[..., None], -1)[..., 0]  # [b, t]
        norms = np.linalg.norm(centred, axis=-1)  # [b, t]
        sel = tokens if tokens is not None else np.ones(targets.shape, bool)
        out[name] = {"logit_norm": float(norms[sel].mean()),
                     "attribution": float(at_target[sel].mean())}
    return out


def head_logit_attribution(effects: dict[str, np.ndarray], config: TransformerConfig,
                           logit_weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per-head direct logit attribution of a logit metric (`Metric.logit_weights` [b, t, v],
    e.g. a logit difference): {"decoder/self_attn heads": [layers, heads], "decoder/cross_attn
    heads": ...}, each entry sum(weights * effect of the head), from `direct_logit_effects(...,
    per_head=True)`.  With every other piece added, the attributions sum to the metric."""
    w = np.asarray(logit_weights, np.float64)
    out = {}
    for sub in ("self_attn", "cross_attn"):
        grid = np.zeros((num_layers(config, "decoder"), config.num_heads))
        for i in range(grid.shape[0]):
            for h in range(config.num_heads):
                grid[i, h] = float((w * effects[f"decoder/layer_{i}/{sub}/head_{h}"]).sum())
        out[f"decoder/{sub} heads"] = grid
    return out

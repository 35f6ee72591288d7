"""Decoder logit lens: read the residual stream after every decoder sublayer as if it were the
last one, and see where the target token becomes likely.

Each stage's stream is mapped to logits the way the model maps its final stream:
  post-LN: the stream after sublayer l is `{l}_norm/output` (already normalised; the last one
           *is* `decoder/output`), logits = stream @ W_u (+ output bias);
  pre-LN:  the stream after sublayer l is what the next norm reads (`{next}_norm/input`, or
           `decoder/final_norm/input` after the last), logits = final_norm(stream) @ W_u (+ b).
So the last stage reproduces the model's own logits in both layouts.  The first stage is the
embedding output (`decoder/embed/output`, read unnormalised in post-LN).
"""

from __future__ import annotations

import numpy as np

from spec import TransformerConfig

from .contributions import sublayer_prefixes, unembedding


def lens_stages(config: TransformerConfig) -> list[tuple[str, str]]:
    """(label, canonical name of the stream read) per stage, in execution order."""
    prefixes = sublayer_prefixes(config, "decoder")
    stages = [("decoder/embed", "decoder/embed/output")]
    if config.norm_position == "post":
        return stages + [(p, f"{p}_norm/output") for p in prefixes]
    after = [f"{p}_norm/input" for p in prefixes[1:]] + ["decoder/final_norm/input"]
    return stages + list(zip(prefixes, after))


def _layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def stage_logits(stream: np.ndarray, params: dict, config: TransformerConfig) -> np.ndarray:
    """[b, t, d] stream -> [b, t, v] logits through the final norm (pre-LN) and unembedding."""
    x = np.asarray(stream, np.float64)
    if config.norm_position == "pre":
        x = _layer_norm(x, np.asarray(params["decoder/final_norm/scale"], np.float64),
                        np.asarray(params["decoder/final_norm/bias"], np.float64),
                        config.layer_norm_eps)
    logits = np.einsum("btd,dv->btv", x, unembedding(params, config))
    if config.output_bias:
        logits = logits + np.asarray(params["output/bias"], np.float64)
    return logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def logit_lens(inter: dict, params: dict, config: TransformerConfig,
               targets: np.ndarray) -> dict:
    """{"stages": [label], "logprob": [stages, b, t], "rank": [stages, b, t]} of the `targets`
    tokens ([b, t] ids, e.g. the labels); rank 0 = the stage's top token."""
    targets = np.asarray(targets)
    labels, logprobs, ranks = [], [], []
    for label, name in lens_stages(config):
        if name not in inter:
            raise ValueError(f"logit lens needs the intermediate {name!r}, which the capture "
                             f"lacks")
        logits = stage_logits(inter[name], params, config)                  # [b, t, v]
        at = np.take_along_axis(logits, targets[..., None], -1)             # [b, t, 1]
        labels.append(label)
        logprobs.append(np.take_along_axis(log_softmax(logits), targets[..., None], -1)[..., 0])
        ranks.append((logits > at).sum(-1))
    return {"stages": labels, "logprob": np.stack(logprobs), "rank": np.stack(ranks)}

"""Source attribution of each generated token: saliency, input x gradient, integrated gradients.

For target position j the explained scalar is f_j = log p(y_j | source, y_<j), the log-prob of
the token the model produced there.  Attributions are over the token embeddings of both sides,
`encoder/embed/tokens` `[b, s, d]` and `decoder/embed/tokens` `[b, t, d]` (after scaling,
before positions), summed over d:

- saliency: ||df_j/dx_i||_2, how sensitive f_j is to token i (no sign);
- input x gradient: sum_d x_i * df_j/dx_i;
- integrated gradients (Sundararajan et al.): sum_d (x_i - x0_i) * mean_k df_j/dx_i at
  x0 + a_k (x - x0), a_k = (k + 1/2) / N (the midpoint rule, N steps), both sides moved
  together.  Completeness: sum over i of both maps = f_j(x) - f_j(x0), up to the quadrature
  error, which is reported per token.  It shrinks as 1/N^2 only where f is smooth: ReLU kinks
  and a saturated softmax make it uneven (a trained model's 59% at N = 32 was 29% at 96 and
  4.3% at 288), so with `tolerance` the steps are tripled, every gradient already taken kept
  (the midpoints of N are midpoints of 3N), until the error is within the tolerance, as
  Sundararajan et al. advise (a few percent of f(x) - f(x0)).

Every position j is one row of a batch (the input repeated), so one `intermediate_grads` call
gives the gradients of all generated tokens.  The interpolated embeddings enter the model with
`patch_from` on the two `embed/tokens` points; positions are added after them, as usual.
Baselines: "zero" (the zero embedding) or "pad" (every token replaced by the pad embedding).
Maps: `[t, s]` over source tokens and `[t, t]` over the decoder input (causal: j sees 0..j).
"""

from __future__ import annotations

import math

import numpy as np

from spec import TransformerConfig, embedding_names
from spec.interventions import Metric, patch_from

from .logit_lens import log_softmax

SIDES = ("encoder", "decoder")
BASELINES = ("zero", "pad")


def _names() -> dict[str, str]:
    return {side: f"{side}/embed/tokens" for side in SIDES}


def baseline_embeddings(config: TransformerConfig, params: dict, shapes: dict[str, tuple],
                        baseline: str) -> dict[str, np.ndarray]:
    """{name: x0 of that shape}: zeros, or the pad token's (scaled) embedding everywhere."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline {baseline!r} is unknown; expected one of {BASELINES}")
    out = {}
    for side, name in _names().items():
        if baseline == "zero":
            out[name] = np.zeros(shapes[name], np.float32)
            continue
        row = np.asarray(params[embedding_names(config)[side]][config.pad_id], np.float32)
        if config.scale_embeddings:
            row = row * np.float32(math.sqrt(config.d_model))
        out[name] = np.broadcast_to(row, shapes[name]).astype(np.float32)
    return out


def per_position_metric(targets: np.ndarray, vocab_size: int) -> Metric:
    """Row j of a [t, t] batch explains log p(targets[j]) at position j: one-hot weights."""
    t = len(targets)
    weights = np.zeros((t, t, vocab_size), np.float32)
    weights[np.arange(t), np.arange(t), targets] = 1.0
    return Metric("token_logprob", np.zeros((1, 1, 1), np.float32), weights)


def token_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[t, t, v] logits of the repeated batch -> f_j = log p(targets[j]) at row j, pos j."""
    t = len(targets)
    logp = log_softmax(np.asarray(logits, np.float64))
    return logp[np.arange(t), np.arange(t), targets]


def source_attribution(adapter, src, tgt, targets, steps: int = 32,
                       baseline: str = "zero", tolerance: float | None = None,
                       max_steps: int | None = None) -> dict:
    """Attribution maps of one example (`src` [1, s], decoder input `tgt` [1, t], `targets`
    [t] the tokens explained, e.g. the model's own output).

    `steps` IG points; with `tolerance`, tripled until the relative completeness error
    (largest token error over the largest |f(x) - f(x0)|) is at most `tolerance`, or the next
    count would pass `max_steps` (default 27 x `steps`).
    Returns {"saliency" | "input_x_gradient" | "integrated_gradients": {"source": [t, s],
    "target": [t, t]}, "f": [t], "f_baseline": [t], "completeness_error": [t],
    "completeness_relative_error", "steps": N used, "tolerance", "converged", "baseline"}."""
    src, tgt, targets = np.asarray(src), np.asarray(tgt), np.asarray(targets).reshape(-1)
    if src.ndim != 2 or src.shape[0] != 1 or tgt.ndim != 2 or tgt.shape[0] != 1:
        raise ValueError(f"source_attribution explains one example: src and tgt must be [1, len],"
                         f" got {src.shape} and {tgt.shape}")
    if targets.shape != (tgt.shape[1],):
        raise ValueError(f"targets must hold one token per target position ({tgt.shape[1]}), "
                         f"got shape {targets.shape}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer (IG quadrature points)")
    if tolerance is not None and not (isinstance(tolerance, (int, float))
                                      and not isinstance(tolerance, bool)
                                      and 0 < tolerance <= 1):
        raise ValueError(f"tolerance={tolerance!r} is invalid: expected a relative completeness "
                         f"error in (0, 1], or None for exactly `steps` points")
    max_steps = 27 * steps if max_steps is None else max_steps
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < steps:
        raise ValueError(f"max_steps={max_steps!r} is invalid: expected an integer >= steps "
                         f"({steps})")
    t = tgt.shape[1]
    src_rep, tgt_rep = np.repeat(src, t, 0), np.repeat(tgt, t, 0)          # [t, s], [t, t]
    config = adapter.config
    metric = per_position_metric(targets, config.tgt_vocab_size)
    names = list(_names().values())
    sides = ("source", "target")
    logits, inter = adapter.run(src_rep, tgt_rep)
    x = {n: np.asarray(inter[n], np.float64) for n in names}
    x0 = baseline_embeddings(config, adapter.params(), {n: v.shape for n, v in x.items()},
                             baseline)
    _, grads = adapter.intermediate_grads(src_rep, tgt_rep, metric, names=names)
    out: dict = {"baseline": baseline, "tolerance": tolerance}
    out["saliency"] = {side: np.linalg.norm(np.asarray(grads[n], np.float64), axis=-1)
                       for side, n in zip(sides, names)}
    out["input_x_gradient"] = {side: (x[n] * grads[n]).sum(-1) for side, n in zip(sides, names)}
    base_logits, _ = adapter.run(src_rep, tgt_rep, [patch_from(n, x0[n]) for n in names],
                                 capture=False)
    f = token_logprobs(logits, targets)
    f0 = token_logprobs(base_logits, targets)
    # relative to the largest change to explain; below a micro-nat there is none to speak of
    scale = max(1e-6, float(np.abs(f - f0).max()))

    total = {n: np.zeros_like(x[n]) for n in names}

    def add_gradients(alphas) -> None:
        for a in alphas:
            point = [patch_from(n, x0[n] + a * (x[n] - x0[n])) for n in names]
            _, g = adapter.intermediate_grads(src_rep, tgt_rep, metric, names=names,
                                              interventions=point)
            for n in names:
                total[n] += np.asarray(g[n], np.float64)

    n_steps = steps
    add_gradients((k + 0.5) / n_steps for k in range(n_steps))
    while True:
        ig = {side: ((x[n] - x0[n]) * total[n] / n_steps).sum(-1) for side, n in zip(sides, names)}
        error = np.abs(ig["source"].sum(-1) + ig["target"].sum(-1) - (f - f0))
        relative = float(error.max()) / scale
        converged = tolerance is not None and relative <= tolerance
        if tolerance is None or converged or 3 * n_steps > max_steps:
            break
        n_steps *= 3  # the old midpoints are the new k with k % 3 == 1
        add_gradients((k + 0.5) / n_steps for k in range(n_steps) if k % 3 != 1)
    out["integrated_gradients"] = ig
    out["f"], out["f_baseline"] = f, f0
    out["completeness_error"] = error
    out["completeness_relative_error"] = relative
    out["steps"], out["converged"] = n_steps, converged
    return out

"""Gradient flow: gradient norms per parameter, per sublayer and per layer, with warnings.

Norms are L2 norms (Frobenius for matrices); a group's norm is the L2 norm of all its
parameters' gradients together, sqrt(sum of squared norms), the same quantity global-norm
clipping uses.  Groups, in the order the forward pass runs:
  `embedding` (token tables, learned positions, embed_norm), `{side}/layer_{i}` (every
  parameter of the layer, its norms included), `{side}/final_norm` (pre-LN), `output` (untied
  kernel, bias).
"""

from __future__ import annotations

import math

import numpy as np

from spec import layer_index

# Vanishing: a layer's gradient norm below this is lost to float32 rounding relative to
# weights of order 1 (float32 has ~7 significant digits).
VANISHING_NORM = 1e-7
# Vanishing, relative: a layer whose gradient is below this fraction of the largest layer's
# learns ~1000x slower under SGD (Adam rescales, but such a gap still flags a broken path).
VANISHING_RATIO = 1e-3
# Exploding: a layer gradient norm above this is 100x the default clipping norm (1.0).
EXPLODING_NORM = 1e2

THRESHOLDS = {"vanishing_norm": VANISHING_NORM, "vanishing_ratio": VANISHING_RATIO,
              "exploding_norm": EXPLODING_NORM}


def parameter_norms(grads: dict) -> dict[str, float]:
    """{param name: L2 norm of its gradient}, in the given order."""
    return {name: float(np.linalg.norm(np.asarray(g, dtype=np.float64).ravel()))
            for name, g in grads.items()}


def layer_of(name: str) -> str:
    """The group a parameter belongs to (see the module docstring)."""
    parts = name.split("/")
    if parts[-1] == "embedding" or (len(parts) >= 2 and parts[1] in ("embed", "embed_norm")):
        return "embedding"  # token tables, learned positions, the embedding LayerNorm
    if parts[0] == "output":
        return "output"
    if len(parts) >= 2 and (parts[1].startswith("layer_") or parts[1] == "final_norm"):
        return f"{parts[0]}/{parts[1]}"
    raise ValueError(f"{name!r} is not a canonical parameter name")


def sublayer_of(name: str) -> str:
    """`decoder/layer_1/cross_attn/query/kernel` -> `decoder/layer_1/cross_attn`;
    norms get their own group (`..._norm`); other parameters their layer group."""
    parts = name.split("/")
    if len(parts) >= 4 and parts[1].startswith("layer_"):
        return "/".join(parts[:3])
    return layer_of(name)


def group_norms(norms: dict[str, float], group_of) -> dict[str, float]:
    """Combine parameter norms into group norms, sqrt(sum of squares), in first-seen order
    (`gradient_flow` sorts the parameters in forward order first)."""
    squares: dict[str, float] = {}
    for name, n in norms.items():
        key = group_of(name)
        squares[key] = squares.get(key, 0.0) + n * n
    return {key: math.sqrt(s) for key, s in squares.items()}


_SUBLAYER_ORDER = ("self_attn", "self_attn_norm", "cross_attn", "cross_attn_norm", "ffn",
                   "ffn_norm")


def execution_key(name: str) -> tuple:
    """Sort key putting parameter or group names in forward order: embedding, encoder layers
    (self_attn, its norm, ffn, its norm), encoder final_norm, decoder layers, output."""
    parts = name.split("/")
    if parts[0] in ("shared_embedding", "embedding") or parts[-1] == "embedding":
        return (0, 0, 0, name)
    if parts[0] == "output":
        return (3, 0, 0, name)
    side = 1 if parts[0] == "encoder" else 2
    layer = layer_index(name)
    if layer is None:
        return (side, 10**9, 0, name)
    sub = parts[2] if len(parts) > 2 else ""
    rank = _SUBLAYER_ORDER.index(sub) if sub in _SUBLAYER_ORDER else len(_SUBLAYER_ORDER)
    return (side, layer, rank, name)


def gradient_warnings(layer_norms: dict[str, float]) -> list[dict]:
    """One warning per layer whose gradient norm is non-finite, vanishing or exploding."""
    finite = [n for n in layer_norms.values() if math.isfinite(n)]
    largest = max(finite, default=0.0)
    out = []
    for name, n in layer_norms.items():
        if not math.isfinite(n):
            out.append({"kind": "non_finite", "layer": name, "norm": None, "threshold": None,
                        "message": f"{name}: gradient norm is {n}"})
        elif n > EXPLODING_NORM:
            out.append({"kind": "exploding", "layer": name, "norm": n,
                        "threshold": EXPLODING_NORM,
                        "message": f"{name}: gradient norm {n:.3g} > {EXPLODING_NORM:g}"})
        elif n < VANISHING_NORM:
            out.append({"kind": "vanishing", "layer": name, "norm": n,
                        "threshold": VANISHING_NORM,
                        "message": f"{name}: gradient norm {n:.3g} < {VANISHING_NORM:g}"})
        elif largest > 0 and n < VANISHING_RATIO * largest:
            out.append({"kind": "vanishing_relative", "layer": name, "norm": n,
                        "threshold": VANISHING_RATIO * largest,
                        "message": f"{name}: gradient norm {n:.3g} < {VANISHING_RATIO:g} x the "
                                   f"largest layer's {largest:.3g}"})
    return out


def gradient_flow(grads: dict, loss: float | None = None) -> dict:
    """The gradient-flow report: parameter, sublayer and layer norms, total norm, warnings."""
    if not grads:
        raise ValueError("grads is empty: expected {canonical parameter name: gradient array}")
    params = parameter_norms({k: grads[k] for k in sorted(grads, key=execution_key)})
    layers = group_norms(params, layer_of)
    subs = group_norms(params, sublayer_of)
    total = math.sqrt(sum(n * n for n in params.values()))
    return {
        "loss": None if loss is None else float(loss),
        "total_norm": total if math.isfinite(total) else None,
        "parameters": {k: (v if math.isfinite(v) else None) for k, v in params.items()},
        "sublayers": {k: (v if math.isfinite(v) else None) for k, v in subs.items()},
        "layers": {k: (v if math.isfinite(v) else None) for k, v in layers.items()},
        "warnings": gradient_warnings(layers),
        "thresholds": dict(THRESHOLDS),
    }

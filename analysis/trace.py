"""The `--debug` trace: the forward pass step by step, from captured intermediates.

The models never print; any implementation's capture (`{canonical name: array}`) is turned into
the tutorial's trace: for every attention block, Q, K and V after the projection (heads merged,
[b, len, d]) and after the head split ([b, h, len, k]), the scores, the weights, the context and
the output; for every LayerNorm its input and output; for every FFN the values before and after
the activation; encoder -> decoder -> logits.  Each line gives the shape, mean and std.
`format_trace_side_by_side` prints two captures of the same inputs and their difference.
"""

from __future__ import annotations

import numpy as np

from spec import TransformerConfig, intermediate_shapes

from .diff import error_stats

_ACTIVATION = {"relu": "ReLU", "gelu": "GELU", "swish": "Swish"}


def _shape(x: np.ndarray) -> str:
    return "[" + ", ".join(str(n) for n in x.shape) + "]"


def _stats(x: np.ndarray) -> str:
    x = np.asarray(x, dtype=np.float64)
    return f"{_shape(x)}, mean: {x.mean():.4f}, std: {x.std():.4f}"


def _merge_heads(x: np.ndarray) -> np.ndarray:
    """[b, h, len, k] -> [b, len, h*k]: the projection's output before the head split."""
    b, h, n, k = x.shape
    return np.asarray(x).transpose(0, 2, 1, 3).reshape(b, n, h * k)


def ordered_names(inter: dict, config: TransformerConfig | None) -> list[str]:
    """The captured names in execution order (spec's order; unknown names last)."""
    if config is None or "logits" not in inter:
        return list(inter)
    b, t = np.shape(inter["logits"])[:2]
    s = np.shape(inter["encoder/embed/output"])[1] if "encoder/embed/output" in inter else 1
    order = [n for n in intermediate_shapes(config, b, s, t) if n in inter]
    return order + [n for n in inter if n not in set(order)]


def _attention_lines(inter: dict, prefix: str) -> list[str]:
    get = inter.get
    lines = [f"=== Multi-Head Attention Forward Pass: {prefix} ==="]
    q, k, v = (get(f"{prefix}/{p}") for p in ("q", "k", "v"))
    if q is not None and k is not None and v is not None:
        lines.append(f"Input shapes - Q: {_shape(_merge_heads(q))}, "
                     f"K: {_shape(_merge_heads(k))}, V: {_shape(_merge_heads(v))}")
        lines.append("1. Linear Transformations:")
        for label, x in (("Q", q), ("K", k), ("V", v)):
            lines.append(f"   {label} after W_{label.lower()}: {_stats(_merge_heads(x))}")
        lines.append("2. Reshape for Multi-Head [b, h, len, k]:")
        for label, x in (("Q", q), ("K", k), ("V", v)):
            lines.append(f"   {label} reshaped: {_stats(x)}")
    step = 3
    for point, label in (("scores", "Scores Q K^T / sqrt(d_k), before masking"),
                         ("weights", "Attention weights, softmax with the mask"),
                         ("context", "Context = weights @ V"),
                         ("output", "Attention Output, after W_o")):
        x = get(f"{prefix}/{point}")
        if x is not None:
            lines.append(f"{step}. {label}: {_stats(x)}")
            step += 1
    return lines


def _norm_lines(inter: dict, norm: str) -> list[str]:
    lines = [f"--- LayerNorm {norm} ---"]
    for point, label in (("input", "before LayerNorm"), ("output", "after LayerNorm ")):
        x = inter.get(f"{norm}/{point}")
        if x is not None:
            lines.append(f"   {label}: {_stats(x)}")
    return lines


def _ffn_lines(inter: dict, prefix: str, act: str) -> list[str]:
    lines = [f"--- Feed-Forward {prefix} ---"]
    pre, post, out = (inter.get(f"{prefix}/{p}") for p in ("pre_activation", "activation",
                                                            "output"))
    if pre is not None:
        lines.append(f"   before {act} (x W1 + b1): {_stats(pre)}, "
                     f"negative: {float((np.asarray(pre) < 0).mean()):.1%}")
    if post is not None:
        lines.append(f"   after {act}: {_stats(post)}, zero: {float((np.asarray(post) == 0).mean()):.1%}")
    if out is not None:
        lines.append(f"   output (W2): {_stats(out)}")
    return lines


def format_trace(inter: dict, config: TransformerConfig | None = None) -> str:
    """The step-by-step trace of one capture (see the module docstring)."""
    if not inter:
        raise ValueError("inter is empty: expected {canonical intermediate name: array}")
    act = _ACTIVATION.get(config.activation, "activation") if config else "activation"
    lines: list[str] = []
    done: set[str] = set()
    side = None
    for name in ordered_names(inter, config):
        if name in done:
            continue
        parts = name.split("/")
        if parts[0] in ("encoder", "decoder") and parts[0] != side:
            side = parts[0]
            lines += ["", f"##### {side.capitalize()} #####"]
        if name == "logits":
            lines += ["", "##### Output #####", f"logits: {_stats(inter[name])}"]
            done.add(name)
            continue
        if len(parts) == 4 and parts[2] in ("self_attn", "cross_attn"):
            prefix = "/".join(parts[:3])
            lines += _attention_lines(inter, prefix)
            done.update(n for n in inter if n.startswith(prefix + "/"))
        elif len(parts) >= 3 and parts[-2].endswith("norm"):
            norm = "/".join(parts[:-1])
            lines += _norm_lines(inter, norm)
            done.update(f"{norm}/{p}" for p in ("input", "output"))
        elif len(parts) == 4 and parts[2] == "ffn":
            prefix = "/".join(parts[:3])
            lines += _ffn_lines(inter, prefix, act)
            done.update(n for n in inter if n.startswith(prefix + "/"))
        else:
            lines.append(f"{name}: {_stats(inter[name])}")
            done.add(name)
    return "\n".join(lines).lstrip("\n") + "\n"


def format_trace_side_by_side(a: dict, b: dict, config: TransformerConfig | None = None,
                              labels: tuple[str, str] = ("jax", "torch")) -> str:
    """Two captures of the same inputs, name by name: each one's mean and std, and
    max|a - b| with the normalised difference max|a - b| / max(1, max|a|)."""
    if labels[0] == labels[1]:
        raise ValueError(f"labels must differ, got {labels}")
    la, lb = labels
    width = max((len(n) for n in a), default=10)
    head = (f"{'name':<{width}}  {'shape':<18} {la + ' mean':>12} {la + ' std':>11} "
            f"{lb + ' mean':>12} {lb + ' std':>11} {'max|diff|':>10} {'normalised':>10}")
    lines = [head, "-" * len(head)]
    for name in ordered_names(a, config):
        if name not in b:
            lines.append(f"{name:<{width}}  missing in {lb}")
            continue
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        if x.shape != y.shape:
            lines.append(f"{name:<{width}}  shapes differ: {la} {_shape(x)}, {lb} {_shape(y)}")
            continue
        e = error_stats(x, y)
        lines.append(f"{name:<{width}}  {_shape(x):<18} {x.mean():>12.4f} {x.std():>11.4f} "
                     f"{y.mean():>12.4f} {y.std():>11.4f} {e['max_abs']:>10.2e} "
                     f"{e['normalized']:>10.2e}")
    lines += [f"{name:<{width}}  missing in {la}" for name in b if name not in a]
    return "\n".join(lines) + "\n"

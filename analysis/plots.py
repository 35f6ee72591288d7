"""Matplotlib figures over canonical intermediates and analysis results (headless).

Every function returns a `matplotlib.figure.Figure` built without pyplot, so no global backend
or window is ever involved (works under Agg, in threads, in tests).  Titles use canonical
names; every heatmap has token labels and a colour bar.  Sizes grow with the number of panels
so 8 heads x 6 layers stay readable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from spec import layer_index

from .attention import mean_entropy
from .gradients import EXPLODING_NORM, VANISHING_NORM
from .inputs import attention_kind, attention_prefixes
from .internals import capture_masks, check_captures

CMAP = "viridis"
KIND_STYLE = {"encoder/self_attn": "-", "decoder/self_attn": "--", "decoder/cross_attn": ":"}
SUBLAYER_COLOR = {"self_attn": "tab:blue", "cross_attn": "tab:orange", "ffn": "tab:green"}
MAX_TICKS = 40  # above this many tokens, label every n-th one


def token_labels(ids: Sequence[int] | np.ndarray | None, tokens: Sequence[str] | None = None,
                 n: int | None = None, specials: dict[int, str] | None = None) -> list[str]:
    """Axis labels: the given tokens, else the ids (special ids by name), else positions."""
    if tokens is not None:
        return [str(t) for t in tokens]
    if ids is not None:
        specials = specials or {}
        return [specials.get(int(i), str(int(i))) for i in ids]
    return [str(i) for i in range(n or 0)]


def _ticks(ax, labels_k: list[str] | None, labels_q: list[str] | None, show_x: bool = True,
           show_y: bool = True, size: float = 7) -> None:
    for labels, axis, show, rot in ((labels_k, ax.xaxis, show_x, 90), (labels_q, ax.yaxis,
                                                                         show_y, 0)):
        if labels is None or not show:
            axis.set_ticks([])
            continue
        step = max(1, math.ceil(len(labels) / MAX_TICKS))
        pos = list(range(0, len(labels), step))
        axis.set_ticks(pos)
        axis.set_ticklabels([labels[i] for i in pos], fontsize=size, rotation=rot)


def _heatmap(ax, w: np.ndarray, labels_k, labels_q, title: str, vmax: float, show_x=True,
             show_y=True, fontsize: float = 8):
    im = ax.imshow(w, cmap=CMAP, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    _ticks(ax, labels_k, labels_q, show_x, show_y, size=max(5.0, fontsize - 1))
    ax.set_title(title, fontsize=fontsize)
    return im


def _grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _as_heads(weights: np.ndarray) -> np.ndarray:
    """[q, k], [h, q, k] or [b, h, q, k] (first example) -> [h, q, k]."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 2:
        return w[None]
    if w.ndim == 3:
        return w
    if w.ndim == 4:
        return w[0]
    raise ValueError(f"attention_weights must be [q, k], [h, q, k] or [b, h, q, k], got shape "
                     f"{w.shape}")


def multihead_figure(weights: np.ndarray, key_labels: list[str] | None,
                     query_labels: list[str] | None, title: str, max_cols: int = 4) -> Figure:
    """One heatmap per head ([h, q, k] or [b, h, q, k]: first example), one shared colour bar."""
    w = _as_heads(weights)
    h, nq, nk = w.shape
    _check_labels(key_labels, nk, "key tokens")
    _check_labels(query_labels, nq, "query tokens")
    rows, cols = _grid_shape(h, max_cols)
    side = float(np.clip(0.22 * max(nq, nk), 2.6, 5.0))
    fig = Figure(figsize=(side * cols + 1.2, side * rows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    vmax = float(w.max()) or 1.0
    im = None
    for i, ax in enumerate(axes):
        if i >= h:
            ax.set_axis_off()
            continue
        im = _heatmap(ax, w[i], key_labels, query_labels, f"head {i}" if h > 1 else title,
                      vmax, show_x=i >= h - cols, show_y=i % cols == 0)
    for i, ax in enumerate(axes[:h]):
        if i >= h - cols:
            ax.set_xlabel("key", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("query", fontsize=8)
    fig.colorbar(im, ax=list(axes[:h]), shrink=0.8, label="attention weight")
    if h > 1:
        fig.suptitle(title, fontsize=11)
    return fig


def _check_labels(labels: list[str] | None, n: int, what: str) -> None:
    if labels is not None and len(labels) != n:
        raise ValueError(f"{what}: got {len(labels)} labels for an axis of length {n}")


def attention_grid_figure(inter: dict, kind: str, key_labels: list[str] | None,
                          query_labels: list[str] | None, example: int = 0) -> Figure:
    """Layers x heads for one attention kind (e.g. `encoder/self_attn`), one colour bar."""
    prefixes = [p for p in attention_prefixes(inter)
                if attention_kind(p) == kind and f"{p}/weights" in inter]
    if not prefixes:
        raise ValueError(f"the capture has no {kind} weights")
    ws = np.stack([np.asarray(inter[f"{p}/weights"])[example] for p in prefixes])  # [l, h, q, k]
    n_layers, h, nq, nk = ws.shape
    cell = float(np.clip(0.12 * max(nq, nk), 1.6, 3.0))
    fig = Figure(figsize=(cell * h + 1.5, cell * n_layers + 1.0), layout="constrained")
    axes = fig.subplots(n_layers, h, squeeze=False)
    vmax = float(ws.max()) or 1.0
    im = None
    for li, prefix in enumerate(prefixes):
        for hi in range(h):
            ax = axes[li, hi]
            im = _heatmap(ax, ws[li, hi], key_labels, query_labels,
                          f"{prefix.split('/')[1]} head {hi}", vmax,
                          show_x=li == n_layers - 1, show_y=hi == 0, fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight")
    fig.suptitle(f"{kind}/weights: layers (rows) x heads (columns), example {example}",
                 fontsize=11)
    return fig


def _steps_to_show(steps: list[int], n: int = 6) -> list[int]:
    if len(steps) <= n:
        return list(range(len(steps)))
    return sorted({int(round(i)) for i in np.linspace(0, len(steps) - 1, n)})


def attention_evolution_figure(captures: list, prefix: str, pad_id: int | None = None,
                               key_labels: list[str] | None = None,
                               query_labels: list[str] | None = None) -> Figure:
    """Top: `prefix`'s heads (columns) at up to 6 steps (rows).  Bottom: the mean attention
    entropy of every attention block over all steps (colour = layer, line style = kind)."""
    captures = check_captures(captures)
    steps = [s for s, _ in captures]
    name = f"{prefix}/weights"
    have = [i for i, (_, inter) in enumerate(captures) if name in inter]
    if not have:
        raise ValueError(f"no capture holds {name}")
    shown = [have[i] for i in _steps_to_show([steps[i] for i in have])]
    h = np.asarray(captures[have[0]][1][name]).shape[1]
    cell = 1.9
    fig = Figure(figsize=(max(cell * h + 1.6, 9.0), cell * len(shown) + 4.2),
                 layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[cell * len(shown), 3.6])
    axes = top.subplots(len(shown), h, squeeze=False)
    ws = [np.asarray(captures[i][1][name])[0] for i in shown]  # each [h, q, k]
    vmax = max(float(w.max()) for w in ws) or 1.0
    im = None
    for r, (i, w) in enumerate(zip(shown, ws)):
        for hi in range(h):
            ax = axes[r, hi]
            im = _heatmap(ax, w[hi], key_labels, query_labels, f"step {steps[i]}, head {hi}",
                          vmax, show_x=r == len(shown) - 1, show_y=hi == 0, fontsize=7)
    top.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label="attention weight")
    top.suptitle(f"{name} over training (example 0)", fontsize=11)
    ax = bottom.subplots()
    _entropy_lines(ax, captures, pad_id)
    return fig


def _entropy_lines(ax, captures: list, pad_id: int | None) -> None:
    from .inputs import masks_for

    series: dict[str, list[tuple[int, float]]] = {}
    for step, inter in captures:
        masks = capture_masks(inter, pad_id) or masks_for(inter, None, None, 0)
        for prefix in attention_prefixes(inter):
            if f"{prefix}/weights" not in inter:
                continue
            kind = attention_kind(prefix)
            ent = mean_entropy(inter[f"{prefix}/weights"], masks.queries[kind], masks.keys[kind])
            series.setdefault(prefix, []).append((step, float(ent.mean())))
    layers = max(layer_index(p) for p in series) + 1
    colors = _layer_colors(layers)
    for prefix, points in series.items():
        layer = layer_index(prefix)
        xs, ys = zip(*points)
        ax.plot(xs, ys, KIND_STYLE[attention_kind(prefix)], color=colors[layer], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("mean entropy (nats)")
    ax.set_title("attention entropy per block (mean over heads and real query rows)",
                 fontsize=10)
    _layer_kind_legend(ax, layers, [k for k in KIND_STYLE if any(attention_kind(p) == k
                                                                  for p in series)])
    ax.grid(alpha=0.3)


def _layer_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


def _layer_kind_legend(ax, layers: int, kinds: list[str]) -> None:
    colors = _layer_colors(layers)
    handles = [Line2D([], [], color=colors[i], label=f"layer_{i}") for i in range(layers)]
    handles += [Line2D([], [], color="black", linestyle=KIND_STYLE[k], label=k) for k in kinds]
    ax.legend(handles=handles, fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))


def qkv_evolution_figure(series: dict) -> Figure:
    """Mean and std (rows) of Q, K, V (columns) per attention block over training, averaged
    over heads (colour = layer, line style = kind); `series` from `qkv.qkv_evolution`."""
    if not series:
        raise ValueError("series is empty: no captured q, k, v")
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = fig.subplots(2, 3, squeeze=False)
    layers = max(layer_index(p) for p in series) + 1
    colors = _layer_colors(layers)
    for col, point in enumerate(("q", "k", "v")):
        for row, stat in enumerate(("mean", "std")):
            ax = axes[row, col]
            for prefix, points in series.items():
                if point not in points:
                    continue
                s = points[point]
                layer = layer_index(prefix)
                ax.plot(s["steps"], np.mean(s[stat], axis=1), KIND_STYLE[attention_kind(prefix)],
                        color=colors[layer], marker=".")
            ax.set_title(f"{{attn}}/{point}: {stat} over heads", fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel(stat)
            ax.grid(alpha=0.3)
    kinds = [k for k in KIND_STYLE if any(attention_kind(p) == k for p in series)]
    _layer_kind_legend(axes[0, 2], layers, kinds)
    fig.suptitle("Q, K, V after projection and head split, over training", fontsize=12)
    return fig


def _plottable(values: Sequence) -> np.ndarray:
    """Report values -> floats; None (a non-finite statistic) and +-inf become NaN, which
    matplotlib leaves out instead of failing on (a diverged model still gets its figure)."""
    out = np.array([np.nan if v is None else v for v in values], dtype=float)
    out[~np.isfinite(out)] = np.nan
    return out


def layer_contributions_figure(sublayers: dict, direct: dict | None = None) -> Figure:
    """Per sublayer (execution order): ||f(x)|| / ||x|| and cos(f(x), x); and each decoder
    piece's direct effect on the logits (norm and attribution to the target token)."""
    if not sublayers:
        raise ValueError("sublayers is empty: no contributions to plot")
    names = list(sublayers)
    panels = 3 if direct else 2
    fig = Figure(figsize=(max(9.0, 0.32 * len(names) + 3), 3.4 * panels), layout="constrained")
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]
    colors = [SUBLAYER_COLOR[n.rsplit("/", 1)[1]] for n in names]
    x = np.arange(len(names))
    for ax, key, label in ((axes[0], "norm_ratio", "||sublayer out|| / ||residual in||"),
                           (axes[1], "cosine", "cos(sublayer out, residual in)")):
        ax.bar(x, _plottable([sublayers[n][key] for n in names]), color=colors)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_ylabel(label, fontsize=9)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("how much each sublayer changes the residual stream (mean over tokens)",
                      fontsize=10)
    handles = [Line2D([], [], color=c, linewidth=6, label=s) for s, c in SUBLAYER_COLOR.items()]
    axes[0].legend(handles=handles, fontsize=8)
    if direct:
        pieces = direct["pieces"]
        pn = list(pieces)
        px = np.arange(len(pn))
        ax = axes[2]
        ax.bar(px - 0.2, _plottable([pieces[n]["logit_norm"] for n in pn]), width=0.4,
               label="norm of centred logit contribution", color="tab:purple")
        ax.bar(px + 0.2, _plottable([pieces[n]["attribution"] for n in pn]), width=0.4,
               label=f"attribution to the {direct['target']} token", color="tab:red")
        ax.set_xticks(px)
        ax.set_xticklabels(pn, rotation=90, fontsize=7)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel("logits", fontsize=9)
        error = _plottable([direct["reconstruction_error"]])[0]
        ax.set_title(f"direct effect on the logits (frozen LayerNorm scales; reconstruction "
                     f"error {error:.1e})", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return fig


def gradient_flow_figure(flow: dict) -> Figure:
    """Gradient norms per layer and per sublayer (log scale), with the warning thresholds."""
    layers, subs = flow["layers"], flow["sublayers"]
    fig = Figure(figsize=(max(9.0, 0.3 * len(subs) + 3), 8), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1)
    for ax, data, title in ((ax1, layers, "per layer"), (ax2, subs, "per sublayer / module")):
        names = list(data)
        vals = np.array([np.nan if data[n] is None else data[n] for n in names], dtype=float)
        shown = np.where(vals > 0, vals, np.nan)
        colors = ["tab:red" if not np.isfinite(v) or v > EXPLODING_NORM or v < VANISHING_NORM
                  else "tab:blue" for v in vals]
        ax.bar(np.arange(len(names)), np.nan_to_num(shown, nan=VANISHING_NORM / 10),
               color=colors)
        ax.set_yscale("log")
        ax.axhline(EXPLODING_NORM, color="tab:red", linestyle="--", linewidth=0.8,
                   label=f"exploding > {EXPLODING_NORM:g}")
        ax.axhline(VANISHING_NORM, color="tab:gray", linestyle="--", linewidth=0.8,
                   label=f"vanishing < {VANISHING_NORM:g}")
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_ylabel("gradient L2 norm")
        ax.set_title(f"gradient norms {title}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    ax1.legend(fontsize=8)
    loss = flow.get("loss")
    warn = flow.get("warnings", [])
    fig.suptitle(f"gradient flow (loss {loss:.4f}); {len(warn)} warning(s)" if loss is not None
                 else f"gradient flow; {len(warn)} warning(s)", fontsize=12)
    return fig


def training_curves_figure(records: list[dict]) -> Figure:
    """One panel for every loss-like metric (all splits together) and one per other metric.

    `records`: dicts with `step` and metric values (optionally `split`, as in metrics.jsonl).
    """
    if not records:
        raise ValueError("records is empty: expected a list of {step, loss, ...} dicts")
    skip = {"step", "split", "epoch", "time", "seconds", "elapsed"}
    series: dict[str, dict[str, list]] = {}
    for r in records:
        if "step" not in r:
            raise ValueError(f"every record needs a 'step', got keys {sorted(r)}")
        split = r.get("split", "train")
        for k, v in r.items():
            if k in skip or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            series.setdefault(k, {}).setdefault(split, []).append((r["step"], v))
    losses = [k for k in series if "loss" in k]
    others = [k for k in series if "loss" not in k]
    panels = ([("loss", losses)] if losses else []) + [(k, [k]) for k in others]
    if not panels:
        raise ValueError("records hold no numeric metric besides step")
    rows, cols = _grid_shape(len(panels), 3)
    fig = Figure(figsize=(5 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, keys) in zip(axes, panels):
        for k in keys:
            for split, pts in series[k].items():
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=f"{split} {k}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.suptitle("training curves", fontsize=12)
    return fig


def cross_attention_figure(inter: dict, src_labels: list[str] | None,
                           tgt_labels: list[str] | None, example: int = 0) -> Figure:
    """Source-target alignment: each decoder layer's cross-attention, mean over heads, with
    the argmax source token of every target position marked."""
    prefixes = [p for p in attention_prefixes(inter)
                if attention_kind(p) == "decoder/cross_attn" and f"{p}/weights" in inter]
    if not prefixes:
        raise ValueError("the capture has no decoder/layer_{i}/cross_attn/weights")
    ws = [np.asarray(inter[f"{p}/weights"])[example].mean(0) for p in prefixes]  # [t, s] each
    nq, nk = ws[0].shape
    cols = len(ws)
    side = float(np.clip(0.28 * max(nq, nk), 3.6, 6.0))
    fig = Figure(figsize=(side * cols + 1.5, side + 1.2), layout="constrained")
    axes = fig.subplots(1, cols, squeeze=False)[0]
    vmax = max(float(w.max()) for w in ws) or 1.0
    im = None
    for i, (ax, w, p) in enumerate(zip(axes, ws, prefixes)):
        im = _heatmap(ax, w, src_labels, tgt_labels, f"{p}/weights\n(mean over heads)", vmax,
                      show_y=i == 0, fontsize=9)
        ax.plot(w.argmax(-1), np.arange(nq), "o", color="white", markersize=3, alpha=0.8)
        ax.set_xlabel("source token")
    axes[0].set_ylabel("target token (decoder input)")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="attention weight")
    # One layer's figure is narrower than the title: break it.
    fig.suptitle("cross-attention alignment" + ("\n" if cols == 1 else " ")
                 + "(white dots: most attended source token)", fontsize=11)
    return fig


def diff_heatmap_figure(diff: dict, floor: float = 1e-12) -> Figure:
    """The normalised error max|a-b| / max(1, max|ref|) of every intermediate, as a grid:
    rows = the module path, columns = the point name; blank = not captured."""
    entries = diff["entries"]
    if not entries:
        raise ValueError("diff has no common intermediates")
    rows: list[str] = []
    cols: list[str] = []
    for name in entries:
        parent, leaf = name.rsplit("/", 1) if "/" in name else ("(model)", name)
        if parent not in rows:
            rows.append(parent)
        if leaf not in cols:
            cols.append(leaf)
    preferred = ["tokens", "input", "q", "k", "v", "scores", "weights", "context",
                 "pre_activation", "activation", "output", "logits"]
    cols.sort(key=lambda c: preferred.index(c) if c in preferred else len(preferred))
    grid = np.full((len(rows), len(cols)), np.nan)
    for name, e in entries.items():
        parent, leaf = name.rsplit("/", 1) if "/" in name else ("(model)", name)
        value = e.get("normalized")
        grid[rows.index(parent), cols.index(leaf)] = np.inf if value is None else max(value,
                                                                                      floor)
    fig = Figure(figsize=(1.0 * len(cols) + 5.5, 0.24 * len(rows) + 2.2), layout="constrained")
    ax = fig.subplots()
    finite = np.where(np.isfinite(grid), grid, np.nan)
    top = max(np.nanmax(finite) if np.isfinite(finite).any() else 1.0, floor * 10)
    im = ax.imshow(np.ma.masked_invalid(finite), cmap="magma", norm=LogNorm(vmin=floor,
                   vmax=max(top, 1e-3)), aspect="auto", interpolation="nearest")
    for r, c in zip(*np.where(np.isinf(grid))):
        ax.text(c, r, "shape", ha="center", va="center", fontsize=6, color="red")
    if len(rows) <= 80:
        for r, c in zip(*np.where(np.isfinite(grid))):
            text = "0" if grid[r, c] <= floor else f"{grid[r, c]:.0e}"
            ax.text(c, r, text, ha="center", va="center", fontsize=6,
                    color="white" if grid[r, c] < 1e-8 else "black")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=7)
    fig.colorbar(im, ax=ax, label="max|a - b| / max(1, max|ref|)")
    missing = {k: len(v) for k, v in diff["missing"].items()}
    ax.set_title(f"{diff['ref']} vs {diff['other']}: normalised error per intermediate "
                 f"(floor {floor:g}; names missing: {missing})", fontsize=10)
    return fig

"""Figures of the causal analyses (headless, no pyplot): layer x head heatmaps per attention
kind, layer x position heatmaps with token labels, logit-lens lines, attribution maps, and the
activation- vs attribution-patching scatter.  Signed quantities use a diverging map centred
on 0, so red / blue read the same in every panel of a figure.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .plots import _ticks

DIVERGING = "RdBu_r"


def _limit(arrays: Sequence[np.ndarray]) -> float:
    top = max((float(np.nanmax(np.abs(a))) for a in arrays if np.size(a)), default=0.0)
    return top if top > 0 else 1.0


def _wrap(title: str, fig: Figure) -> str:
    """Break a long title to the figure's width (about 15 characters per inch at 9 pt)."""
    return "\n".join(textwrap.wrap(title, max(40, int(fig.get_figwidth() * 15))))


def _signed(ax, fig, grid: np.ndarray, vmax: float, annotate: bool):
    im = ax.imshow(grid, cmap=DIVERGING, vmin=-vmax, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    if annotate and grid.size <= 128:
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if abs(v) > 0.6 * vmax else "black")
    return im


def head_grids_figure(grids: dict[str, np.ndarray], title: str) -> Figure:
    """One panel per attention kind: `{label: [layers, heads]}`, a shared colour scale."""
    if not grids:
        raise ValueError("head_grids_figure needs at least one [layers, heads] grid")
    n = len(grids)
    width = max(3.2, 0.55 * max(g.shape[1] for g in grids.values()) + 1.6)
    fig = Figure(figsize=(width * n, 0.45 * max(g.shape[0] for g in grids.values()) + 1.8),
                 layout="constrained")
    vmax = _limit(list(grids.values()))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (label, grid) in zip(axes, grids.items()):
        im = _signed(ax, fig, np.asarray(grid, np.float64), vmax, annotate=True)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        ax.set_yticklabels([f"layer {i}" for i in range(grid.shape[0])], fontsize=7)
        ax.set_xlabel("head", fontsize=8)
        ax.set_title(label, fontsize=8)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(_wrap(title, fig), fontsize=9)
    return fig


def position_grids_figure(grids: dict[str, np.ndarray], tokens: dict[str, list[str]],
                          title: str) -> Figure:
    """Layer x position panels (`{"encoder residual": [layers, s], ...}`); `tokens` maps a
    side ("encoder", "decoder") to its position labels."""
    if not grids:
        raise ValueError("position_grids_figure needs at least one [layers, positions] grid")
    n = len(grids)
    widest = max(g.shape[1] for g in grids.values())
    rows = max(g.shape[0] for g in grids.values())
    fig = Figure(figsize=(max(7.0, 0.5 * widest + 3.0), (0.3 * rows + 1.3) * n + 0.4),
                 layout="constrained")
    vmax = _limit(list(grids.values()))
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (label, grid) in zip(axes, grids.items()):
        side = label.split()[0]
        im = _signed(ax, fig, np.asarray(grid, np.float64), vmax, annotate=False)
        labels = tokens.get(side)
        if labels is not None and len(labels) != grid.shape[1]:
            raise ValueError(f"{len(labels)} {side} token labels for {grid.shape[1]} positions")
        _ticks(ax, labels, [f"layer {i}" for i in range(grid.shape[0])])
        ax.set_title(label, fontsize=8)
    fig.colorbar(im, ax=list(axes), shrink=0.6, aspect=30)
    fig.suptitle(_wrap(title, fig), fontsize=9)
    return fig


def logit_lens_figure(lens: dict, target_tokens: list[str], example: int = 0,
                      highlight: int | None = None) -> Figure:
    """Log-prob (left) and rank (right) of each target token after every decoder sublayer;
    one line per target position, `highlight` drawn thick."""
    stages = lens["stages"]
    logprob = np.asarray(lens["logprob"])[:, example]   # [stages, t]
    rank = np.asarray(lens["rank"])[:, example]         # [stages, t]
    if len(target_tokens) != logprob.shape[1]:
        raise ValueError(f"{len(target_tokens)} target labels for {logprob.shape[1]} positions")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_lp, ax_rank = fig.subplots(1, 2)
    x = np.arange(len(stages))
    colors = [f"C{j % 10}" for j in range(len(target_tokens))]
    for j, tok in enumerate(target_tokens):
        bold = highlight is not None and j == highlight
        style = dict(color=colors[j], lw=2.6 if bold else 1.0, alpha=1.0 if bold else 0.7)
        ax_lp.plot(x, logprob[:, j], marker="o", ms=3, label=f"{j}: {tok}", **style)
        ax_rank.plot(x, rank[:, j] + 1, marker="o", ms=3, **style)
    for ax in (ax_lp, ax_rank):
        ax.set_xticks(x)
        ax.set_xticklabels([s.replace("decoder/", "") for s in stages], rotation=60,
                           fontsize=7, ha="right")
    ax_lp.set_ylabel("log p(target token)")
    ax_rank.set_ylabel("rank of the target token (1 = top)")
    ax_rank.set_yscale("log")
    ax_rank.invert_yaxis()
    ax_lp.legend(fontsize=6, ncol=2, loc="lower right")
    fig.suptitle("decoder logit lens: each sublayer's residual stream read through the "
                 "unembedding", fontsize=9)
    return fig


def attribution_figure(maps: dict[str, np.ndarray], src_tokens: list[str],
                       tgt_in_tokens: list[str], out_tokens: list[str], title: str) -> Figure:
    """`maps["source"]` [t, s] and `maps["target"]` [t, t] side by side, rows = the explained
    (generated) tokens, columns = the input tokens; one diverging scale for both."""
    src_map, tgt_map = np.asarray(maps["source"]), np.asarray(maps["target"])
    if src_map.shape != (len(out_tokens), len(src_tokens)):
        raise ValueError(f"source map {src_map.shape} does not match {len(out_tokens)} outputs "
                         f"x {len(src_tokens)} source tokens")
    fig = Figure(figsize=(0.33 * (len(src_tokens) + len(tgt_in_tokens)) + 3.5,
                          0.3 * len(out_tokens) + 2.2), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[max(1, len(src_tokens)),
                                            max(1, len(tgt_in_tokens))])
    vmax = _limit([src_map, tgt_map])
    for ax, grid, keys, name in ((axes[0], src_map, src_tokens, "source tokens [t, s]"),
                                 (axes[1], tgt_map, tgt_in_tokens, "decoder input [t, t]")):
        im = _signed(ax, fig, grid, vmax, annotate=False)
        _ticks(ax, keys, out_tokens)
        ax.set_title(name, fontsize=8)
    axes[0].set_ylabel("generated token", fontsize=8)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(_wrap(title, fig), fontsize=9)
    return fig


def agreement_figure(exact: dict[str, dict], approx: dict[str, dict],
                     agreement: dict[str, dict]) -> Figure:
    """Activation patching (x) against attribution patching (y), normalised scores, one colour
    per grid, the diagonal dashed."""
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.subplots()
    every = []
    for i, label in enumerate(exact):
        a, b = exact[label]["scores"].ravel(), approx[label]["scores"].ravel()
        every += [a, b]
        r = agreement[label]["pearson"]
        ax.scatter(a, b, s=12, color=f"C{i}", alpha=0.8,
                   label=f"{label} (r={'n/a' if r is None else f'{r:.2f}'})")
    lim = _limit(every) * 1.05
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("activation patching (normalised)")
    ax.set_ylabel("attribution patching (normalised)")
    r = agreement["all"]["pearson"]
    ax.set_title(f"gradient approximation vs exact patching (all sites r="
                 f"{'n/a' if r is None else f'{r:.2f}'})", fontsize=8)
    ax.legend(fontsize=6)
    return fig

"""`TransformerVisualizer(out_dir)`: writes the figures of docs/tutorial.md into the run folder.

Layout (docs/tutorial.md "Outputs a run writes", plus this project's additions):
```
out_dir/training_curves.png
out_dir/attention_weights_<name>.png
out_dir/visualizations/attention/attention_step_<N>.png
out_dir/visualizations/attention/attention_evolution.png
out_dir/visualizations/attention/multihead_comparison.png
out_dir/visualizations/attention/attention_grid_<side>_<sublayer>.png     layers x heads
out_dir/visualizations/attention/cross_attention_alignment.png
out_dir/visualizations/qkv/qkv_evolution.png
out_dir/visualizations/qkv/layer_contributions.png
out_dir/visualizations/qkv/gradient_flow.png
out_dir/visualizations/parity/intermediate_errors.png               jax vs torch per name
```
Every method returns the path it wrote.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from . import plots
from .internals import check_captures
from .qkv import qkv_evolution

ATTENTION_DIR = Path("visualizations") / "attention"
QKV_DIR = Path("visualizations") / "qkv"
PARITY_DIR = Path("visualizations") / "parity"
DPI = 110


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "attention"


class TransformerVisualizer:
    """Figures into `out_dir` (created if needed), headless (no pyplot, no window)."""

    def __init__(self, out_dir: str | os.PathLike = "visualizations") -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def save(self, fig: Figure, relative: str | os.PathLike) -> Path:
        path = self.out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
        return path

    # -- attention ---------------------------------------------------------------------------
    def plot_attention_heatmap(self, attention_weights: object, tokens: list[str] | None,
                               query_tokens: list[str] | None = None,
                               title: str = "attention", name: str | None = None) -> Path:
        """`attention_weights_<name>.png`: [q, k] (one map) or [h, q, k] / [b, h, q, k] (one
        panel per head of the first example).  `tokens` label the keys, `query_tokens` the
        queries (default: `tokens`, i.e. self-attention)."""
        w = plots._as_heads(np.asarray(attention_weights))
        query_tokens = tokens if query_tokens is None else query_tokens
        fig = plots.multihead_figure(w, tokens, query_tokens, title)
        return self.save(fig, f"attention_weights_{_slug(name or title)}.png")

    def plot_multihead_comparison(self, attention_weights: object, tokens: list[str] | None,
                                  query_tokens: list[str] | None = None,
                                  title: str = "attention") -> Path:
        """`multihead_comparison.png`: the heads of one attention block side by side."""
        query_tokens = tokens if query_tokens is None else query_tokens
        fig = plots.multihead_figure(np.asarray(attention_weights), tokens, query_tokens, title)
        return self.save(fig, ATTENTION_DIR / "multihead_comparison.png")

    def plot_attention_grid(self, inter: dict, kind: str, key_tokens: list[str] | None,
                            query_tokens: list[str] | None) -> Path:
        """`attention_grid_<side>_<sublayer>.png`: every layer (rows) x head (columns)."""
        fig = plots.attention_grid_figure(inter, kind, key_tokens, query_tokens)
        return self.save(fig, ATTENTION_DIR / f"attention_grid_{_slug(kind)}.png")

    def plot_attention_step(self, step: int, inter: dict, prefix: str,
                            key_tokens: list[str] | None = None,
                            query_tokens: list[str] | None = None) -> Path:
        """`attention_step_<N>.png`: `prefix`'s heads in the capture of optimizer step N."""
        name = f"{prefix}/weights"
        if name not in inter:
            raise ValueError(f"the capture of step {step} has no {name}")
        fig = plots.multihead_figure(np.asarray(inter[name]), key_tokens, query_tokens,
                                     f"{name} at step {step} (example 0)")
        return self.save(fig, ATTENTION_DIR / f"attention_step_{int(step)}.png")

    def plot_attention_evolution(self, captures: list, prefix: str, pad_id: int | None = None,
                                 key_tokens: list[str] | None = None,
                                 query_tokens: list[str] | None = None) -> Path:
        """`attention_evolution.png` from `(step, {name: array})` captures."""
        fig = plots.attention_evolution_figure(check_captures(captures), prefix, pad_id,
                                               key_tokens, query_tokens)
        return self.save(fig, ATTENTION_DIR / "attention_evolution.png")

    def plot_cross_attention(self, inter: dict, src_tokens: list[str] | None,
                             tgt_tokens: list[str] | None) -> Path:
        """`cross_attention_alignment.png`: source-target alignment per decoder layer."""
        fig = plots.cross_attention_figure(inter, src_tokens, tgt_tokens)
        return self.save(fig, ATTENTION_DIR / "cross_attention_alignment.png")

    # -- qkv, contributions, gradients -----------------------------------------------------
    def plot_qkv_evolution(self, captures: list, pad_id: int | None = None) -> Path:
        """`qkv_evolution.png`: Q/K/V mean and std per block over the captured steps."""
        fig = plots.qkv_evolution_figure(qkv_evolution(captures, pad_id))
        return self.save(fig, QKV_DIR / "qkv_evolution.png")

    def plot_layer_contributions(self, contributions: dict) -> Path:
        """`layer_contributions.png` from `TransformerAnalyzer.analyze_layer_contributions`."""
        fig = plots.layer_contributions_figure(contributions["sublayers"],
                                               contributions.get("direct_logit_effects"))
        return self.save(fig, QKV_DIR / "layer_contributions.png")

    def plot_gradient_flow(self, flow: dict) -> Path:
        """`gradient_flow.png` from `TransformerAnalyzer.analyze_gradient_flow`."""
        return self.save(plots.gradient_flow_figure(flow), QKV_DIR / "gradient_flow.png")

    def plot_training_curves(self, records: list[dict]) -> Path:
        """`training_curves.png` from metric dicts `{step, loss, ...}` (e.g. metrics.jsonl)."""
        return self.save(plots.training_curves_figure(records), "training_curves.png")

    def plot_parity_diff(self, diff: dict) -> Path:
        """`intermediate_errors.png` from `analysis.diff.diff_captures`."""
        return self.save(plots.diff_heatmap_figure(diff), PARITY_DIR / "intermediate_errors.png")

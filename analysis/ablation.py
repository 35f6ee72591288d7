"""Head ablation importance: how much the metric drops when one head is knocked out.

Each head's share of the attention output, the h axis of `{attn}/context` (`[b, h, q, k]`), is
replaced by its mean (over the batch and the query positions of this input, as
TransformerLens' mean ablation does per position set) or by zero.  Zero ablation leaves only
the out projection's bias, which the model never saw during training; mean ablation removes
what the head says about *this* input while keeping its average output, so it is the default.
Importance = metric(intact) - metric(ablated): positive when the head helps the metric.
"""

from __future__ import annotations

import numpy as np

from spec.interventions import Metric, mean_ablate, zero_ablate

from .inputs import ATTENTION_KINDS
from .patching import head_grid

METHODS = ("mean", "zero")


def head_ablation(adapter, src, tgt, metric: Metric, method: str = "mean",
                  kinds=ATTENTION_KINDS) -> dict[str, dict]:
    """{"<kind> heads": {"values": [layers, heads] ablated metric, "importance": intact -
    ablated}} plus "intact": the metric without ablation.  One `metric_under` per kind."""
    if method not in METHODS:
        raise ValueError(f"ablation method {method!r} is unknown; expected one of {METHODS}")
    _, inter = adapter.run(src, tgt)
    intact = float(adapter.metric_under(src, tgt, metric, [[]])[0])
    out: dict[str, dict] = {"intact": {"value": intact}}
    for kind in kinds:
        grid = head_grid(adapter.config, kind)
        sweep = []
        for row in grid.sites:
            for site in row:
                if method == "zero":
                    sweep.append([zero_ablate(site.name, heads=site.heads)])
                else:  # mean over batch and query positions: [1, h, 1, k]
                    sweep.append([mean_ablate(site.name, inter[site.name], over=(0, 2),
                                              heads=site.heads)])
        values = np.asarray(adapter.metric_under(src, tgt, metric, sweep), np.float64)
        values = values.reshape(len(grid.rows), len(grid.columns))
        out[grid.label] = {"values": values, "importance": intact - values}
    return out

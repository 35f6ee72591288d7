"""Every causal analysis of one clean/corrupt pair, as one report and one set of figures.

`run_causal(adapter, pair)` runs activation patching (heads, residual, FFN sites) and its
gradient approximation, head ablation, per-head direct logit attribution, the decoder logit
lens and source attribution of each generated token; `causal_report` turns the result into
the JSON section (`report_schema.json` `$defs/causalReport`, also written alone as
`interpret_report.json`); `write_causal_figures` writes the plots.  The metric is the logit
difference between the clean and the corrupt answer at the first target position where the
two translations differ (docs/interfaces.md "Causal analyses").
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from spec.interventions import logit_diff

from . import ablation, attribution, causal_plots, contributions, logit_lens, patching
from .inputs import ATTENTION_KINDS


@dataclasses.dataclass(frozen=True)
class CausalPair:
    """One clean/corrupt example: sources [1, s] of equal length, the shared decoder input
    `tgt` [1, t] (bos + the clean translation), `targets` [t] (the clean translation: what
    position j predicts), and the first position where the two translations differ."""

    clean_src: np.ndarray
    corrupt_src: np.ndarray
    tgt: np.ndarray
    targets: np.ndarray
    position: int
    clean_token: int
    corrupt_token: int
    labels: dict  # "clean", "corrupt" (texts), "src", "corrupt_src", "tgt", "out" (token strings)

    def __post_init__(self) -> None:
        for field in ("clean_src", "corrupt_src", "tgt"):
            arr = np.asarray(getattr(self, field))
            if arr.ndim != 2 or arr.shape[0] != 1:
                raise ValueError(f"CausalPair.{field} must be one example [1, len], got "
                                 f"{arr.shape}")
        if np.shape(self.clean_src) != np.shape(self.corrupt_src):
            raise ValueError(f"clean and corrupt sources have {np.shape(self.clean_src)[1]} and "
                             f"{np.shape(self.corrupt_src)[1]} tokens: patching needs equal "
                             f"lengths (choose words with the same token count)")
        t = np.shape(self.tgt)[1]
        if not 0 <= self.position < t:
            raise ValueError(f"CausalPair.position={self.position} outside the {t} target "
                             f"positions")
        if self.clean_token == self.corrupt_token:
            raise ValueError(f"clean and corrupt tokens are both {self.clean_token}: the logit "
                             f"difference would be 0")

    def metric(self, vocab_size: int):
        return logit_diff(1, np.shape(self.tgt)[1], vocab_size, self.position, self.clean_token,
                          self.corrupt_token)


def run_causal(adapter, pair: CausalPair, ig_steps: int = 32, baseline: str = "zero",
               ablation_method: str = "mean", ig_tolerance: float | None = None) -> dict:
    """All analyses of `pair` (numpy results; see `causal_report` for the JSON layout).
    `ig_steps`, `ig_tolerance`: `attribution.source_attribution`'s `steps`, `tolerance`."""
    config = adapter.config
    metric = pair.metric(config.tgt_vocab_size)
    src, bad, tgt = pair.clean_src, pair.corrupt_src, pair.tgt
    grids = patching.default_grids(config, src.shape[1], tgt.shape[1])
    runs = patching.prepare(adapter, src, bad, tgt, metric)
    exact = patching.activation_patching(adapter, src, bad, tgt, metric, grids, runs=runs)
    approx = patching.attribution_patching(adapter, src, bad, tgt, metric, grids, runs=runs)
    params = adapter.params()
    effects, dla_error = contributions.direct_logit_effects(runs.clean, params, config,
                                                            per_head=True)
    dla = contributions.head_logit_attribution(effects, config, metric.logit_weights)
    other = float(sum((metric.logit_weights * e).sum() for name, e in effects.items()
                      if "/head_" not in name))
    return {
        "implementation": adapter.name, "metric": metric.label,
        "clean_value": runs.clean_value, "corrupt_value": runs.corrupt_value,
        "grids": {g.label: g for g in grids},
        "activation_patching": exact, "attribution_patching": approx,
        "agreement": patching.agreement(exact, approx),
        "head_ablation": ablation.head_ablation(adapter, src, tgt, metric, ablation_method),
        "ablation_method": ablation_method,
        "direct_logit_attribution": dla, "dla_other": other, "dla_error": dla_error,
        "logit_lens": logit_lens.logit_lens(runs.clean, params, config, pair.targets[None]),
        "attribution": attribution.source_attribution(adapter, src, tgt, pair.targets,
                                                      ig_steps, baseline, ig_tolerance),
    }


def top_heads(result: dict, n: int = 5) -> list[dict]:
    """The heads whose restored clean value recovers most of the metric (activation
    patching, denoising), strongest first, with their ablation importance and DLA."""
    rows = []
    for kind in ATTENTION_KINDS:
        label = f"{kind} heads"
        scores = result["activation_patching"][label]["scores"]
        for (layer, head), score in np.ndenumerate(scores):
            dla = result["direct_logit_attribution"].get(label)
            rows.append({"kind": kind, "layer": layer, "head": head, "patching": float(score),
                         "attribution_patching": float(
                             result["attribution_patching"][label]["scores"][layer, head]),
                         "ablation": float(result["head_ablation"][label]["importance"][layer,
                                                                                         head]),
                         "dla": None if dla is None else float(dla[layer, head])})
    return sorted(rows, key=lambda r: -abs(r["patching"]))[:n]


def causal_report(result: dict, pair: CausalPair) -> dict:
    """The JSON-able section (`$defs/causalReport`)."""
    def grid_entry(label: str, section: dict) -> dict:
        g = result["grids"][label]
        return {"rows": g.rows, "columns": g.columns,
                "values": section[label]["values"].tolist(),
                "scores": section[label]["scores"].tolist()}

    attr = result["attribution"]
    lens = result["logit_lens"]
    return {
        "implementation": result["implementation"],
        "pair": {"clean": pair.labels["clean"], "corrupt": pair.labels["corrupt"],
                 "position": int(pair.position), "clean_token": pair.labels["out"][pair.position],
                 "corrupt_token": pair.labels["corrupt_token"],
                 "source_tokens": pair.labels["src"], "corrupt_source_tokens":
                     pair.labels["corrupt_src"], "translation_tokens": pair.labels["out"]},
        "metric": {"name": result["metric"], "clean": result["clean_value"],
                   "corrupt": result["corrupt_value"],
                   "normalisation": "(patched - corrupt) / (clean - corrupt)"},
        "activation_patching": {label: grid_entry(label, result["activation_patching"])
                                for label in result["grids"]},
        "attribution_patching": {label: grid_entry(label, result["attribution_patching"])
                                 for label in result["grids"]},
        "agreement": result["agreement"],
        "head_ablation": {"method": result["ablation_method"],
                          "intact": result["head_ablation"]["intact"]["value"],
                          "importance": {k: v["importance"].tolist()
                                         for k, v in result["head_ablation"].items()
                                         if k != "intact"}},
        "direct_logit_attribution": {
            "heads": {k: v.tolist() for k, v in result["direct_logit_attribution"].items()},
            "other_pieces": result["dla_other"], "reconstruction_error": result["dla_error"],
            "approximation": "every LayerNorm on the residual path frozen at this input's "
                             "scale (contributions.py)"},
        "logit_lens": {"stages": lens["stages"], "logprob": lens["logprob"][:, 0].tolist(),
                       "rank": lens["rank"][:, 0].tolist()},
        "source_attribution": {
            **{m: {"source": attr[m]["source"].tolist(), "target": attr[m]["target"].tolist()}
               for m in ("saliency", "input_x_gradient", "integrated_gradients")},
            "steps": attr["steps"], "baseline": attr["baseline"],
            "tolerance": attr["tolerance"], "converged": attr["converged"],
            "f": attr["f"].tolist(), "f_baseline": attr["f_baseline"].tolist(),
            "completeness_max_error": float(attr["completeness_error"].max()),
            "completeness_relative_error": attr["completeness_relative_error"]},
        "top_heads": top_heads(result),
    }


def source_labels(labels: dict) -> list[str]:
    """Source tokens, "clean/corrupt" where the two sources differ."""
    return [a if a == b else f"{a}/{b}" for a, b in zip(labels["src"], labels["corrupt_src"])]


def write_causal_figures(result: dict, pair: CausalPair, out_dir: str | os.PathLike,
                         tag: str = "") -> dict[str, Path]:
    """The figures of one pair into `out_dir` ({caption: path}); `tag` suffixes file names
    when several pairs share a folder."""
    from .visualizer import TransformerVisualizer

    viz = TransformerVisualizer(out_dir)
    lab = pair.labels
    what = f"'{lab['clean']}' vs '{lab['corrupt']}', {result['metric']} " \
           f"'{lab['out'][pair.position]}' - '{lab['corrupt_token']}' at target {pair.position}"
    heads = [f"{k} heads" for k in ATTENTION_KINDS]
    ap = result["activation_patching"]
    files = {}

    def save(caption: str, fig, name: str) -> None:
        files[caption] = viz.save(fig, f"{name}{tag}.png")

    save(f"activation patching, heads ({what})",
         causal_plots.head_grids_figure({k: ap[k]["scores"] for k in heads},
                           f"activation patching of each head's context (denoising), {what}"),
         "patching_heads")
    positions = {k: ap[k]["scores"] for k in result["grids"] if k not in heads}
    if positions:
        save(f"activation patching, positions ({what})",
             causal_plots.position_grids_figure(positions, {"encoder": source_labels(lab),
                                                            "decoder": lab["tgt"]},
                                   f"activation patching per layer x position, {what}"),
             "patching_positions")
    save(f"attribution patching, heads ({what})",
         causal_plots.head_grids_figure({k: result["attribution_patching"][k]["scores"] for k in heads},
                           f"attribution patching (gradient approximation), {what}"),
         "attribution_patching_heads")
    save("activation vs attribution patching",
         causal_plots.agreement_figure(ap, result["attribution_patching"], result["agreement"]),
         "patching_agreement")
    save(f"head ablation importance ({result['ablation_method']})",
         causal_plots.head_grids_figure({k: result["head_ablation"][k]["importance"] for k in heads},
                           f"{result['ablation_method']}-ablation importance (intact - "
                           f"ablated {result['metric']}), {what}"), "head_ablation")
    save("per-head direct logit attribution",
         causal_plots.head_grids_figure(result["direct_logit_attribution"],
                           f"direct logit attribution of each decoder head to {what}"),
         "head_dla")
    save("decoder logit lens",
         causal_plots.logit_lens_figure(result["logit_lens"], lab["out"], highlight=pair.position),
         "logit_lens")
    attr = result["attribution"]
    save(f"integrated gradients ({attr['steps']} steps, {attr['baseline']} baseline)",
         causal_plots.attribution_figure(attr["integrated_gradients"], lab["src"], lab["tgt"], lab["out"],
                            f"integrated gradients of log p(each generated token), "
                            f"'{lab['clean']}'"), "attribution_ig")
    save("input x gradient",
         causal_plots.attribution_figure(attr["input_x_gradient"], lab["src"], lab["tgt"], lab["out"],
                            f"input x gradient, '{lab['clean']}'"), "attribution_ixg")
    return files

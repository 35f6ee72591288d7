"""Write a whole analysis run folder: the report, every docs/tutorial.md figure, the trace, the HTML.

`write_outputs(analyzer, out_dir, input_ids, ...)` is what `python main.py --visualize` and the
analysis demo call.  The evolution figures need captures from training (`captures`, a list of
`(step, {name: array})`, e.g. `load_captures(run_folder)`), the training curves need metric
records; without them those figures are skipped and listed under "skipped".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .analyzer import TransformerAnalyzer, json_safe, write_json
from .diff import diff_captures
from .inputs import attention_kind, attention_prefixes
from .internals import check_captures
from .plots import _steps_to_show, token_labels
from .schema import load_schema, validate
from .trace import format_trace, format_trace_side_by_side
from .visualizer import TransformerVisualizer

REPORT_FILE = "analysis_report.json"
TRACE_FILE = "debug_trace.txt"
HTML_FILE = "report.html"


def write_outputs(analyzer: TransformerAnalyzer, out_dir: str | os.PathLike, input_ids,
                  target_ids=None, attention_mask=None, tokens=None, captures=None,
                  metrics: list[dict] | None = None, other: TransformerAnalyzer | None = None,
                  vocab: dict[int, str] | None = None, html: bool = True,
                  figures: bool = True, block: str | None = None, example: int = 0,
                  causal: list[dict] | None = None, causal_figures: dict | None = None) -> dict:
    """Analyse `input_ids` and write everything into `out_dir`.

    `other`: a second analyzer (another implementation, same weights) whose capture is diffed
    against this one (error heatmap, side-by-side trace).  `vocab` ({id: token string}) labels
    ids when `tokens` is not given (special ids are named anyway).  `figures=False` writes only
    the report, the trace and the HTML page (its viewer and tables need no figure).
    Attention figures: for each kind, the last layer's heads (`attention_weights_<block>.png`)
    and every layer x head (`attention_grid_<kind>.png`); `multihead_comparison.png`, the
    step figures and the evolution show `block` (default: the last decoder layer's
    cross-attention, where a translation model's alignment forms);
    `attention_step_<N>.png` is written for up to 6 evenly spread captured steps.
    `causal`: `analysis.causal.causal_report` sections (one per clean/corrupt pair), stored
    under the report's "causal" key and shown in the page with `causal_figures` ({caption:
    PNG path}, written by `analysis.causal.write_causal_figures`).  Returns {"report": the report dict,
    "files": {label: path}, "skipped": [why...]}.
    """
    out = Path(out_dir)
    viz = TransformerVisualizer(out)
    files: dict[str, Path] = {}
    skipped: list[str] = []
    report = analyzer.comprehensive_analysis(input_ids, target_ids, attention_mask, tokens,
                                             save_path=out / REPORT_FILE)
    if causal is not None:
        report["causal"] = json_safe(causal)
        validate(report, load_schema())
        write_json(out / REPORT_FILE, report)
    files["report"] = out / REPORT_FILE
    src, tgt = np.asarray(report["inputs"]["src"]), np.asarray(report["inputs"]["tgt"])
    inter = analyzer.capture(src, tgt)
    cfg = analyzer.config
    specials = {**(vocab or {}), cfg.pad_id: "<pad>", cfg.bos_id: "<s>", cfg.eos_id: "</s>"}
    toks = report["inputs"]["tokens"]
    src_lab = token_labels(src[example], toks["src"][example] if toks["src"] else None,
                           specials=specials)
    tgt_lab = token_labels(tgt[example], toks["tgt"][example] if toks["tgt"] else None,
                           specials=specials)

    def labels(prefix: str) -> tuple[list[str], list[str]]:  # (keys, queries)
        kind = attention_kind(prefix)
        if kind == "encoder/self_attn":
            return src_lab, src_lab
        return (tgt_lab if kind == "decoder/self_attn" else src_lab), tgt_lab

    blocks = attention_prefixes(inter)
    cross = [p for p in blocks if attention_kind(p) == "decoder/cross_attn"]
    main_block = block or (cross[-1] if cross else blocks[-1])
    if main_block not in blocks:
        raise ValueError(f"block={block!r} is not an attention block of this model; "
                         f"expected one of {blocks}")
    if not figures:
        skipped.append("every figure: figures=False")
    else:
        one = {name: (v[example:example + 1] if name.endswith("/weights") else v)
               for name, v in inter.items()}
        for kind in ("encoder/self_attn", "decoder/self_attn", "decoder/cross_attn"):
            of_kind = [p for p in blocks if attention_kind(p) == kind]
            keys, queries = labels(of_kind[0])
            last = of_kind[-1]  # the last layer's heads alone, then every layer x head
            files[f"attention_weights {last}"] = viz.plot_attention_heatmap(
                inter[f"{last}/weights"][example], keys, queries,
                f"{last}/weights (example {example})", name=last)
            files[f"attention_grid {kind}"] = viz.plot_attention_grid(one, kind, keys, queries)
        keys, queries = labels(main_block)
        files["multihead_comparison"] = viz.plot_multihead_comparison(
            inter[f"{main_block}/weights"][example], keys, queries,
            f"{main_block}/weights (example {example})")
        files["cross_attention_alignment"] = viz.plot_cross_attention(one, src_lab, tgt_lab)
        files["layer_contributions"] = viz.plot_layer_contributions(
            report["layer_contributions"])
        files["gradient_flow"] = viz.plot_gradient_flow(report["gradient_flow"])

    if captures and figures:
        captures = check_captures(captures)
        steps = [s for s, _ in captures]
        for i in _steps_to_show(steps):
            step, cap = captures[i]
            files[f"attention_step {step}"] = viz.plot_attention_step(step, cap, main_block,
                                                                      *_capture_labels(cap,
                                                                      main_block, specials))
        keys, queries = _capture_labels(captures[-1][1], main_block, specials)
        files["attention_evolution"] = viz.plot_attention_evolution(captures, main_block,
                                                                    cfg.pad_id, keys, queries)
        files["qkv_evolution"] = viz.plot_qkv_evolution(captures, cfg.pad_id)
    elif figures:
        skipped.append("attention_step_<N>, attention_evolution, qkv_evolution: no captures")
    if metrics and figures:
        files["training_curves"] = viz.plot_training_curves(metrics)
    elif figures:
        skipped.append("training_curves: no metric records")

    trace = format_trace(inter, cfg)
    diff = None
    if other is not None:
        other_inter = other.capture(src, tgt)
        diff = diff_captures(inter, other_inter, analyzer.adapter.name, other.adapter.name)
        if figures:
            files["parity_diff"] = viz.plot_parity_diff(diff)
        trace += "\n" + format_trace_side_by_side(inter, other_inter, cfg,
                                                  (analyzer.adapter.name, other.adapter.name))
    (out / TRACE_FILE).write_text(trace, encoding="utf-8")
    files["trace"] = out / TRACE_FILE
    if html:
        from .html import write_html_report

        shown = {**files, **(causal_figures or {})}
        files["html"] = write_html_report(out / HTML_FILE, report, inter, shown, diff=diff,
                                          src_labels=src_lab, tgt_labels=tgt_lab,
                                          example=example)
    return {"report": report, "files": files, "skipped": skipped}


def _capture_labels(inter: dict, prefix: str, specials: dict) -> tuple[list[str] | None, ...]:
    """Token labels of a training capture from its `inputs/src`, `inputs/tgt` (example 0)."""
    src, tgt = inter.get("inputs/src"), inter.get("inputs/tgt")
    kind = attention_kind(prefix)
    k_ids = tgt if kind == "decoder/self_attn" else src
    q_ids = src if kind == "encoder/self_attn" else tgt
    if k_ids is None or q_ids is None:
        return None, None
    return token_labels(k_ids[0], specials=specials), token_labels(q_ids[0], specials=specials)

"""Framework-free analysis of the Transformer's insides (numpy + matplotlib only).

Everything works on canonical intermediates (`{name: array}`, docs/architecture.md) and canonical
gradients, whichever implementation produced them; jax, torch and transformers are imported
only when a model of theirs is handed in (`analysis.models.resolve_model`).

    from analysis import TransformerAnalyzer, TransformerVisualizer
    analyzer = TransformerAnalyzer((params, config))    # or a torch_model / hf_bridge model
    report = analyzer.comprehensive_analysis(src, tgt, save_path="analysis_report.json")
    TransformerVisualizer("my_viz").plot_attention_heatmap(weights, tokens)

Modules: `inputs` (default targets, labels, masks), `attention` (entropy, pattern classes),
`qkv` (Q/K/V statistics and their evolution), `contributions` (residual-stream norm ratios,
direct logit effects), `gradients` (gradient flow, warnings), `diff` (cross-framework error
statistics), `trace` (the `--debug` trace), `internals` (captures saved during training),
`plots` / `visualizer` (figures), `html` (report.html), `schema` + `report_schema.json`
(analysis_report.json), `outputs` (a whole run folder), `demo`.  Causal analyses through the
adapters' intervention API: `patching` (activation and attribution patching sweeps), `ablation`
(head importance), `logit_lens`, `attribution` (saliency, input x gradient, integrated
gradients), `causal` (all of them for one clean/corrupt pair: report and figures),
`causal_plots`; `main.py --version interpret` runs them on a trained model.

Evolution inputs: a list of `(step, {name: array})` pairs, or a run folder of
`internals_step_<N>.npz` files read by `load_captures(folder)`.  Each file holds one optimizer
step N; its keys are canonical intermediate names (any subset, canonical shapes, float32) plus
the probe batch's ids under `inputs/src`, `inputs/tgt`, `inputs/labels`; the trainers write it
with `training.save_internals` (docs/interfaces.md "Captured intermediates").
"""

from .analyzer import TransformerAnalyzer
from .attention import entropy, head_metrics
from .diff import diff_captures, error_stats
from .gradients import gradient_flow
from .internals import load_captures
from .models import resolve_model
from .trace import format_trace, format_trace_side_by_side
from .visualizer import TransformerVisualizer

__all__ = [
    "TransformerAnalyzer", "TransformerVisualizer", "diff_captures", "entropy", "error_stats",
    "format_trace", "format_trace_side_by_side", "gradient_flow", "head_metrics",
    "load_captures", "resolve_model",
]

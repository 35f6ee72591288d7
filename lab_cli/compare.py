"""`--version both` / `all`: how far apart the implementations are, from start to finish.

Three views, the first version being the reference:
1. the same initial weights: every canonical intermediate of a forward on a held-out probe
   batch (`analysis.diff.diff_captures`); float32 rounding only, so tiny;
2. training: the loss of every optimizer step from each `metrics.jsonl` (the same batches;
   the dropout masks differ between frameworks, so with dropout the curves part after step 1);
3. the final models: intermediates on the probe again, greedy outputs on held-out sources,
   and the evaluation metrics of each trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis import TransformerVisualizer
from analysis.diff import diff_captures
from training import read_metrics

from . import artifacts, models
from .configs import RunSetup
from .runners import RunResult

DECODED = 64  # held-out sources whose greedy outputs are compared


def capture_diff(ref: dict, other: dict, ref_name: str, other_name: str) -> dict[str, Any]:
    """The headline of `diff_captures`: how many names, the worst one, missing names."""
    diff = diff_captures(ref, other, ref_name, other_name)
    stats = {n: e for n, e in diff["entries"].items() if "normalized" in e}
    worst = diff["worst"]
    return {
        "names": len(diff["entries"]),
        "max_normalized": max((e["normalized"] for e in stats.values()), default=None),
        "max_abs": max((e["max_abs"] for e in stats.values()), default=None),
        "worst": worst,
        "shape_mismatches": sorted(n for n, e in diff["entries"].items() if "normalized" not in e),
        "missing": diff["missing"],
        "diff": diff,
    }


def loss_diff(ref: RunResult, other: RunResult) -> dict[str, Any]:
    """Per-step training losses of two runs side by side (the steps both logged)."""
    a = {r["step"]: r["loss"] for r in read_metrics(ref.run_dir / "metrics.jsonl")}
    b = {r["step"]: r["loss"] for r in read_metrics(other.run_dir / "metrics.jsonl")}
    steps = sorted(set(a) & set(b))
    if not steps:
        return {"steps": 0}
    gaps = [abs(a[s] - b[s]) for s in steps]
    first, last = steps[0], steps[-1]
    return {"steps": len(steps), "first_step": first,
            "first": {ref.version: a[first], other.version: b[first]},
            "first_abs_diff": gaps[0], "max_abs_diff": max(gaps),
            "max_abs_diff_step": steps[int(np.argmax(gaps))],
            "last_step": last, "last": {ref.version: a[last], other.version: b[last]}}


def compare(results: Sequence[RunResult], setup: RunSetup, initial: dict[str, Any],
            root: Path, visualize: bool = False) -> dict[str, Any]:
    """Compare every run with the first; returns the JSON-ready report (diff tables dropped)."""
    task, config = setup.task, setup.model
    probe = artifacts.probe_batch(task)
    sources = [s for s, _ in task.pairs("eval")[:DECODED]]
    references = [t for _, t in task.pairs("eval")[:DECODED]]
    src = task.encode_sources(sources)
    length = artifacts.decode_length(setup)

    start = [models.load(r.version, initial, config) for r in results]
    final = [models.load(r.version, r.final_weights, config) for r in results]
    start_caps = [m.adapter.capture(probe["src"], probe["tgt_in"]) for m in start]
    final_caps = [m.adapter.capture(probe["src"], probe["tgt_in"]) for m in final]
    outputs = [task.decode_batch(m.decode(src, 1, length)) for m in final]

    ref = results[0]
    pairs = []
    for i, other in enumerate(results[1:], start=1):
        initial_diff = capture_diff(start_caps[0], start_caps[i], ref.version, other.version)
        final_diff = capture_diff(final_caps[0], final_caps[i], ref.version, other.version)
        same = [a == b for a, b in zip(outputs[0], outputs[i])]
        pairs.append({
            "versions": [ref.version, other.version],
            "initial_intermediates": initial_diff,
            "loss": loss_diff(ref, other),
            "final_intermediates": final_diff,
            "greedy_outputs": {"compared": len(same), "identical": int(sum(same)),
                               "examples": [{"source": s, ref.version: a, other.version: b}
                                            for s, a, b, ok in zip(sources, outputs[0],
                                                                   outputs[i], same)
                                            if not ok][:5]},
        })
        if visualize:
            viz = TransformerVisualizer(root / f"{ref.version}_vs_{other.version}")
            viz.plot_parity_diff(initial_diff["diff"])
    exact = {r.version: float(np.mean([o == t for o, t in zip(out, references)]))
             for r, out in zip(results, outputs)}
    report = {
        "reference": ref.version,
        "pairs": [{k: ({kk: vv for kk, vv in v.items() if kk != "diff"}
                       if isinstance(v, dict) and "diff" in v else v)
                   for k, v in p.items()} for p in pairs],
        "eval_metrics": {r.version: r.eval_metrics for r in results},
        "greedy_exact_match": exact,
        "seconds": {r.version: r.seconds for r in results},
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    """The comparison as a few lines per pair of versions."""
    lines = []
    for p in report["pairs"]:
        a, b = p["versions"]
        lines.append(f"=== {a} vs {b} ===")
        d = p["initial_intermediates"]
        lines.append(f"same initial weights: {d['names']} intermediates on {PROBE_TEXT}, max "
                     f"normalised diff {_num(d['max_normalized'])} (max |diff| "
                     f"{_num(d['max_abs'])}, worst {d['worst']})")
        if d["shape_mismatches"] or any(d["missing"].values()):
            lines.append(f"  MISMATCH: shapes differ for {d['shape_mismatches']}, missing "
                         f"{d['missing']}")
        loss = p["loss"]
        if loss["steps"]:
            lines.append(
                f"training loss: step {loss['first_step']} {a} {loss['first'][a]:.6f} {b} "
                f"{loss['first'][b]:.6f} (|diff| {_num(loss['first_abs_diff'])}); max |diff| "
                f"{_num(loss['max_abs_diff'])} at step {loss['max_abs_diff_step']} of "
                f"{loss['steps']}; last step {loss['last_step']} {a} {loss['last'][a]:.4f} "
                f"{b} {loss['last'][b]:.4f}")
        d = p["final_intermediates"]
        lines.append(f"final models: max normalised diff {_num(d['max_normalized'])} "
                     f"(worst {d['worst']})")
        g = p["greedy_outputs"]
        lines.append(f"greedy outputs on held-out sources: {g['identical']}/{g['compared']} "
                     f"identical")
        for ex in g["examples"][:3]:
            lines.append(f"  {ex['source']!r}: {a} {ex[a]!r} / {b} {ex[b]!r}")
    metrics = report["eval_metrics"]
    keys = sorted({k for m in metrics.values() for k in m})
    if keys:
        lines.append("evaluation: " + "; ".join(
            f"{v}: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys if k in m)
            for v, m in metrics.items()))
    return "\n".join(lines)


PROBE_TEXT = f"{artifacts.PROBE_SIZE} held-out examples"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2e}"

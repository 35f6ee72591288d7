"""The run behind `main.py`: set up, print the --debug trace, train each version, write the
results, compare the versions.  A trainer stopped by a non-finite loss still leaves its
`summary.json` (`artifacts.write_stopped_summary`) before the error reaches `main.py`.

Folders: one version writes into `--output_dir` (default `results_<version>`); `both` / `all`
write one subfolder per version (`results_both/jax`, `results_both/pytorch`, ...) and
`comparison.json` beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spec.files import write_json
from training import NonFiniteLossError

from . import artifacts, configs, models, runners
from .configs import RunSetup


def debug_trace(setup: RunSetup, initial: dict[str, Any], versions: tuple[str, ...]) -> str:
    """docs/tutorial.md's step-by-step trace of the first version's forward pass on two training
    examples (initial weights); with several versions, their captures side by side."""
    from analysis.trace import format_trace, format_trace_side_by_side

    batch = next(iter(setup.task.batches("train", 2, 0, shuffle=False)))
    src, tgt = batch["src"], batch["tgt_in"]
    captures = [models.load(v, initial, setup.model).adapter.capture(src, tgt) for v in versions]
    text = [f"=== --debug: {versions[0]} forward pass, initial weights, src {list(src.shape)}, "
            f"tgt {list(tgt.shape)} ===", format_trace(captures[0], setup.model)]
    for version, capture in zip(versions[1:], captures[1:]):
        text += [f"=== --debug: {versions[0]} vs {version}, the same inputs and weights ===",
                 format_trace_side_by_side(captures[0], capture, setup.model,
                                           (versions[0], version))]
    return "\n".join(text)


def describe(args: argparse.Namespace, setup: RunSetup) -> str:
    c, t, task = setup.model, setup.train, setup.task
    info = task.summary()
    return (f"transformer-lab: --version {args.version} ({', '.join(args.versions)}) -> "
            f"{args.output_dir}\n"
            f"  data: {info['name']} {info.get('src_lang', '')}->"
            f"{','.join(info.get('tgt_langs', []))} train {info['train_size']}, eval "
            f"{info['eval_size']}, vocab {info['src_vocab_size']}, max src/tgt "
            f"{info['max_src_len']}/{info['max_tgt_len']} tokens\n"
            f"  model: d_model {c.d_model}, heads {c.num_heads}, layers "
            f"{c.num_encoder_layers}+{c.num_decoder_layers}, d_ff {c.d_ff}, dropout "
            f"{c.dropout_rate}\n"
            f"  training: {setup.total_steps} steps of batch {t.batch_size} x "
            f"{t.grad_accum_steps}, lr {t.learning_rate} ({t.schedule}, warmup "
            f"{t.warmup_steps}"
            + (f", cool-down {t.cooldown_steps}" if t.cooldown_steps else "")
            + f"), seed {t.seed}"
            + (f", internals every {t.track_internals_every} steps"
               if t.track_internals_every else ""))


def run_setup(args: argparse.Namespace, setup: RunSetup) -> dict[str, Any]:
    """Print the plan (and --debug trace), train every version, write and compare results."""
    from . import compare

    print(describe(args, setup), flush=True)
    setup.task.tokenizer.save(configs.tokenizer_folder(args))
    initial = models.initial_weights(setup.model, setup.train.seed)
    if args.debug:
        print(debug_trace(setup, initial, args.versions), flush=True)
    root = Path(args.output_dir)
    several = len(args.versions) > 1
    results, summaries = [], {}
    for version in args.versions:
        run_dir = root / version if several else root
        print(f"--- training {version} -> {run_dir} ---", flush=True)
        try:
            result = runners.train(version, setup, initial, run_dir, args)
        except NonFiniteLossError as e:
            artifacts.write_stopped_summary(run_dir, version, setup, e)
            print(f"{version}: stopped at step {e.step}; wrote {run_dir / 'summary.json'}",
                  flush=True)
            raise
        model = models.load(version, result.final_weights, setup.model)
        info = {"eval_metrics": result.eval_metrics, "steps": result.steps,
                "seconds": result.seconds}
        summaries[version] = artifacts.write_run_artifacts(run_dir, model, setup, args, info)
        print(format_run(version, summaries[version]), flush=True)
        results.append(result)
    out: dict[str, Any] = {"runs": summaries}
    if several:
        report = compare.compare(results, setup, initial, root, visualize=args.visualize)
        write_json(root / "comparison.json", report)
        print(compare.format_report(report), flush=True)
        out["comparison"] = report
    return out


def format_run(version: str, summary: dict[str, Any]) -> str:
    m = summary["eval_metrics"]
    groups = [k for k in m if k.startswith("exact_match_")]  # per language, per digit count
    lines = [f"{version}: {summary['steps']} steps in {summary['seconds']:.1f} s; held-out "
             + ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in groups)]
    if groups:
        lines.append("  exact match per group: " + ", ".join(f"{k} {m[k]:.4g}" for k in groups))
    if summary.get("warning"):
        lines.append(f"  warning: {summary['warning']}")
    for row in summary["translations"][:4]:
        beam = next(v for k, v in row.items() if k.startswith("beam_"))
        ref = f"  (reference {row['reference']!r})" if "reference" in row else ""
        lines.append(f"  {row['source']!r} -> {beam!r}{ref}")
    return "\n".join(lines)

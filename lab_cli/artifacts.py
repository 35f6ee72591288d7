"""What a finished run leaves in its folder besides the trainer's own files.

The trainers write `metrics.jsonl`, `internals_step_<N>.npz` and the canonical weights in
`final/`; this module reads those back (so it works the same for every version) and adds:
`translations.json` (held-out or given sources, greedy and beam, with references),
`analysis_report.json` (`TransformerAnalyzer.comprehensive_analysis` on a probe batch),
`summary.json` (configs, data, final metrics, time) and, with --visualize, everything
`analysis.outputs.write_outputs` writes (the docs/tutorial.md figures, `debug_trace.txt`,
`report.html`) plus `translation_cross_attention.png`, the alignment of a translated example.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from analysis import TransformerAnalyzer, TransformerVisualizer, plots
from analysis.internals import load_captures
from analysis.outputs import REPORT_FILE, write_outputs
from spec.files import write_json
from training import read_metrics

from .configs import RunSetup
from .models import LoadedModel

PROBE_SIZE = 4  # held-out examples the analysis report and the attention plots look at
EXAMPLES = 8  # held-out sources translated at the end when --translate is not given


def token_strings(tokenizer: Any, ids: np.ndarray) -> list[str]:
    """Plot labels for one row of ids; a space shows as the open-box sign."""
    return [tokenizer.id_to_token(int(i)).replace(" ", "\u2423") for i in ids]


def probe_batch(task: Any, size: int = PROBE_SIZE) -> dict[str, np.ndarray]:
    """The first `size` held-out examples (unshuffled), padded to their own longest."""
    return next(iter(task.batches("eval", size, 0, shuffle=False)))


def decode_length(setup: RunSetup) -> int:
    """Tokens to decode: the longest target (with eos) and a little room, within max_len."""
    return min(setup.model.max_len, setup.task.max_lengths()[1] + 4)


def translate(model: LoadedModel, setup: RunSetup, sources: list[str], references: list | None,
              beam_size: int) -> list[dict[str, Any]]:
    """Greedy and beam translations of `sources` (with their references when known)."""
    task = setup.task
    src = task.encode_sources(sources)
    length = decode_length(setup)
    greedy = task.decode_batch(model.decode(src, 1, length))
    beam = task.decode_batch(model.decode(src, beam_size, length)) if beam_size > 1 else greedy
    rows = []
    for i, text in enumerate(sources):
        row = {"source": text, "greedy": greedy[i], f"beam_{beam_size}": beam[i]}
        if references is not None:
            row["reference"] = references[i]
            row["correct"] = beam[i] == references[i]
        rows.append(row)
    return rows


def example_sources(args: argparse.Namespace, task: Any) -> tuple[list[str], list[str] | None]:
    if args.translate:
        return list(args.translate), None
    pairs = task.pairs("eval")[:EXAMPLES]
    return [s for s, _ in pairs], [t for _, t in pairs]


def example_capture(model: LoadedModel, setup: RunSetup, source: str, beam_size: int
                    ) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Intermediates of the model reading `source` and its own translation (teacher forced on
    `[bos] + tokens`), with the token labels of both sides."""
    task, config = setup.task, setup.model
    src = task.encode_sources([source])
    out = model.decode(src, beam_size, decode_length(setup))[0]
    ends = np.flatnonzero(out == config.eos_id)
    generated = out[:ends[0]] if ends.size else out[:-1]
    tgt = np.concatenate([[config.bos_id], generated])[None, :].astype(np.int32)
    inter = model.adapter.capture(src, tgt)
    return (inter, token_strings(task.src_tokenizer, src[0]),
            token_strings(task.tgt_tokenizer, tgt[0]))


def write_run_artifacts(run_dir: Path, model: LoadedModel, setup: RunSetup,
                        args: argparse.Namespace, train_info: dict[str, Any]) -> dict[str, Any]:
    """Everything listed in the module docstring; returns the summary (also `summary.json`)."""
    run_dir = Path(run_dir)
    task = setup.task
    sources, references = example_sources(args, task)
    translations = translate(model, setup, sources, references, args.beam_size)
    write_json(run_dir / "translations.json", translations)

    probe = probe_batch(task)
    analyzer = TransformerAnalyzer(model.adapter, label_smoothing=setup.train.label_smoothing)
    if args.visualize:
        written = write_outputs(
            analyzer, run_dir, probe["src"], probe["tgt_in"], captures=training_captures(run_dir),
            metrics=read_metrics(run_dir / "metrics.jsonl", split=None),
            vocab=vocabulary(task.tgt_tokenizer))
        figures = [Path(p) for p in written["files"].values()]
        figures.append(translation_figure(run_dir, model, setup, sources[0], args.beam_size))
    else:
        analyzer.comprehensive_analysis(probe["src"], probe["tgt_in"],
                                        save_path=run_dir / REPORT_FILE)
        figures = []
    warning = divergence_warning(run_dir, setup)
    summary = {
        "version": model.version, "model_config": setup.model.to_dict(),
        "train_config": setup.train.to_dict(), "task": task.summary(),
        **train_info, "diverged": warning is not None, "warning": warning,
        "translations": translations,
        "files": sorted(str(p.relative_to(run_dir)) for p in figures),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def divergence_warning(run_dir: Path, setup: RunSetup) -> str | None:
    """A message when the last training loss is not below a uniform guess's, ln(vocabulary):
    the run diverged (typically a learning rate far too high) though every number stayed
    finite; None otherwise."""
    path = Path(run_dir) / "metrics.jsonl"
    losses = [r["loss"] for r in read_metrics(path) if "loss" in r] if path.is_file() else []
    if not losses:
        return None
    last, uniform = float(losses[-1]), math.log(setup.model.tgt_vocab_size)
    if math.isfinite(last) and last < uniform:
        return None
    return (f"the run diverged: the last training loss {last:.4g} is not below {uniform:.4g}, "
            f"the loss of a uniform guess over {setup.model.tgt_vocab_size} tokens; lower --lr "
            f"(now {setup.train.learning_rate:g}) or lengthen --warmup_steps")


def write_stopped_summary(run_dir: Path, version: str, setup: RunSetup, error: Exception
                          ) -> dict[str, Any]:
    """`summary.json` of a run its trainer stopped (a non-finite loss): the configs, the
    message, and the metrics logged before it, so a diverged run still leaves its record."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    history = read_metrics(path, split=None) if path.is_file() else []
    summary = {
        "version": version, "model_config": setup.model.to_dict(),
        "train_config": setup.train.to_dict(), "task": setup.task.summary(),
        "diverged": True, "warning": str(error), "steps": getattr(error, "step", None),
        "last_checkpoint": getattr(error, "last_checkpoint", None),
        "last_metrics": history[-1] if history else None, "translations": [], "files": [],
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def vocabulary(tokenizer: Any) -> dict[int, str]:
    """{id: label} for plot axes."""
    return {i: label for i, label in enumerate(token_strings(tokenizer,
                                                             range(tokenizer.vocab_size)))}


def training_captures(run_dir: Path) -> list[tuple[int, dict[str, np.ndarray]]]:
    """The trainer's `internals_step_<N>.npz` captures (none when it tracked nothing).

    The contract stores the probe's decoder input as `inputs/tgt` (every trainer writes that
    now); run folders written before by the torch and HF trainers hold `inputs/tgt_in`, which
    is read as `inputs/tgt` so they still open."""
    if not any(run_dir.glob("internals_step_*.npz")):
        return []
    captures = load_captures(run_dir)
    for _, capture in captures:
        if "inputs/tgt_in" in capture:
            capture.setdefault("inputs/tgt", capture.pop("inputs/tgt_in"))
    return captures


def translation_figure(run_dir: Path, model: LoadedModel, setup: RunSetup, source: str,
                       beam_size: int) -> Path:
    """`translation_cross_attention.png`: the model's cross-attention while it reads `source`
    and writes its own translation."""
    inter, src_labels, tgt_labels = example_capture(model, setup, source, beam_size)
    viz = TransformerVisualizer(run_dir)
    return viz.save(plots.cross_attention_figure(inter, src_labels, tgt_labels),
                    "translation_cross_attention.png")

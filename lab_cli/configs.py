"""Flags -> the task, `spec.TransformerConfig` and `spec.TrainConfig` every version trains with.

All versions of one command share these three objects, so `--version both` trains the same
model on the same batches with the same optimisation; only the framework differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import spec
import tasks
from training import data as train_data

# What a trainer leaves in a run folder: without --resume, a new run into it is refused.
PREVIOUS_RUN = ("final", "checkpoints", "metrics.jsonl")
# About this many `internals_step_<N>.npz` captures per run when --track_every is not given.
TRACKED_CAPTURES = 8
# Checkpoints per run when --save_steps is not given: a kill loses at most a tenth of the run.
SAVES_PER_RUN = 10


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """What every version of one command trains: data, model, optimisation, run length."""

    task: tasks.Task
    model: spec.TransformerConfig
    train: spec.TrainConfig
    total_steps: int


def tokenizer_folder(args: argparse.Namespace) -> Path:
    """Where a run keeps its tokenizer, so that `--resume` reads the same token ids."""
    return Path(args.output_dir) / "tokenizer"


def build_task(args: argparse.Namespace) -> tasks.Task:
    tokenizer: str | tasks.TaskTokenizer = args.tokenizer
    saved = tokenizer_folder(args)
    if args.resume and (saved / "tokenizer.json").is_file():
        tokenizer = tasks.TaskTokenizer.load(saved)
    try:
        task = tasks.build_task(
            args.task, train_size=args.train_size, eval_size=args.eval_size,
            max_len=args.max_len, seed=args.seed, src_lang=args.src_lang,
            tgt_langs=args.tgt_lang, path=args.data, eval_path=args.eval_data,
            tokenizer=tokenizer, vocab_size=args.vocab_size)
    except (ValueError, FileNotFoundError) as e:
        # An error about a data file names the flag that gave it (e.g. an unknown suffix).
        for flag, path in (("--eval_data", args.eval_data), ("--data", args.data)):
            if path and str(path) in str(e):
                raise ValueError(f"argument {flag}: {e}") from None
        raise
    # The flags behind the tokenizer, in the task's summary and so in the data a checkpoint
    # records: a resumed run reads the saved tokenizer, so only these show a changed flag.
    task.info["tokenizer"] = args.tokenizer
    if args.tokenizer != "char":
        task.info["vocab_size"] = args.vocab_size
    return task


def model_config(args: argparse.Namespace, task: tasks.Task) -> spec.TransformerConfig:
    """The flags' model on the task's vocabulary, special ids and sequence lengths."""
    overrides = dict(d_model=args.hidden_size, num_heads=args.num_heads,
                     num_encoder_layers=args.num_layers, num_decoder_layers=args.num_layers,
                     d_ff=args.d_ff or 4 * args.hidden_size, dropout_rate=args.dropout,
                     norm_position=args.norm_position, activation=args.activation)
    if args.max_len is not None:
        overrides["max_len"] = args.max_len
    else:
        # Room for the longest sequence and for decoding a little past it.
        overrides["max_len"] = max(max(task.max_lengths()) + 8, 16)
    return task.model_config(None, **overrides)


def setup(args: argparse.Namespace) -> RunSetup:
    """Build everything; ValueError (naming a field) when a flag value is not usable."""
    task = build_task(args)
    model = model_config(args, task)
    per_epoch = task.steps_per_epoch("train", args.batch_size)
    total = train_data.total_steps(args.max_steps, args.epochs, per_epoch,
                                   args.gradient_accumulation_steps)
    track = 0
    if args.track_internals or args.visualize:
        track = args.track_every or max(1, total // TRACKED_CAPTURES)
    # A cool-down is a fraction of the run, so the run length is fixed in steps.
    cooldown = max(round(args.cooldown * total), 1) if args.cooldown else 0
    train = spec.TrainConfig(
        learning_rate=args.lr, schedule=args.schedule, warmup_steps=args.warmup_steps,
        cooldown_steps=cooldown, max_steps=total if cooldown else args.max_steps,
        label_smoothing=args.label_smoothing, batch_size=args.batch_size, epochs=args.epochs,
        grad_accum_steps=args.gradient_accumulation_steps,
        clip_norm=args.clip_norm, mixed_precision=args.mixed_precision, seed=args.seed,
        log_every=min(args.log_every, total), eval_every=args.eval_every,
        track_internals_every=track, checkpoint_every=save_steps(args, total),
        keep_checkpoints=args.save_total_limit)
    setup = RunSetup(task, model, train, total)
    preflight(args, setup)
    return setup


def save_steps(args: argparse.Namespace, total: int) -> int:
    """`--save_steps`, else ceil(total / SAVES_PER_RUN): a kill loses at most a tenth of the
    run's steps (the checkpoint at the end is always written too)."""
    return args.save_steps or -(-total // SAVES_PER_RUN)


def preflight(args: argparse.Namespace, setup: RunSetup) -> None:
    """Flag combinations a trainer would only reject after starting: ValueError naming them."""
    if not args.resume:
        root = Path(args.output_dir)
        folders = [root / v for v in args.versions] if len(args.versions) > 1 else [root]
        for folder in folders:
            previous = [name for name in PREVIOUS_RUN if (folder / name).exists()]
            if previous:
                raise ValueError(f"argument --output_dir: {str(folder)!r} already holds a run "
                                 f"({', '.join(previous)}), which a new run would overwrite: "
                                 f"pass --resume to continue it, or choose a new folder")
    for text in args.translate or []:
        length = setup.task.encode_sources([text]).shape[1]
        if length > setup.model.max_len:
            raise ValueError(f"argument --translate: {text[:40]!r} is {length} tokens with eos, "
                             f"over the model's max_len={setup.model.max_len} (raise --max_len)")
    if "jax" in args.versions and setup.train.mixed_precision == "fp16":
        raise ValueError("mixed_precision='fp16' is not supported by the JAX trainer (it needs "
                         "loss scaling): use --mixed_precision bf16")
    if args.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("argument --wandb: the wandb package is not installed "
                             "(pip install wandb)") from None
        os.environ.setdefault("WANDB_MODE", "online" if _wandb_logged_in() else "offline")


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")

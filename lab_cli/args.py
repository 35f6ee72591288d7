"""The command line of `main.py`: every flag of the original tutorial (docs/tutorial.md) and this project's.

Flag values are checked here, by argparse types and choices, so a bad value stops the run before
any framework is imported, with argparse's one-line `error:` and exit status 2.  Values that only
the contract can judge (`spec.TransformerConfig`, `spec.TrainConfig`, `tasks.build_task`) are
checked when the configs are built; `flag_error` turns their ValueError into the same one-line
error, naming the flag instead of the config field.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

VERSIONS = ("jax", "pytorch", "huggingface", "both", "all", "analysis", "interpret")
FRAMEWORKS = ("jax", "pytorch", "huggingface")
# `both` compares the reference with its mirror by default; docs/tutorial.md's `both` meant
# pytorch + huggingface, which is `--version both --versions pytorch,huggingface`.
DEFAULT_PAIR = ("jax", "pytorch")
TASKS = ("numbers", "copy", "reverse", "sort", "corpus")

# Defaults: held-out en->de numbers below 1,000,000 with d_model 128, 2+2 layers, in two to
# three CPU minutes.  300 sub-words make sequences ~5x shorter than characters (14 and 8
# tokens instead of 70), so three epochs (1875 steps) fit; end-of-word BPE (the paper's
# tokenizer) rather than WordPiece, whose word-initial pieces left "ten" alone ending on a
# token no training number ends on (tasks.pieces); no dropout (the paper's 0.1 is for
# 100k-step runs: here it slowed learning the long numbers); cooling the noam rate down over
# the second half of the run beats more steps.
# How each was chosen, measured: README, "Training quality".
DEFAULTS = dict(epochs=3, batch_size=64, hidden_size=128, num_layers=2, num_heads=4,
                train_size=40_000, eval_size=500, lr=1.0, warmup_steps=400, cooldown=0.5,
                dropout=0.0, tokenizer="bpe", vocab_size=300)

# spec field -> the flag that sets it, to name flags in errors raised by the configs.
FIELD_FLAGS = {
    "d_model": "--hidden_size", "num_heads": "--num_heads", "num_encoder_layers": "--num_layers",
    "num_decoder_layers": "--num_layers", "d_ff": "--d_ff", "dropout_rate": "--dropout",
    "max_len": "--max_len", "learning_rate": "--lr", "warmup_steps": "--warmup_steps",
    "cooldown_steps": "--cooldown",
    "batch_size": "--batch_size", "epochs": "--epochs", "max_steps": "--max_steps",
    "grad_accum_steps": "--gradient_accumulation_steps", "mixed_precision": "--mixed_precision",
    "label_smoothing": "--label_smoothing", "clip_norm": "--clip_norm", "seed": "--seed",
    "schedule": "--schedule", "train_size": "--train_size", "eval_size": "--eval_size",
    "src_lang": "--src_lang", "tgt_langs": "--tgt_lang", "path": "--data",
    "eval_path": "--eval_data", "tokenizer": "--tokenizer", "vocab_size": "--vocab_size",
    "checkpoint_every": "--save_steps", "keep_checkpoints": "--save_total_limit",
}


def int_at_least(low: int):
    """An argparse type: an integer >= low (parity.check uses it too)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is invalid: expected an integer >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _float_in(low: float, high: float | None, low_open: bool = False, high_open: bool = True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected a finite number")
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
        if not ok:
            lo = "(" if low_open else "["
            hi = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{value} is invalid: expected a value in "
                                             f"{lo}{low}, {hi}")
        return value

    parse.__name__ = "number"
    return parse


def _data_file(text: str) -> str:
    """An existing, readable file of pairs (a folder or a missing path is a mistake)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist: expected a TSV or JSONL "
                                         f"file of pairs")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: expected a TSV or JSONL file "
                                         f"of pairs")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not readable")
    return text


def output_dir_problem(text: str) -> str | None:
    """Why `text` cannot become the results folder, or None; creates nothing."""
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            return f"{text!r} is a file: expected a folder (new or existing)"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{text!r} is not writable"
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{text!r} cannot be created: {str(parent)!r} is a file"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{text!r} cannot be created: {str(parent)!r} is not writable"
            return None
    return None


def _language(text: str) -> str:
    from tasks.numbers import check_lang

    try:
        check_lang(text, "language")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _languages(text: str) -> tuple[str, ...]:
    langs = tuple(x.strip() for x in text.split(",") if x.strip())
    if not langs:
        raise argparse.ArgumentTypeError(f"{text!r} names no language: expected e.g. de or de,fr")
    if len(set(langs)) != len(langs):
        raise argparse.ArgumentTypeError(f"{text!r} lists a language twice")
    return tuple(_language(x) for x in langs)


def _frameworks(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in names if x not in FRAMEWORKS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected a comma-separated list "
                                         f"of {', '.join(FRAMEWORKS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} lists a version twice")
    return names


positive = int_at_least(1)
non_negative = int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Train and look inside the Transformer of 'Attention Is All You Need': the "
                    "Flax reference (jax), its PyTorch mirror (pytorch), the Hugging Face model "
                    "(huggingface), two or three of them side by side from the same weights "
                    "(both, all), or a demo of the analysis tools (analysis).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = p.add_argument_group("what to run")
    run.add_argument("--version", choices=VERSIONS, default="jax",
                     help="implementation to train, or 'both'/'all' to compare, or 'analysis'")
    run.add_argument("--versions", type=_frameworks, default=None,
                     help="for --version both/all: which implementations, comma-separated "
                          "(both: jax,pytorch; all: jax,pytorch,huggingface)")
    run.add_argument("--output_dir", default=None,
                     help="results folder (default results_<version>)")
    run.add_argument("--seed", type=non_negative, default=0, help="data, init and dropout seed")
    run.add_argument("--resume", action="store_true",
                     help="continue from the latest checkpoint in the results folder")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    data = p.add_argument_group("data")
    data.add_argument("--task", choices=TASKS, default="numbers",
                      help="numbers: number words src_lang -> tgt_lang; copy/reverse/sort: "
                           "synthetic strings; corpus: pairs from --data")
    data.add_argument("--data", type=_data_file, default=None,
                      help="TSV or JSONL file of pairs (--task corpus)")
    data.add_argument("--eval_data", type=_data_file, default=None,
                      help="held-out pairs for --task corpus (default: split off --data)")
    data.add_argument("--src_lang", type=_language, default="en", help="source language")
    data.add_argument("--tgt_lang", type=_languages, default=("de",),
                      help="target language(s); several, comma-separated, train one "
                           "multilingual model (sources get a <2xx> token)")
    data.add_argument("--train_size", type=positive, default=DEFAULTS["train_size"])
    data.add_argument("--eval_size", type=positive, default=DEFAULTS["eval_size"])
    data.add_argument("--max_len", type=int_at_least(2), default=None,
                      help="longest sequence in tokens, specials included (default: fit the data)")
    data.add_argument("--tokenizer", choices=("char", "wordpiece", "bpe"),
                      default=DEFAULTS["tokenizer"],
                      help="char: one token per character; wordpiece, bpe: learnt sub-words "
                           "(bpe marks a word's last piece, wordpiece the others)")
    data.add_argument("--vocab_size", type=int_at_least(8), default=DEFAULTS["vocab_size"],
                      help="sub-word vocabulary size (--tokenizer wordpiece or bpe)")
    data.add_argument("--dataloader_num_workers", type=non_negative, default=0,
                      help="DataLoader workers of the HF Trainer (--version huggingface); the "
                           "JAX and plain torch trainers make their numpy batches in-process")

    model = p.add_argument_group("model")
    model.add_argument("--hidden_size", type=positive, default=DEFAULTS["hidden_size"],
                       help="d_model")
    model.add_argument("--num_layers", type=positive, default=DEFAULTS["num_layers"],
                       help="encoder layers = decoder layers")
    model.add_argument("--num_heads", type=positive, default=DEFAULTS["num_heads"])
    model.add_argument("--d_ff", type=positive, default=None,
                       help="feed-forward width (default 4 * hidden_size)")
    model.add_argument("--dropout", type=_float_in(0.0, 1.0), default=DEFAULTS["dropout"])
    model.add_argument("--norm_position", choices=("post", "pre"), default="post")
    model.add_argument("--activation", choices=("relu", "gelu", "swish"), default="relu")

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=positive, default=DEFAULTS["epochs"])
    train.add_argument("--max_steps", type=non_negative, default=0,
                       help="stop after this many optimizer steps (0: run --epochs)")
    train.add_argument("--batch_size", type=positive, default=DEFAULTS["batch_size"])
    train.add_argument("--gradient_accumulation_steps", type=positive, default=1)
    train.add_argument("--lr", type=_float_in(0.0, None, low_open=True),
                       default=DEFAULTS["lr"],
                       help="learning rate; with --schedule noam, the multiplier of "
                            "d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)")
    train.add_argument("--schedule", choices=("noam", "constant"), default="noam")
    train.add_argument("--warmup_steps", type=non_negative, default=DEFAULTS["warmup_steps"])
    train.add_argument("--cooldown", type=_float_in(0.0, 1.0, high_open=False),
                       default=DEFAULTS["cooldown"],
                       help="fraction of the run's last steps over which the learning rate "
                            "ramps linearly down to zero (0: the schedule alone)")
    train.add_argument("--label_smoothing", type=_float_in(0.0, 1.0), default=0.1)
    train.add_argument("--clip_norm", type=_float_in(0.0, None), default=1.0,
                       help="global gradient-norm clipping (0: off)")
    train.add_argument("--mixed_precision", choices=("none", "bf16", "fp16"), default="none")
    train.add_argument("--eval_every", type=non_negative, default=0,
                       help="evaluate every N steps (0: only at the end)")
    train.add_argument("--log_every", type=positive, default=10)
    train.add_argument("--save_steps", type=positive, default=None,
                       help="write a checkpoint every N optimizer steps (and at the end) for "
                            "--resume (default: ceil(steps / 10), so a killed run loses at "
                            "most a tenth of its steps)")
    train.add_argument("--save_total_limit", type=positive, default=3,
                       help="keep the newest N checkpoints")

    inside = p.add_argument_group("looking inside")
    inside.add_argument("--debug", action="store_true",
                        help="print the step-by-step Q/K/V trace of a sample batch")
    inside.add_argument("--track_internals", action="store_true",
                        help="capture intermediates during training for the evolution plots")
    inside.add_argument("--track_every", type=positive, default=None,
                        help="capture every N steps (default: about 8 captures per run)")
    inside.add_argument("--visualize", action="store_true",
                        help="write the plots and report.html (implies --track_internals)")
    inside.add_argument("--translate", action="append", default=None, metavar="TEXT",
                        help="a source sentence to translate at the end (repeatable; default: "
                             "held-out examples)")
    inside.add_argument("--beam_size", type=positive, default=4,
                        help="beam size of the translated examples")
    inside.add_argument("--wandb", action="store_true",
                        help="log to Weights & Biases (offline unless you are logged in)")
    inside.add_argument("--wandb_project", default="transformer-lab")
    add_interpret_flags(p)
    return p


# -- --version interpret (lab_cli/interpret.py): flags and their checks, kept in one block ----
def add_interpret_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("interpret (causal analyses of a trained model)")
    g.add_argument("--checkpoint", default=None, metavar="FOLDER",
                   help="--version interpret: a trained model's final/ folder (config.json, "
                        "model.safetensors, tokenizer.json); --version analysis: analyse this "
                        "saved model (a save_pretrained folder of Marian, FSMT, BART, mBART, "
                        "M2M100 or Pegasus, or a checkpoint folder) instead of the demo")
    g.add_argument("--clean", action="append", default=None, metavar="TEXT",
                   help="clean source text (repeatable, one --corrupt each; default: number "
                        "pairs that differ in one digit word)")
    g.add_argument("--corrupt", action="append", default=None, metavar="TEXT",
                   help="the corrupted source of the matching --clean (same token count)")
    g.add_argument("--backend", choices=("jax", "torch"), default="jax",
                   help="--version interpret: the implementation that runs the analyses")
    g.add_argument("--ig_steps", type=positive, default=32,
                   help="integrated-gradients quadrature steps (midpoint rule), the first try")
    g.add_argument("--ig_tolerance", type=_float_in(0.0, 1.0, high_open=False), default=0.05,
                   help="triple the IG steps (up to 27x --ig_steps) until the completeness error "
                        "is at most this share of the largest |f(x) - f(baseline)|; 0: exactly "
                        "--ig_steps")


def check_interpret_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.version != "interpret":
        if args.checkpoint is not None and args.version != "analysis":
            parser.error("argument --checkpoint: only used with --version analysis or interpret")
        for flag in ("clean", "corrupt"):
            if getattr(args, flag) is not None:
                parser.error(f"argument --{flag}: only used with --version interpret")
        return
    if args.checkpoint is None:
        parser.error("argument --checkpoint: --version interpret needs --checkpoint FOLDER "
                     "(e.g. results_jax/final)")
    clean, corrupt = args.clean or [], args.corrupt or []
    if len(clean) != len(corrupt):
        parser.error(f"argument --corrupt: {len(clean)} --clean and {len(corrupt)} --corrupt "
                     f"texts; give one --corrupt per --clean")
    for flag, texts in (("--clean", clean), ("--corrupt", corrupt)):
        if any(not t.strip() for t in texts):
            parser.error(f"argument {flag}: empty text")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task == "corpus" and args.data is None:
        parser.error("argument --data: --task corpus needs --data PATH (a TSV or JSONL file)")
    if args.task != "corpus" and (args.data is not None or args.eval_data is not None):
        parser.error(f"argument --data: only --task corpus reads a file, not --task {args.task}")
    check_interpret_flags(parser, args)
    if args.versions is not None:
        if args.version == "both" and len(args.versions) != 2:
            parser.error(f"argument --versions: --version both compares two implementations, "
                         f"got {','.join(args.versions)}")
        if args.version not in ("both", "all"):
            parser.error("argument --versions: only used with --version both or all")
    if args.version == "both":
        args.versions = args.versions or DEFAULT_PAIR
    elif args.version == "all":
        args.versions = args.versions or FRAMEWORKS
    elif args.version in FRAMEWORKS:
        args.versions = (args.version,)
    else:
        args.versions = ()
    if args.output_dir is None:
        args.output_dir = f"results_{args.version}"
    problem = output_dir_problem(args.output_dir)
    if problem:
        parser.error(f"argument --output_dir: {problem}")
    return args


def flag_error(error: ValueError) -> str:
    """A config's ValueError as one line that names the flag(s) behind the field(s) it names."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if message.startswith("argument "):  # already names its flag
        return message
    flags = []
    for field, flag in FIELD_FLAGS.items():
        if re.search(rf"\b{field}\b", message) and flag not in flags:
            flags.append(flag)
    return f"argument {'/'.join(flags)}: {message}" if flags else message

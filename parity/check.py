"""`python -m parity.check`: prove that every implementation computes the same thing.

With no arguments: the tiny preset, seed 0, a padded batch whose source and target lengths
differ, float32 with full-precision matmuls forced on every backend.  Compared, with the JAX
model as the reference: every canonical intermediate and the logits, the loss and its gradient
for every parameter, greedy and beam decoding tokens, cached against full decoding, and ten Adam
steps; against HF's own MarianMT on the same tiny model made Marian-compatible.  Prints one
table, writes a JSON report with `--json`, exits 1 on any mismatch or any name on one side only,
and 2 (argparse's one `error:` line) for a usage error.

Speed (a first run has an empty JAX compilation cache): XLA compiling the tiny model's
programs is most of the CPU time, so the sections run side by side in threads, and inside a
section the JAX reference and the other implementations run side by side too (`runners.together`):
XLA compiles in its own threads, off the GIL, while torch and HF run.  The weights' init
compiles while torch and transformers are imported.  XLA's LLVM backend runs at -O0 here (the
tiny programs run in microseconds; compiling them at -O2 costs seconds; float semantics are
the same, no fast-math either way), unless XLA_FLAGS already sets the optimisation level.

Adding a section: write `def my_checks(config, flat, batch, args=None) -> list[Check]` (the
config, canonical weights, batch, and the parsed command line or None) and append
`Section("my_checks", my_checks)` to SECTIONS; `--section my_checks` then selects it, and the
table lists its rows after those of the sections before it.  Options go in `parse_args`.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lab_cli.args import int_at_least  # noqa: E402  (stdlib only: the CLIs' one int flag type)
from spec import (  # noqa: E402
    PRESETS,
    TransformerConfig,
    intermediate_shapes,
    load_checkpoint,
    param_shapes,
)

from . import interventions, runners, tolerances  # noqa: E402
from .batch import make_batch  # noqa: E402
from .report import Check, compare, compare_tokens, format_table, interleave, write_json  # noqa: E402
from .runners import together  # noqa: E402

LABEL_SMOOTHING = 0.1


FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def force_full_precision() -> None:
    """Full float32 matmuls on every backend: no TF32 in torch, 'highest' in jax."""
    jax_full_precision()
    torch_full_precision()


def jax_full_precision() -> None:
    """JAX's half of `force_full_precision`: 'highest' matmul precision.

    Also turns on JAX's persistent compilation cache (`TLAB_JAX_CACHE`, default
    ~/.cache/transformer-lab/jax; "off" disables it): XLA compilation is most of a run's time
    on a CPU, and the cache is keyed by the program and flags, so results cannot change.
    XLA_FLAGS gets `FAST_COMPILE_FLAG` (module docstring) unless it sets that level itself;
    it only acts if JAX's backend has not started yet in this process."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE_FLAG}".strip()
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    cache = os.environ.get("TLAB_JAX_CACHE",
                           os.path.join(os.path.expanduser("~"), ".cache", "transformer-lab", "jax"))
    if cache != "off":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def torch_full_precision() -> None:
    """Torch's half of `force_full_precision` (imports torch, so it overlaps JAX's init)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def import_other_frameworks() -> None:
    """torch, the mirror and transformers' models, imported once in the main thread before
    the sections' threads need them.  Torch gets one intra-op thread: the tiny model's ops
    gain nothing from more, and on a busy machine torch's spinning worker threads cost more CPU
    than the ops themselves (ten Adam steps: 0.2 s of CPU with one thread, 7 s with two)."""
    import torch

    torch.set_num_threads(1)
    torch_full_precision()
    import transformers.models.marian.modeling_marian  # noqa: F401

    import hf_bridge  # noqa: F401
    import torch_model  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Context:
    """What every section gets: the model under check, the batch and the parsed options."""

    config: TransformerConfig
    flat: dict
    batch: dict
    args: argparse.Namespace


def load_model(args: argparse.Namespace) -> tuple[TransformerConfig, dict | None]:
    """The config and, for a checkpoint, its canonical weights (None: random from --seed).

    A `--config` file must name every field (`TransformerConfig.from_dict(complete=True)`): a
    partial one would silently check the base model's defaults for the rest."""
    if args.checkpoint:
        return load_checkpoint(args.checkpoint)[::-1]
    if args.config:
        return TransformerConfig.from_json(args.config, complete=True), None
    return TransformerConfig.preset(args.preset), None


def random_weights(config: TransformerConfig, seed: int) -> dict:
    import jax_model

    return jax_model.to_canonical(jax_model.init(config, seed))


def forward_and_gradients(config: TransformerConfig, flat: dict, batch: dict,
                          args: argparse.Namespace | None = None) -> list[Check]:
    """Every intermediate and the logits, then the loss and every parameter's gradient, of the
    torch mirror and the HF model against JAX.  HF's own `*_attentions` outputs are checked
    against the JAX weights of the same canonical name."""
    b, s = batch["src"].shape
    order = list(intermediate_shapes(config, b, s, batch["tgt_in"].shape[1]))
    (reference, torch_inter, hf, (ref_loss, ref_grads), *others) = together(
        lambda: runners.jax_forward(flat, config, batch),
        lambda: runners.torch_forward(flat, config, batch),
        lambda: runners.hf_forward(flat, config, batch),
        lambda: runners.jax_loss_and_grads(flat, config, batch, LABEL_SMOOTHING),
        lambda: runners.torch_loss_and_grads(flat, config, batch, LABEL_SMOOTHING),
        lambda: runners.hf_loss_and_grads(flat, config, batch, LABEL_SMOOTHING))
    checks = compare("torch~jax", torch_inter, reference, tolerances.FORWARD, order)
    hf_outputs = {k.removeprefix("hf_output:"): v for k, v in hf.items()
                  if k.startswith("hf_output:")}
    checks += compare("hf~jax", {k: v for k, v in hf.items() if not k.startswith("hf_output:")},
                      reference, tolerances.FORWARD, order)
    attn_order = [n for n in order if n.endswith("/weights")]
    checks += compare("hf~jax", hf_outputs, {n: reference[n] for n in attn_order},
                      tolerances.FORWARD, attn_order, prefix="hf_output:")

    grad_order = list(param_shapes(config))
    for pair, (loss, grads) in zip(("torch~jax", "hf~jax"), others):
        checks += compare(pair, {"loss": loss}, {"loss": ref_loss}, tolerances.FORWARD)
        checks += compare(pair, grads, ref_grads, tolerances.GRADIENT, grad_order,
                          prefix="grad/")
    return interleave(checks)


def marian(config: TransformerConfig, flat: dict, batch: dict,
           args: argparse.Namespace | None = None) -> list[Check]:
    """HF's own MarianMT on the same weights, the config made Marian-compatible (split
    positions; Marian is post-LN).  A config Marian cannot express is reported, not hidden."""
    from hf_bridge.marian import marian_compatible

    try:
        config = marian_compatible(config.replace(positional_layout="split"))
    except ValueError as e:
        return [Check("marian", "marian~jax", (), float("nan"), float("nan"), True,
                      f"skipped: {e}")]
    b, s = batch["src"].shape
    order = list(intermediate_shapes(config, b, s, batch["tgt_in"].shape[1]))
    got, reference = together(lambda: runners.marian_forward(flat, config, batch),
                              lambda: runners.jax_forward(flat, config, batch))
    return compare("marian~jax", got, {n: reference[n] for n in got if n in reference},
                   tolerances.FORWARD, [n for n in order if n in got], prefix="marian:")


BEAM_SIZE = 3
BEAM_ALPHA = 0.8  # not 1.0, so a wrong length-penalty exponent shows


def decoding(config: TransformerConfig, flat: dict, batch: dict,
             args: argparse.Namespace | None = None) -> list[Check]:
    """Greedy and beam tokens of torch and HF `generate` against JAX, and for JAX and torch
    each step of the cached decode against one full causal forward over the decoded tokens.
    Decoding runs for the batch's target length, so that full forward reuses its compilation."""
    src, decode_len = batch["src"], batch["tgt_in"].shape[1]

    def greedy_and_steps(decode, forward):
        """Greedy tokens and the cached-vs-full attention weights of one implementation."""
        tokens, steps = decode(flat, config, src, decode_len, capture=True)
        return tokens, runners.cached_vs_full(flat, config, src, tokens, steps, forward)

    (ref_greedy, jax_steps), (torch_greedy, torch_steps), hf_greedy, \
        (ref_beam, _), (torch_beam, _), hf_beam = together(
            lambda: greedy_and_steps(runners.jax_decode, runners.jax_forward),
            lambda: greedy_and_steps(runners.torch_decode, runners.torch_forward),
            lambda: runners.hf_generate(flat, config, src, decode_len),
            lambda: runners.jax_decode(flat, config, src, decode_len, BEAM_SIZE, BEAM_ALPHA),
            lambda: runners.torch_decode(flat, config, src, decode_len, BEAM_SIZE, BEAM_ALPHA),
            lambda: runners.hf_generate(flat, config, src, decode_len, BEAM_SIZE, BEAM_ALPHA))
    beam = f"decode/beam{BEAM_SIZE}"
    checks = [compare_tokens("decode/greedy", "torch~jax", torch_greedy, ref_greedy),
              compare_tokens("decode/greedy", "hf~jax", hf_greedy, ref_greedy),
              compare_tokens(beam, "torch~jax", torch_beam, ref_beam),
              compare_tokens(beam, "hf~jax", hf_beam, ref_beam)]
    for pair, (cached, full) in (("jax-cached~full", jax_steps),
                                 ("torch-cached~full", torch_steps)):
        checks += compare(pair, cached, full, tolerances.FORWARD, prefix="decode/")
    return checks


ADAM_STEPS = 10


def optimizer_steps(config: TransformerConfig, flat: dict, batch: dict,
                    args: argparse.Namespace | None = None) -> list[Check]:
    """Ten Adam steps of each trainer's own step function (optax vs torch.optim) on the same
    batches, dropout off: every parameter after every step.  The warm-up ramp and clipping are
    on, so the schedule and the clip are checked too."""
    from spec import TrainConfig

    config = config.replace(dropout_rate=0.0, attention_dropout_rate=0.0)
    train = TrainConfig(schedule="constant", learning_rate=1e-3, warmup_steps=3, clip_norm=1.0,
                        adam_eps=tolerances.OPTIMIZER_EPS, label_smoothing=LABEL_SMOOTHING)
    b, s = batch["src"].shape
    t = batch["tgt_in"].shape[1]
    batches = [batch] + [make_batch(config, 1000 + i, b, s, t) for i in range(ADAM_STEPS - 1)]
    reference, got = together(lambda: runners.jax_adam_steps(flat, config, batches, train),
                              lambda: runners.torch_adam_steps(flat, config, batches, train))
    order = list(param_shapes(config))
    checks = []
    for step, (params, ref) in enumerate(zip(got, reference), start=1):
        checks += compare("torch~jax", params, ref, tolerances.OPTIMIZER, order,
                          prefix=f"adam/step_{step}/")
    return checks


@dataclasses.dataclass(frozen=True)
class Section:
    """One group of checks: `--section name` selects it; `run(config, flat, batch, args)`
    returns its rows (`args`: the parsed command line, None when called from code).  `quick`,
    when given, is what a run without `--section` uses instead (the default run's budget)."""

    name: str
    run: Callable[..., list[Check]]
    quick: Callable[..., list[Check]] | None = None


def _without_args(fn: Callable[[TransformerConfig, dict, dict], list[Check]]
                  ) -> Callable[..., list[Check]]:
    return lambda config, flat, batch, args=None: fn(config, flat, batch)


# The registry, in report order.  Sections run side by side, so none may rely on another.
SECTIONS: list[Section] = [
    Section("forward", forward_and_gradients),
    Section("decoding", decoding),
    Section("optimizer", optimizer_steps),
    Section("marian", marian),
    Section("interventions", _without_args(interventions.full),
            quick=_without_args(interventions.quick)),
]


def section_names() -> list[str]:
    return [section.name for section in SECTIONS]


def run_sections(ctx: Context, names: list[str] | None = None) -> list[Check]:
    """The chosen sections (default all, each in its `quick` form), side by side; their rows
    in registry order."""
    chosen = [section for section in SECTIONS if names is None or section.name in names]
    runs = [section.run if names is not None or section.quick is None else section.quick
            for section in chosen]
    results = together(*(lambda run=run: run(ctx.config, ctx.flat, ctx.batch, ctx.args)
                         for run in runs))
    return [check for rows in results for check in rows]


def _config_file(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text!r} does not exist: expected a config.json file")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: expected a config.json file "
                                         f"(a checkpoint folder goes to --checkpoint)")
    return text


def _checkpoint_folder(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text!r} does not exist: expected a checkpoint "
                                         f"folder (config.json + model.safetensors)")
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file: expected a checkpoint folder "
                                         f"(config.json + model.safetensors)")
    return text


def _json_path(text: str) -> str:
    """A file path whose folder exists and is writable, checked before the run, not after."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: expected a file path")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {folder!r} is not writable")
    return text


# Words in a spec/batch error -> the flag behind them.
_FLAG_OF = {"src_len": "--src-len", "tgt_len": "--tgt-len", "batch": "--batch"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity.check", description=__doc__.split("\n")[0],
                                epilog="Exit status: 0 all checks agree, 1 a check failed, "
                                       "2 a usage error.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default="tiny", choices=list(PRESETS),
                        help="config preset (default: tiny)")
    source.add_argument("--config", type=_config_file,
                        help="a complete config.json to check (every field; random weights "
                             "from --seed)")
    source.add_argument("--checkpoint", type=_checkpoint_folder,
                        help="a checkpoint folder (config.json + safetensors)")
    source.add_argument("--hf", metavar="PATH",
                        help="a saved HF folder (Marian, FSMT, BART, mBART, M2M100, Pegasus) "
                             "against HF's own class: parity/hf_folder.py")
    p.add_argument("--seed", type=int_at_least(0), default=0,
                   help="weights and batch seed (default 0)")
    p.add_argument("--batch", type=int_at_least(2), default=3, help="batch size (default 3)")
    p.add_argument("--src-len", type=int_at_least(2), default=7,
                   help="source length (default 7)")
    p.add_argument("--tgt-len", type=int_at_least(2), default=5,
                   help="target length (default 5)")
    p.add_argument("--section", action="append", choices=section_names(),
                   help="run only this group of checks (repeatable; default: all)")
    p.add_argument("--only", metavar="PATTERN",
                   help="report only checks whose name matches this glob (e.g. '*cross_attn*')")
    p.add_argument("--json", metavar="PATH", type=_json_path,
                   help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="print failing rows only")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def usage_error(args: argparse.Namespace, error: Exception) -> str:
    """A load or batch error as argparse's `argument --flag: ...`, naming the flag behind it."""
    message = str(error).splitlines()[0]
    flags = [flag for word, flag in _FLAG_OF.items() if f"{word}=" in message]
    if not flags:
        flags = ["--checkpoint" if args.checkpoint else "--config" if args.config
                 else "--preset"]
    return f"argument {'/'.join(flags)}: {message}"


def usage_exit(parser: argparse.ArgumentParser, message: str) -> int:
    """What `parser.error` prints (usage, then one `error:` line), returning 2 instead of
    exiting, so `main(argv)` can be called in-process."""
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when every check agrees, 1 when one fails, 2 for a usage error (argparse's
    one `error:` line), checked before the frameworks load where it can be."""
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.hf:
        force_full_precision()
        from .hf_folder import run_hf_folder
        return run_hf_folder(args, start)
    try:
        config, flat = load_model(args)
        batch = make_batch(config, args.seed, args.batch, args.src_len, args.tgt_len)
    except (ValueError, FileNotFoundError) as e:
        return usage_exit(parser, usage_error(args, e))
    jax_full_precision()  # torch's half in import_other_frameworks
    with ThreadPoolExecutor(1) as pool:  # JAX's init compiles while torch is imported
        init = pool.submit(random_weights, config, args.seed) if flat is None else None
        import_other_frameworks()
        ctx = Context(config, init.result() if init else flat, batch, args)
    checks = run_sections(ctx, args.section)
    if args.only:
        checks = [c for c in checks if fnmatch.fnmatchcase(c.name, args.only)
                  or fnmatch.fnmatchcase(c.name, f"*{args.only}*")]
        if not checks:
            return usage_exit(parser, f"argument --only: {args.only!r} matched no check")
    print(format_table(checks, verbose=not args.quiet))
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        write_json(args.json, checks, {"config": ctx.config.to_dict(), "seed": args.seed})
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The tutorial's command line: train, compare and look inside the Transformer.

    python main.py --version jax                       # the Flax reference (default)
    python main.py --version both --epochs 3 --debug --track_internals --visualize
    python main.py --version huggingface --batch_size 8 --gradient_accumulation_steps 4
    python main.py --version analysis                  # a one-minute demo of the analysis tools
    python main.py --version analysis --checkpoint PATH   # inside a saved HF model (BART, ...)
    python main.py --version interpret --checkpoint results_jax/final   # causal analyses
    MPLBACKEND=Agg python main.py --visualize          # headless plotting

`python main.py --help` lists every flag.  The work is done in `lab_cli` (see its modules);
this file only parses the flags and turns a bad value into argparse's one-line error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lab_cli.args import build_parser, flag_error, parse_args
from training.host_memory import keep_freed_memory


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` (default: sys.argv[1:]); returns the exit status.

    Bad flag values exit with status 2 and one `main.py: error: ...` line, as argparse does;
    so does `--resume` into a run whose model, training or data flags differ.  A run stopped by
    a non-finite loss prints one `main.py: training stopped: ...` line and returns 1, after
    writing its `summary.json`.
    """
    args = parse_args(argv)
    keep_freed_memory()  # before JAX starts its threads (training/host_memory.py says why)
    if args.version == "analysis" and args.checkpoint:
        from lab_cli import pretrained

        try:
            result = pretrained.analyse(args.checkpoint, args.output_dir, args.translate)
        except (ValueError, FileNotFoundError) as e:
            build_parser().error(f"argument --checkpoint: {e}")
        print(f"analysis of {args.checkpoint} ({result['framework']} model) -> {args.output_dir}")
    elif args.version == "analysis":
        from analysis import demo

        result = demo.run(args.output_dir, seed=args.seed)
        print(f"analysis demo ({result['framework']} model, {result['seconds']:.1f} s) -> "
              f"{args.output_dir}")
    if args.version == "analysis":
        for label, path in result["files"].items():
            print(f"  {label}: {path}")
        for reason in result["skipped"]:
            print(f"  skipped {reason}")
        return 0
    if args.version == "interpret":
        from lab_cli import interpret

        try:
            return interpret.main(args)
        except ValueError as e:  # bad flag values name their flag; anything else is a bug
            if not str(e).startswith("argument "):
                raise
            build_parser().error(str(e).splitlines()[0])
    from lab_cli import configs

    try:
        setup = configs.setup(args)
    except ValueError as e:
        build_parser().error(flag_error(e))
    try:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        build_parser().error(f"argument --output_dir: cannot create {args.output_dir!r}: "
                             f"{e.strerror}")
    from lab_cli import app
    from training import NonFiniteLossError, ResumeError

    try:
        app.run_setup(args, setup)
    except ResumeError as e:  # --resume into a run of other flags: name them, exit 2
        build_parser().error(flag_error(e))
    except NonFiniteLossError as e:
        print(f"main.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

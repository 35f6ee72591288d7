"""Training speed side by side: one model, the same weights, the same batches, in one process.

    .venv/bin/python benchmarks/train.py                   # d_model 128, 2+2 layers, batch 32
    .venv/bin/python benchmarks/train.py --only jax,torch --steps 20 --d_model 256

What is timed (steps `--warmup + 1 ...`, after `--warmup` untimed steps whose time, compilation
included, is reported apart as "first s"; jax, torch and torch.compile take turns step by step,
so a change in load hits each alike; the HF Trainer and the sharded run go after, each
whole), each a full optimizer update on the number-
translation task's batches (`training.step_batches`: the plan every trainer walks), dropout off:
- jax:          `jax_model.train.make_train_step` (jit), one device;
- torch:        `torch_model.train.train_step`, eager;
- torch.compile: the same step with `torch.compile(model)`;
- hf Trainer:   `hf_bridge.trainer.TransformerLabTrainer.train()`, step to step (its data
                loader, forward/backward, clipping, Adam, scheduler and per-step logging);
- jax x4 (sharded): the jitted step data-parallel over 4 virtual CPU devices, in a subprocess
                with XLA_FLAGS=--xla_force_host_platform_device_count=4 (the same 2 cores: this
                shows the sharded program runs and what its overhead is, not a speed-up).
Tokens are the non-pad target labels; "loss" is the last timed step's, which must agree across
implementations (same weights, same batches).  "GFLOP/s" and "MFU" read each median step
against the machine: `benchmarks.flops.train_step_flops` of the padded batch over the step
time, as a fraction of the float32 matmul rate measured in this process before the rows
(`benchmarks.matmul_rate`; the load average is printed beside it).  The default run stays under ~3 minutes on two
cores; `--threads` (default 1) keeps the comparison fair on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import spec  # noqa: E402
import tasks  # noqa: E402
from benchmarks import flops, matmul_rate  # noqa: E402
from benchmarks.common import limit_threads, load_average  # noqa: E402
from training import data as train_data  # noqa: E402
from training import host_memory  # noqa: E402

IMPLEMENTATIONS = ("jax", "torch", "compile", "hf", "sharded")
LABELS = {"jax": "jax (jit)", "torch": "torch eager", "compile": "torch.compile",
          "hf": "hf Trainer", "sharded": "jax x4 sharded"}


def setup(args: argparse.Namespace) -> tuple[Any, spec.TransformerConfig, spec.TrainConfig,
                                             list[list[dict]], tuple[int, int]]:
    """The task, configs and the padded micro-batches of every step (warm-up + timed)."""
    task = tasks.build_task("numbers", train_size=args.train_size, eval_size=8, seed=args.seed)
    config = task.model_config(None, d_model=args.d_model, num_heads=args.heads,
                               num_encoder_layers=args.layers, num_decoder_layers=args.layers,
                               d_ff=4 * args.d_model, dropout_rate=0.0)
    total = args.warmup + args.steps
    train = spec.TrainConfig(batch_size=args.batch, max_steps=total, warmup_steps=100,
                             seed=args.seed)
    src_len, tgt_len = train_data.fixed_lengths(task, ("train", "eval"), args.batch, args.seed,
                                                config.max_len)
    per_epoch = train_data.batches_per_epoch(task, "train", args.batch, args.seed)
    steps = []
    for step, micro in train_data.step_batches(task, "train", args.batch, 1, args.seed,
                                               per_epoch):
        if step > total:
            break
        steps.append([train_data.pad_batch(b, args.batch, src_len, tgt_len, config.pad_id)
                      for b in micro])
    return task, config, train, steps, (src_len, tgt_len)


def tokens(micro: list[dict]) -> int:
    return int(sum((b["labels"] != 0).sum() for b in micro))


def summarise(times: list[float], first: float, step_tokens: list[int], loss: float
              ) -> dict[str, float]:
    total = sum(times)
    return {"step_s": statistics.median(times), "tokens_per_s": sum(step_tokens) / total,
            "first_s": first, "loss": loss}


# -- JAX ----------------------------------------------------------------------------------------
Stepper = Callable[[list[dict]], float]  # one optimizer update on a step's micro-batches -> loss


def jax_stepper(config: spec.TransformerConfig, train: spec.TrainConfig, flat: dict,
                mesh: Any = None) -> Stepper:
    """The jitted JAX update (`jax_model.train.make_train_step`), waiting for its loss."""
    import jax

    import jax_model
    from jax_model import sharding
    from jax_model import train as jt

    state = jt.create_train_state(config, train, params=jax_model.from_canonical(flat, config))
    if mesh is not None:
        state = sharding.replicate(state, mesh)
    step_fn = jt.make_train_step(config, train, mesh)

    def step(micro: list[dict]) -> float:
        nonlocal state
        batch = {k: v.astype(np.int32) for k, v in train_data.stack(micro).items()}
        if mesh is not None:
            batch = sharding.shard_batch(batch, mesh, batch_axis=1)
        state, metrics = step_fn(state, batch)
        return float(jax.block_until_ready(metrics["loss"]))
    return step


def run_alone(step: Stepper, steps: list[list[dict]], warmup: int) -> dict[str, float]:
    """Every step of one stepper in turn (the sharded worker, which has a process to itself)."""
    times, first, loss = [], 0.0, float("nan")
    for i, micro in enumerate(steps):
        start = time.perf_counter()
        loss = step(micro)
        elapsed = time.perf_counter() - start
        if i < warmup:
            first += elapsed
        else:
            times.append(elapsed)
    return summarise(times, first, [tokens(m) for m in steps[warmup:]], loss)


def run_interleaved(steppers: dict[str, Stepper], steps: list[list[dict]], warmup: int
                    ) -> dict[str, dict[str, float]]:
    """Step N of every stepper, then step N + 1 of every stepper, ...: a change in the
    machine's load hits each row alike.  The warm-up steps (compilation) are timed apart."""
    first = {name: 0.0 for name in steppers}
    times: dict[str, list[float]] = {name: [] for name in steppers}
    losses = {name: float("nan") for name in steppers}
    for i, micro in enumerate(steps):
        for name, step in steppers.items():
            start = time.perf_counter()
            losses[name] = step(micro)
            elapsed = time.perf_counter() - start
            if i < warmup:
                first[name] += elapsed
            else:
                times[name].append(elapsed)
    counts = [tokens(m) for m in steps[warmup:]]
    return {name: summarise(times[name], first[name], counts, losses[name]) for name in steppers}


def run_sharded(args: argparse.Namespace) -> dict[str, float]:
    """`jax_stepper` over 4 virtual CPU devices, in a fresh process (XLA reads its flags once)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=4").strip()
    argv = [sys.executable, str(Path(__file__).resolve()), "--sharded_worker",
            *[f"--{k}={v}" for k, v in vars(args).items()
              if k not in ("only", "sharded_worker")]]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the sharded JAX run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- PyTorch -------------------------------------------------------------------------------------
def torch_stepper(config: spec.TransformerConfig, train: spec.TrainConfig, flat: dict,
                  device: str, compile: bool) -> Stepper:
    """`torch_model.train.train_step`, eager or with `torch.compile(model)`."""
    import torch

    from torch_model import train as tt

    state = tt.create_train_state(config, train, flat, device, compile=compile)

    def step(micro: list[dict]) -> float:
        loss = float(tt.train_step(state, micro, config, train)["loss"])  # waits for the device
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return loss
    return step


def run_hf(task: Any, config: spec.TransformerConfig, train: spec.TrainConfig,
           steps: list[list[dict]], lengths: tuple[int, int], flat: dict, warmup: int,
           device: str) -> dict[str, float]:
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import SaveStrategy

    from hf_bridge import TransformerLabForConditionalGeneration
    from hf_bridge import trainer as ht

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.losses: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    total = len(steps)
    model = TransformerLabForConditionalGeneration.from_canonical(flat, config)
    per_epoch = train_data.batches_per_epoch(task, "train", train.batch_size, train.seed)
    dataset = ht.PlanDataset(task, "train", train.batch_size, train.seed, per_epoch, total,
                             *lengths, config.pad_id)
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = ht.training_arguments(tmp, train, total, use_cpu=not device.startswith("cuda"))
        args.save_strategy = SaveStrategy.NO
        trainer = ht.TransformerLabTrainer(model=model, args=args, train_dataset=dataset,
                                           train_config=train, callbacks=[clock])
        for callback in (PrinterCallback, ProgressCallback, trainer.checkpoints):
            trainer.remove_callback(callback)
        trainer.train()
    gaps = np.diff(clock.marks).tolist()
    return summarise(gaps[warmup:], sum(gaps[:warmup]), [tokens(m) for m in steps[warmup:]],
                     clock.losses[-1])


# -- report ----------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2, help="encoder layers = decoder layers")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train_size", type=int, default=2000)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch and XLA (0: the libraries' defaults)")
    p.add_argument("--only", default=",".join(IMPLEMENTATIONS),
                   help=f"comma-separated subset of {', '.join(IMPLEMENTATIONS)}")
    p.add_argument("--sharded_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("d_model", "heads", "layers", "batch", "train_size", "steps"):
        if getattr(args, name) < 1:
            p.error(f"argument --{name}: expected a positive integer, got {getattr(args, name)}")
    if args.warmup < 1:
        p.error(f"argument --warmup: expected >= 1 (the first step compiles), got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(only) - set(IMPLEMENTATIONS))
    if unknown:
        raise SystemExit(f"--only: unknown implementation(s) {unknown}; expected a subset of "
                         f"{', '.join(IMPLEMENTATIONS)}")
    if args.threads > 0:
        limit_threads(args.threads)
    task, config, train, steps, lengths = setup(args)
    import torch_model

    flat = {k: v.copy() for k, v in torch_model.init(config, args.seed).to_canonical().items()}
    if args.sharded_worker:
        import jax

        from jax_model import sharding

        step = jax_stepper(config, train, flat, sharding.make_mesh(jax.devices()))
        print(json.dumps(run_alone(step, steps, args.warmup)))
        return 0
    print(f"model d_model {config.d_model}, {config.num_heads} heads, "
          f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, vocab "
          f"{config.tgt_vocab_size}; batch {args.batch} x (src {lengths[0]}, tgt {lengths[1]}); "
          f"{args.steps} timed steps after {args.warmup}; {args.threads or 'default'} thread(s)",
          flush=True)
    steppers = {
        "jax": lambda: jax_stepper(config, train, flat),
        "torch": lambda: torch_stepper(config, train, flat, args.device, compile=False),
        "compile": lambda: torch_stepper(config, train, flat, args.device, compile=True),
    }
    alone = {
        "hf": lambda: run_hf(task, config, train, steps, lengths, flat, args.warmup, args.device),
        "sharded": lambda: run_sharded(args),
    }
    rate = matmul_rate.measure(repeats=3)
    work = flops.train_step_flops(config, args.batch, *lengths)
    print(f"{rate.describe()}; {load_average()}; {host_memory.describe()}\n"
          f"model FLOPs per step {work / 1e9:.2f} G", flush=True)
    results = run_interleaved({k: steppers[k]() for k in only if k in steppers}, steps,
                              args.warmup)
    print(f"{'implementation':<16} {'step ms':>9} {'tokens/s':>10} {'first s':>8} {'loss':>10}"
          f" {'GFLOP/s':>8} {'MFU':>6}")
    for key in only:
        r = results[key] if key in results else alone[key]()
        results[key] = r
        print(f"{LABELS[key]:<16} {1000 * r['step_s']:>9.1f} {r['tokens_per_s']:>10.0f} "
              f"{r['first_s']:>8.2f} {r['loss']:>10.6f} {work / r['step_s'] / 1e9:>8.1f} "
              f"{flops.mfu(work, r['step_s'], rate.best):>6.1%}", flush=True)
    for other, target in (("torch", 1.2), ("compile", 1.0)):
        if "jax" in results and other in results:
            ratio = results[other]["step_s"] / results["jax"]["step_s"]
            print(f"JAX step vs {LABELS[other]}: {ratio:.2f}x (target >= {target}x: "
                  f"{'met' if ratio >= target else 'NOT met'})")
    print(load_average())
    return 0


if __name__ == "__main__":
    sys.exit(main())

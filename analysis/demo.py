"""The analysis demo (`python main.py --version analysis`): every figure of docs/tutorial.md in a minute.

A tiny model (the `tiny` preset: d_model 32, 4 heads, 2+2 layers) learns to reverse strings
for 200 Adam steps (enough for the anti-diagonal cross-attention to appear), with the intermediates of a fixed probe batch captured every few
steps (`internals_step_<N>.npz`, the trainers' format).  Then the analysis runs on the probe:
report, figures, trace and the HTML page.  JAX is used when importable (the real
`jax_model.train` optimizer step), else PyTorch (torch.optim.Adam with the same
`spec.TrainConfig`); when both are, the other framework's capture is diffed against it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import tasks
import training
from spec import TrainConfig, TransformerConfig, learning_rate

from .analyzer import TransformerAnalyzer
from .internals import load_captures, select_points
from .models import adapter_from_canonical
from .outputs import write_outputs

PROBE_SIZE = 2
BATCH_SIZE = 32


def _train_config(steps: int, seed: int) -> TrainConfig:
    return TrainConfig(learning_rate=3e-3, schedule="constant", warmup_steps=10,
                       batch_size=BATCH_SIZE, max_steps=steps, clip_norm=1.0, seed=seed,
                       label_smoothing=0.1)


def _batches(task, steps: int, shape: tuple[int, int], seed: int):
    """`steps` training batches of one fixed shape (so jit compiles once)."""
    epoch = 0
    while True:
        for batch in task.batches("train", BATCH_SIZE, epoch=epoch, seed=seed, drop_last=True,
                                  pad_to=shape):
            yield batch
            steps -= 1
            if steps == 0:
                return
        epoch += 1


def _train_jax(config: TransformerConfig, tc: TrainConfig, task, probe, internals: Path,
               capture_every: int):
    import jax
    import jax.numpy as jnp

    import jax_model
    from jax_model.adapter import JaxAdapter
    from jax_model.train import create_train_state, make_train_step

    state = create_train_state(config, tc, jax_model.init(config, tc.seed))
    step_fn = make_train_step(config, tc, donate=False)
    records = []

    def track(step: int) -> None:
        inter = JaxAdapter(state.params, config).capture(probe["src"], probe["tgt_in"])
        training.save_internals(internals, step, select_points(inter), probe)

    track(0)
    for step, batch in enumerate(_batches(task, tc.max_steps, task.max_lengths(), tc.seed), 1):
        stacked = {k: jnp.asarray(v[None]) for k, v in batch.items()}  # [1, b, len]
        state, metrics = step_fn(state, stacked)
        records.append({"step": step, **{k: float(v) for k, v in
                                         jax.device_get(metrics).items()}})
        if step % capture_every == 0 or step == tc.max_steps:
            track(step)
    return JaxAdapter(state.params, config), records


def _train_torch(config: TransformerConfig, tc: TrainConfig, task, probe, internals: Path,
                 capture_every: int):
    import torch

    import torch_model
    from torch_model.adapter import TorchAdapter
    from torch_model.loss import smoothed_loss

    model = torch_model.init(config, tc.seed)
    adapter = TorchAdapter(model)
    opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(tc.adam_b1, tc.adam_b2),
                           eps=tc.adam_eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: learning_rate(i + 1, tc, config.d_model))
    records = []
    training.save_internals(internals, 0, select_points(
        adapter.capture(probe["src"], probe["tgt_in"])), probe)
    for step, batch in enumerate(_batches(task, tc.max_steps, task.max_lengths(), tc.seed), 1):
        logits, _ = torch_model.forward(model, batch["src"], batch["tgt_in"], capture=False)
        labels = torch.as_tensor(batch["labels"], dtype=torch.int64)
        loss = smoothed_loss(logits, labels, config.pad_id, tc.label_smoothing)
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
        records.append({"step": step, "loss": loss.item(), "grad_norm": norm.item(),
                        "learning_rate": sched.get_last_lr()[0]})
        opt.step()
        sched.step()
        if step % capture_every == 0 or step == tc.max_steps:
            training.save_internals(internals, step, select_points(
                adapter.capture(probe["src"], probe["tgt_in"])), probe)
    return adapter, records


def _framework() -> str:
    for module in ("jax_model.train", "torch_model"):
        try:
            __import__(module)
            return module.split("_")[0]
        except ImportError:
            continue
    raise ImportError("the analysis demo needs jax_model (jax, flax, optax) or torch_model "
                      "(torch) importable")


def run(output_dir: str = "results_analysis", seed: int = 0, steps: int = 200,
        capture_every: int = 40, framework: str | None = None) -> dict:
    """Train briefly, analyse, write everything into `output_dir`; returns `write_outputs`'s
    result plus "framework" and "seconds"."""
    for name, v, lo in (("seed", seed, 0), ("steps", steps, 1), ("capture_every",
                                                                  capture_every, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}={v!r} is invalid: expected an integer >= {lo}")
    start = time.perf_counter()
    framework = framework or _framework()
    if framework not in ("jax", "torch"):
        raise ValueError(f"framework={framework!r} is invalid: expected 'jax' or 'torch'")
    out = Path(output_dir)
    task = tasks.build_task("reverse", train_size=1024, eval_size=8, max_len=12, seed=seed)
    config = task.model_config("tiny", dropout_rate=0.0)
    tc = _train_config(steps, seed)
    eval_batch = next(task.batches("eval", PROBE_SIZE, shuffle=False))
    probe = {k: np.asarray(v) for k, v in eval_batch.items()}
    trainer = _train_jax if framework == "jax" else _train_torch
    adapter, records = trainer(config, tc, task, probe, out / "internals", capture_every)
    training_file = out / "metrics.jsonl"
    with training.MetricsLogger(out, progress=False) as logger:
        for r in records:
            logger.log(r["step"], {k: v for k, v in r.items() if k != "step"})
    analyzer = TransformerAnalyzer(adapter, label_smoothing=tc.label_smoothing)
    other = None
    second = "torch" if framework == "jax" else "jax"
    try:
        other = TransformerAnalyzer(adapter_from_canonical(adapter.params(), config, (second,)))
    except ImportError:
        other = None
    vocab = {i: task.tokenizer.id_to_token(i) for i in range(config.tgt_vocab_size)}
    result = write_outputs(analyzer, out, probe["src"], probe["tgt_in"],
                           captures=load_captures(out / "internals"),
                           metrics=training.read_metrics(training_file), other=other,
                           vocab=vocab)
    result["framework"] = framework
    result["seconds"] = time.perf_counter() - start
    return result

"""JAX, the plain torch loop and the HF Trainer, started from the same canonical weights on the
same batches with dropout off, log the same first losses.

Losses, not parameters, are compared: Adam's first steps move every weight by about
`lr * sign(g)`, and for weights whose true gradient is 0 (the key biases: softmax ignores a
per-query constant) `g` is rounding noise whose sign differs between frameworks.  Those weights
then differ by whole learning rates, yet, being invisible to the softmax, change no loss.
Clipping is on in all three (optax's `clip / max(norm, clip)`, the torch loop's copy of it, and
the Trainer's `clip_grad_norm_`, whose `clip / (norm + 1e-6)` differs by ~1e-6 relative).
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (the hf extra)")

import hf_bridge  # noqa: E402
import jax_model  # noqa: E402
import spec  # noqa: E402
import tasks  # noqa: E402
import torch_model  # noqa: E402
from hf_bridge import trainer as ht  # noqa: E402
from jax_model import train as jt  # noqa: E402
from torch_model import train as tt  # noqa: E402
from training import data as train_data  # noqa: E402

STEPS = 5


def jax_losses(config: spec.TransformerConfig, train: spec.TrainConfig, task: tasks.Task,
               flat: dict[str, np.ndarray]) -> list[float]:
    """The JAX trainer's step on the plan's batches (what `jax_model.train.train` runs)."""
    state = jt.create_train_state(config, train, params=jax_model.from_canonical(flat, config))
    step_fn = jt.make_train_step(config, train, donate=False)
    rows = train.batch_size
    src_len, tgt_len = train_data.fixed_lengths(task, ("train", "eval"), rows, train.seed,
                                                config.max_len)
    per_epoch = train_data.batches_per_epoch(task, "train", rows, train.seed)
    losses = []
    for step, micro in train_data.step_batches(task, "train", rows, train.grad_accum_steps,
                                               train.seed, per_epoch):
        if step > STEPS:
            break
        fixed = [train_data.pad_batch(b, rows, src_len, tgt_len, config.pad_id) for b in micro]
        batch = {k: v.astype(np.int32) for k, v in train_data.stack(fixed).items()}
        state, metrics = step_fn(state, batch)
        losses.append(float(metrics["loss"]))
    return losses


def test_jax_torch_and_hf_trainer_log_the_same_first_losses(tmp_path):
    task = tasks.build_task("copy", train_size=48, eval_size=8, seed=0, max_len=8)
    config = task.model_config("tiny", dropout_rate=0.0)
    train = spec.TrainConfig(batch_size=4, grad_accum_steps=2, max_steps=STEPS, warmup_steps=4,
                             clip_norm=1.0, label_smoothing=0.1)
    flat = {k: v.copy() for k, v in torch_model.init(config, 3).to_canonical().items()}
    want = jax_losses(config, train, task, flat)
    plain = tt.train(config, train, task, tmp_path / "torch", params=flat, device="cpu",
                     progress=False)
    hf = ht.train(config, train, task, tmp_path / "hf", params=flat, progress=False)
    torch_losses = [h["loss"] for h in plain.history]
    hf_losses = [h["loss"] for h in hf.history]
    assert len(want) == len(torch_losses) == len(hf_losses) == STEPS
    np.testing.assert_allclose(torch_losses, want, rtol=1e-5)
    np.testing.assert_allclose(hf_losses, want, rtol=1e-5)
    assert want[-1] < want[0]  # it trains: the comparison is not of five equal numbers
    # and the schedule, gradient norms and accuracies agree as well
    for h in plain.history:
        assert h["learning_rate"] == pytest.approx(spec.learning_rate(h["step"], train,
                                                                      config.d_model), rel=1e-6)
    np.testing.assert_allclose([h["grad_norm"] for h in hf.history],
                               [h["grad_norm"] for h in plain.history], rtol=1e-5)


def test_the_three_evaluations_agree_and_score_each_language():
    """Each trainer's `evaluate` on the same weights: the same teacher-forced loss, and
    exact match per target language (the overall score is their count-weighted mean)."""
    task = tasks.build_task("numbers", train_size=9, eval_size=6, seed=0, max_number=100,
                            tgt_langs=("de", "fr", "ko"), tokenizer="char")
    config = task.model_config("tiny", dropout_rate=0.0)
    train = spec.TrainConfig(batch_size=4)
    flat = {k: v.copy() for k, v in torch_model.init(config, 3).to_canonical().items()}
    shape = (4, *train_data.fixed_lengths(task, ("train", "eval"), 4, 0, config.max_len))
    hf_model = hf_bridge.TransformerLabForConditionalGeneration.from_canonical(flat, config)
    results = [jt.evaluate(jax_model.from_canonical(flat, config), config, train, task, "eval",
                           shape),
               tt.evaluate(torch_model.init(config, 0).load_canonical(flat), config, train, task,
                           "eval", shape),
               ht.Evaluation(task, "eval", shape, train.seed).run(hf_model)]
    langs = ("de", "fr", "ko")
    for got in results:
        assert {f"exact_match_{x}" for x in langs} <= set(got)
        assert got["exact_match"] == pytest.approx(
            sum(got[f"exact_match_{x}"] for x in langs) / 3)  # two examples per language
        assert got["loss"] == pytest.approx(results[0]["loss"], rel=1e-5)
        assert [got[f"exact_match_{x}"] for x in langs] == [
            results[0][f"exact_match_{x}"] for x in langs]

"""The plain torch loop: loss vs the numpy reference, schedule, Adam by hand with clipping,
accumulation, AMP, gradient checkpointing, and the loop (outputs, interrupted + resumed run
repeats the uninterrupted losses, the NaN guard, bad arguments)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import hand_batch  # noqa: E402

import spec  # noqa: E402
import tasks  # noqa: E402
import torch_model  # noqa: E402
import training  # noqa: E402
from torch_model import train as tt  # noqa: E402
from torch_model.checkpointing import Checkpointer  # noqa: E402
from torch_model.loss import smoothed_loss  # noqa: E402

# Every axis a different size: b 8, s 7, t 5, vocab 64 (tiny preset).
B, S, T = 8, 7, 5


def tiny(**overrides) -> spec.TransformerConfig:
    return spec.TransformerConfig.preset("tiny", **overrides)



def snapshot(model) -> dict[str, np.ndarray]:
    """The canonical weights now (to_canonical returns copies)."""
    return model.to_canonical()


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest difference over every weight but the key biases: their true gradient is 0
    (softmax ignores a per-query constant), so Adam turns rounding noise into +-lr steps."""
    return max(float(np.abs(a[n] - b[n]).max()) for n in a if not n.endswith("key/bias"))


def halves(batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{k: v[:B // 2] for k, v in batch.items()}, {k: v[B // 2:] for k, v in batch.items()}]


def copy_task(**kw) -> tasks.Task:
    return tasks.build_task("copy", train_size=kw.pop("train_size", 48), eval_size=8, seed=0,
                            max_len=8, **kw)


def test_loss_matches_spec_reference():
    config = tiny()
    model = torch_model.init(config, 0)
    batch = hand_batch()
    batch["labels"][0] = 0  # a row of pad labels only: it must not count
    b = tt.to_tensors(batch, torch.device("cpu"))
    logits = model(b["src"], b["tgt_in"])
    for smoothing in (0.0, 0.1, 0.3):
        loss, count, hits = tt.loss_and_counts(logits, b["labels"], 0, smoothing)
        ref = spec.label_smoothed_cross_entropy(logits.detach().numpy(), batch["labels"], 0,
                                                smoothing)
        assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)
        assert int(count) == int((batch["labels"] != 0).sum()) == 21
        want_hits = ((logits.argmax(-1).numpy() == batch["labels"]) & (batch["labels"] != 0)).sum()
        assert int(hits) == int(want_hits)


def test_schedule_is_spec_learning_rate():
    config = tiny()
    model = torch_model.init(config, 0)
    for train in (spec.TrainConfig(warmup_steps=7),
                  spec.TrainConfig(schedule="constant", learning_rate=3e-4, warmup_steps=5),
                  spec.TrainConfig(warmup_steps=3, max_steps=11, cooldown_steps=6)):
        optimizer, scheduler = tt.make_optimizer(model, config, train)
        for step in range(1, 12):  # the lr that update `step` uses
            want = spec.learning_rate(step, train, config.d_model)
            assert scheduler.get_last_lr()[0] == pytest.approx(want, rel=1e-12)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
            optimizer.step()
            scheduler.step()


def test_first_step_is_adam_with_the_schedule_and_clipping():
    """By hand: step 1 of Adam moves each weight by -lr * g / (|g| + eps) after clipping."""
    config = tiny(dropout_rate=0.0)
    train = spec.TrainConfig(warmup_steps=10, clip_norm=0.5)
    state = tt.create_train_state(config, train, device="cpu")
    before = snapshot(state.model)
    batch = hand_batch()
    b = tt.to_tensors(batch, torch.device("cpu"))
    loss = smoothed_loss(state.model(b["src"], b["tgt_in"]), b["labels"], 0, 0.1)
    loss.backward()
    grads = state.model.canonical_grads()
    norm = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values())))
    assert norm > 0.5  # so the clip really acts
    lr = spec.learning_rate(1, train, config.d_model)
    metrics = tt.train_step(state, [batch], config, train)
    after = state.model.to_canonical()
    for name, g in grads.items():
        clipped = g * 0.5 / norm
        want = before[name] - lr * clipped / (np.abs(clipped) + 1e-9)
        # Adam's first step is ~lr * sign(g): where g is rounding noise (key biases, whose true
        # gradient is 0 since softmax ignores them) the sign is noise too, so compare elsewhere.
        real = np.abs(clipped) > 1e-6
        np.testing.assert_allclose(after[name][real], want[real], atol=1e-6, err_msg=name)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
    assert float(metrics["learning_rate"]) == pytest.approx(lr, rel=1e-12)
    assert float(metrics["loss"]) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert state.step == 1


def test_clip_by_global_norm_is_optax_semantics():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]  # global norm 5
    norm = tt.clip_by_global_norm(grads, 1.0)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(grads[0].numpy(), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grads[1].numpy(), [[0.8]], rtol=1e-6)
    small = [torch.tensor([0.3, 0.4])]  # norm 0.5 under the clip: untouched
    assert float(tt.clip_by_global_norm(small, 1.0)) == pytest.approx(0.5)
    np.testing.assert_allclose(small[0].numpy(), [0.3, 0.4])
    off = [torch.tensor([30.0, 40.0])]  # clip_norm 0: no clipping
    assert float(tt.clip_by_global_norm(off, 0.0)) == pytest.approx(50.0)
    np.testing.assert_allclose(off[0].numpy(), [30.0, 40.0])


def test_two_accumulated_halves_equal_one_full_batch():
    config = tiny(dropout_rate=0.0)
    full = spec.TrainConfig(batch_size=B, warmup_steps=3)
    accumulated = full.replace(batch_size=B // 2, grad_accum_steps=2)
    a = tt.create_train_state(config, full, device="cpu")
    b = tt.create_train_state(config, accumulated, device="cpu")
    start = snapshot(a.model)
    batch = hand_batch()
    for _ in range(3):
        ma = tt.train_step(a, [batch], config, full)
        mb = tt.train_step(b, halves(batch), config, accumulated)
        assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)
        assert float(ma["grad_norm"]) == pytest.approx(float(mb["grad_norm"]), rel=1e-5)
        assert float(ma["token_accuracy"]) == float(mb["token_accuracy"])
    # Adam divides by sqrt(v): where a gradient is near zero its rounding differences become
    # visible, so the weights agree to 1e-4 (lr ~0.05) while the gradient norms agree to 1e-5
    assert max_diff(a.model.to_canonical(), b.model.to_canonical()) < 1e-4
    assert max_diff(a.model.to_canonical(), start) > 1e-2  # it did train
    with pytest.raises(ValueError, match="got 1 micro-batches, expected grad_accum_steps=2"):
        tt.train_step(b, [batch], config, accumulated)


def test_gradient_checkpointing_gives_the_same_update():
    config = tiny(dropout_rate=0.0)
    train = spec.TrainConfig(warmup_steps=3)
    plain = tt.create_train_state(config, train, device="cpu")
    recomputed = tt.create_train_state(config, train, device="cpu", gradient_checkpointing=True)
    assert recomputed.model.gradient_checkpointing and recomputed.model.decoder.gradient_checkpointing
    batch = hand_batch()
    for _ in range(2):
        m1 = tt.train_step(plain, [batch], config, train)
        m2 = tt.train_step(recomputed, [batch], config, train)
        assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-6)
    assert max_diff(plain.model.to_canonical(), recomputed.model.to_canonical()) < 1e-4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_float32_masters(precision):
    config = tiny(dropout_rate=0.0)
    train = spec.TrainConfig(mixed_precision=precision, warmup_steps=3)
    state = tt.create_train_state(config, train, device="cpu")
    assert (state.scaler is not None) == (precision == "fp16")
    batch = hand_batch()
    b = tt.to_tensors(batch, torch.device("cpu"))
    with torch.no_grad():
        f32 = float(smoothed_loss(state.model(b["src"], b["tgt_in"]), b["labels"], 0, 0.1))
        with tt.autocast(train, torch.device("cpu")):
            logits = state.model(b["src"], b["tgt_in"])
    assert logits.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    before = snapshot(state.model)
    losses = [float(tt.train_step(state, [batch], config, train)["loss"]) for _ in range(3)]
    assert losses[0] == pytest.approx(f32, rel=2e-2)
    assert all(p.dtype == torch.float32 for p in state.model.parameters())
    assert losses[2] < losses[0]
    assert max_diff(state.model.to_canonical(), before) > 1e-3
    if precision == "fp16":
        # an overflowing scale: the scaled float16 gradients are inf, so GradScaler skips the
        # update, halves the scale, and the schedule does not advance
        state.scaler.update(2.0 ** 40)
        frozen, lr = snapshot(state.model), state.scheduler.get_last_lr()[0]
        metrics = tt.train_step(state, [batch], config, train)
        assert state.scaler.get_scale() == 2.0 ** 39
        assert max_diff(state.model.to_canonical(), frozen) == 0.0
        assert state.scheduler.get_last_lr()[0] == lr == float(metrics["learning_rate"])


def run_loop(tmp_path, name, resume=False, **overrides):
    task = copy_task()
    config = task.model_config("tiny", dropout_rate=0.1)
    train = spec.TrainConfig(batch_size=8, max_steps=6, warmup_steps=4, log_every=2,
                             checkpoint_every=2, keep_checkpoints=2, track_internals_every=3,
                             **overrides)
    return tt.train(config, train, task, tmp_path / name, resume=resume, device="cpu",
                    progress=False), task


def checkpoint_steps(out) -> list[int]:
    return Checkpointer(out / "checkpoints").all_steps()


def test_loop_writes_metrics_checkpoints_internals_and_final_weights(tmp_path):
    result, task = run_loop(tmp_path, "run", eval_every=4)
    out = tmp_path / "run"
    records = training.read_metrics(out / "metrics.jsonl", split=None)
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    assert set(train_records[0]) == {"step", "split", "loss", "grad_norm", "learning_rate",
                                     "token_accuracy"}
    assert [r["loss"] for r in train_records] == [h["loss"] for h in result.history]
    config = result.model.config
    train = spec.TrainConfig(warmup_steps=4)
    for r in train_records:
        assert r["learning_rate"] == pytest.approx(spec.learning_rate(r["step"], train,
                                                                      config.d_model), rel=1e-6)
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [4, 6]
    assert set(result.eval_metrics) == {"loss", "token_accuracy", "exact_match", "bleu", "chrf"}
    assert result.eval_metrics == {k: v for k, v in evals[-1].items()
                                   if k not in ("step", "split")}
    assert result.steps == 6

    # the last two checkpoints, each a canonical folder plus the trainer state
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4", "step_6"]
    flat, saved_config = spec.load_checkpoint(out / "checkpoints" / "step_6")
    assert saved_config == config
    final, _ = spec.load_checkpoint(result.final_checkpoint)
    now = result.model.to_canonical()
    for name in now:
        np.testing.assert_array_equal(final[name], now[name])
        np.testing.assert_array_equal(flat[name], now[name])
    assert (result.final_checkpoint / "tokenizer.json").is_file()
    state = torch.load(out / "checkpoints" / "step_6" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6 and state["micro_batches"] == 6
    assert state["scheduler"]["last_epoch"] == 6

    # internals at steps 0, 3, 6: step 6's are the taps of the final weights on the probe batch
    assert [s for s, _ in training.list_internals(out)] == [0, 3, 6]
    inter, inputs = training.load_internals(training.internals_path(out, 6))
    src_len, tgt_len = task.max_lengths()
    assert inputs["src"].shape == (4, src_len) and inputs["tgt"].shape == (4, tgt_len)
    _, want = torch_model.forward(result.model, inputs["src"], inputs["tgt"])
    assert set(inter) == set(want) == set(spec.intermediate_shapes(config, 4, src_len, tgt_len))
    for name in want:
        np.testing.assert_array_equal(inter[name], want[name])


def test_interrupted_and_resumed_run_repeats_the_uninterrupted_losses(tmp_path, monkeypatch):
    """Dropout on, so the resumed RNG state matters too."""
    whole, _ = run_loop(tmp_path, "whole")
    real_step = tt.train_step

    def dies_at_step_5(state, micro, config, train):
        if state.step == 4:  # the update that would be step 5
            raise KeyboardInterrupt("killed")
        return real_step(state, micro, config, train)

    monkeypatch.setattr(tt, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_loop(tmp_path, "cut")
    monkeypatch.setattr(tt, "train_step", real_step)
    cut = tmp_path / "cut"
    assert checkpoint_steps(cut) == [2, 4] and not (cut / "final").exists()
    resumed, _ = run_loop(tmp_path, "cut", resume=True)
    assert [h["step"] for h in resumed.history] == [5, 6]
    want = {h["step"]: h for h in whole.history}
    for h in resumed.history:
        assert h == want[h["step"]]
    # the metrics file reads like the uninterrupted run's
    assert (training.read_metrics(cut / "metrics.jsonl", split=None)
            == training.read_metrics(tmp_path / "whole" / "metrics.jsonl", split=None))
    a, b = whole.model.to_canonical(), resumed.model.to_canonical()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_resume_refuses_a_different_optimisation(tmp_path):
    task = copy_task()
    config = task.model_config("tiny")
    train = spec.TrainConfig(batch_size=8, max_steps=2, warmup_steps=4)
    tt.train(config, train, task, tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"field\(s\) \['learning_rate'\] differ"):
        tt.train(config, train.replace(learning_rate=2.0), task, tmp_path, resume=True,
                 device="cpu", progress=False)
    with pytest.raises(ValueError, match="model config"):
        tt.train(config.replace(d_ff=32), train, task, tmp_path, resume=True, device="cpu",
                 progress=False)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch):
    real = tt.loss_and_counts
    calls = []

    def nan_from_step_3(logits, labels, pad_id, smoothing):
        calls.append(1)
        loss, count, hits = real(logits, labels, pad_id, smoothing)
        return (loss * float("nan") if len(calls) >= 3 else loss), count, hits

    monkeypatch.setattr(tt, "loss_and_counts", nan_from_step_3)
    task = copy_task()
    config = task.model_config("tiny")
    train = spec.TrainConfig(batch_size=8, max_steps=6, warmup_steps=4, log_every=1,
                             checkpoint_every=2)
    with pytest.raises(training.NonFiniteLossError, match="at step 3") as err:
        tt.train(config, train, task, tmp_path, device="cpu", progress=False)
    assert err.value.step == 3 and err.value.last_checkpoint == 2
    assert "last good checkpoint (step 2)" in str(err.value)
    assert checkpoint_steps(tmp_path) == [2]
    assert not (tmp_path / "final").exists()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]  # the bad step is on record


def test_bad_inputs_raise_value_errors(tmp_path):
    task = copy_task()
    small = task.model_config("tiny").replace(src_vocab_size=8, tgt_vocab_size=8)
    with pytest.raises(ValueError, match="more than the model config's src_vocab_size=8"):
        tt.train(small, spec.TrainConfig(max_steps=1), task, tmp_path, device="cpu",
                 progress=False)
    with pytest.raises(ValueError, match="reduction='none' is unknown"):
        smoothed_loss(torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.int64), 0, 0.1, "none")


@pytest.mark.slow
def test_compiled_step_matches_eager():
    config = tiny(dropout_rate=0.0)
    train = spec.TrainConfig(warmup_steps=3)
    eager = tt.create_train_state(config, train, device="cpu")
    compiled = tt.create_train_state(config, train, device="cpu", compile=True)
    batch = hand_batch()
    for _ in range(3):
        m1 = tt.train_step(eager, [batch], config, train)
        m2 = tt.train_step(compiled, [batch], config, train)
        assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-5)

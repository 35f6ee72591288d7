"""The HF Trainer path: the paper's optimiser and schedule, the same losses as the plain torch
loop (accumulation, clipping, data order, workers), outputs (metrics, internals from the taps,
checkpoints, canonical and HF weights), resume, the NaN guard, mixed precision, gradient
checkpointing, wandb offline, and DDP over two gloo processes with torchrun (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (the hf extra)")

from transformers import AutoModelForSeq2SeqLM  # noqa: E402

import spec  # noqa: E402
import tasks  # noqa: E402
import torch_model  # noqa: E402
import training  # noqa: E402
from hf_bridge import TransformerLabForConditionalGeneration  # noqa: E402
from hf_bridge import trainer as ht  # noqa: E402
from torch_model import train as tt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEP_KEYS = ("loss", "grad_norm", "learning_rate", "token_accuracy")


def copy_task() -> tasks.Task:
    return tasks.build_task("copy", train_size=40, eval_size=8, seed=0, max_len=8)


def initial(config: spec.TransformerConfig) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in torch_model.init(config, 7).to_canonical().items()}


def test_optimizer_and_schedule_come_from_the_train_config(tmp_path):
    task = copy_task()
    config = task.model_config("tiny")
    train = spec.TrainConfig(warmup_steps=5, adam_b1=0.8, adam_b2=0.97, adam_eps=1e-8)
    model = TransformerLabForConditionalGeneration.from_canonical(initial(config), config)
    args = ht.training_arguments(tmp_path, train, 10)
    trainer = ht.TransformerLabTrainer(model=model, args=args, train_config=train)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.97) and group["eps"] == 1e-8 and group["weight_decay"] == 0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    scheduler = trainer.create_scheduler(10)
    for step in range(1, 8):
        assert scheduler.get_last_lr()[0] == pytest.approx(
            spec.learning_rate(step, train, config.d_model), rel=1e-12)
        optimizer.step()
        scheduler.step()
    assert args.max_grad_norm == train.clip_norm and args.gradient_accumulation_steps == 1
    assert args.logging_steps == 1 and not args.logging_nan_inf_filter
    with pytest.raises(ValueError, match="dataloader_num_workers=-1 is invalid"):
        ht.training_arguments(tmp_path, train, 10, dataloader_num_workers=-1)
    with pytest.raises(ValueError, match="batch_size=6 does not split over 4 processes"):
        ht.PlanDataset(task, "train", 6, 0, 5, 5, 8, 8, 0, rank=0, world=4)


def test_trainer_repeats_the_torch_loop_and_writes_the_same_outputs(tmp_path):
    """Same weights, same plan, dropout off: the HF Trainer (2 dataloader workers, gradient
    accumulation, clipping) and the plain loop log the same steps.  JAX is loaded, as in
    `main.py --version all`, so the workers must not be forked from its threads."""
    pytest.importorskip("jax").numpy.zeros(1).block_until_ready()  # JAX's threads running
    task = copy_task()
    config = task.model_config("tiny", dropout_rate=0.0)
    train = spec.TrainConfig(batch_size=4, grad_accum_steps=2, max_steps=5, warmup_steps=3,
                             clip_norm=0.5, checkpoint_every=2, keep_checkpoints=2,
                             track_internals_every=2, eval_every=4)
    flat = initial(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf = ht.train(config, train, task, tmp_path / "hf", params=flat, progress=False,
                      dataloader_num_workers=2)
    assert not [w for w in caught if "os.fork()" in str(w.message)]
    plain = tt.train(config, train, task, tmp_path / "torch", params=flat, device="cpu",
                     progress=False)
    assert [h["step"] for h in hf.history] == [1, 2, 3, 4, 5] and hf.steps == 5
    for a, b in zip(hf.history, plain.history):
        for key in STEP_KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert any(h["grad_norm"] > 0.5 for h in hf.history)  # the clip acted
    out = tmp_path / "hf"
    records = training.read_metrics(out / "metrics.jsonl", split=None)
    assert [(r["step"], r["split"]) for r in records] == [
        (1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "eval"), (5, "train"),
        (5, "eval")]
    assert set(records[0]) == {"step", "split", *STEP_KEYS}
    assert set(hf.eval_metrics) == {"loss", "token_accuracy", "exact_match", "bleu", "chrf"}
    for key, value in plain.eval_metrics.items():  # teacher forcing and generate() agree
        assert hf.eval_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    # checkpoints: the last two, the final one forced at step 5
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4",
                                                                       "checkpoint-5"]
    final, final_config = spec.load_checkpoint(hf.final_checkpoint)
    assert final_config == config and (hf.final_checkpoint / "tokenizer.json").is_file()
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out / "hf_model").to_canonical()
    for name, value in hf.model.to_canonical().items():
        np.testing.assert_array_equal(final[name], value)
        np.testing.assert_array_equal(reloaded[name], value)
        if not name.endswith("key/bias"):  # Adam amplifies their rounding noise, see agreement
            np.testing.assert_allclose(value, plain.model.to_canonical()[name], atol=1e-4)

    # internals from the HF model's taps = the torch mirror's forward on the same weights
    assert [s for s, _ in training.list_internals(out)] == [0, 2, 4]
    inter, inputs = training.load_internals(training.internals_path(out, 0))
    start = torch_model.init(config).load_canonical(flat)
    _, want = torch_model.forward(start, inputs["src"], inputs["tgt"])
    assert set(inter) == set(want)
    for name in want:
        np.testing.assert_allclose(inter[name], want[name], rtol=1e-6, atol=1e-6)
    plain_inter, _ = training.load_internals(training.internals_path(tmp_path / "torch", 4))
    inter4, _ = training.load_internals(training.internals_path(out, 4))
    np.testing.assert_allclose(inter4["logits"], plain_inter["logits"], atol=1e-3)


def run(tmp_path, name, **overrides):
    task = copy_task()
    config = task.model_config("tiny", dropout_rate=0.1)
    train = spec.TrainConfig(batch_size=8, max_steps=6, warmup_steps=4, checkpoint_every=2,
                             keep_checkpoints=2)
    resume = overrides.pop("resume", False)
    return ht.train(config, train.replace(**overrides), task, tmp_path / name, resume=resume,
                    params=initial(config), progress=False)


def test_interrupted_and_resumed_run_repeats_the_uninterrupted_losses(tmp_path, monkeypatch):
    """Dropout on: the Trainer's checkpoint restores the RNG and skips the trained batches."""
    whole = run(tmp_path, "whole")
    real = ht.TransformerLabTrainer.training_step

    def dies_at_step_5(self, *args, **kwargs):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ht.TransformerLabTrainer, "training_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut")
    monkeypatch.setattr(ht.TransformerLabTrainer, "training_step", real)
    cut = tmp_path / "cut"
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["checkpoint-2",
                                                                       "checkpoint-4"]
    resumed = run(tmp_path, "cut", resume=True)
    assert [h["step"] for h in resumed.history] == [5, 6]
    want = {h["step"]: h for h in whole.history}
    for h in resumed.history:
        for key in STEP_KEYS:
            assert h[key] == pytest.approx(want[h["step"]][key], rel=1e-6), (h["step"], key)
    assert ([r["step"] for r in training.read_metrics(cut / "metrics.jsonl")]
            == [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match=r"field\(s\) \['warmup_steps'\] differ"):
        run(tmp_path, "cut", resume=True, warmup_steps=5)


def test_non_finite_loss_stops_naming_the_step(tmp_path, monkeypatch):
    real = ht.TransformerLabTrainer.compute_loss

    def nan_from_step_3(self, model, inputs, *args, **kwargs):
        loss = real(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step >= 2 else loss

    monkeypatch.setattr(ht.TransformerLabTrainer, "compute_loss", nan_from_step_3)
    with pytest.raises(training.NonFiniteLossError, match="at step 3") as err:
        run(tmp_path, "nan")
    assert err.value.last_checkpoint == 2
    out = tmp_path / "nan"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert [r["step"] for r in training.read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert not (out / "final").exists()


def test_bf16_and_gradient_checkpointing_follow_the_torch_loop(tmp_path):
    task = copy_task()
    config = task.model_config("tiny", dropout_rate=0.0)
    train = spec.TrainConfig(batch_size=8, max_steps=3, warmup_steps=3, mixed_precision="bf16")
    flat = initial(config)
    hf = ht.train(config, train, task, tmp_path / "hf", params=flat, progress=False,
                  gradient_checkpointing=True)
    assert hf.model.transformer.gradient_checkpointing
    plain = tt.train(config, train, task, tmp_path / "t", params=flat, device="cpu",
                     progress=False)
    f32 = tt.train(config, train.replace(mixed_precision="none"), task, tmp_path / "f",
                   params=flat, device="cpu", progress=False)
    hf_losses = [h["loss"] for h in hf.history]
    assert hf_losses[0] == pytest.approx(plain.history[0]["loss"], rel=1e-6)  # same bf16 forward
    np.testing.assert_allclose(hf_losses, [h["loss"] for h in plain.history], rtol=2e-3)
    assert hf_losses != [h["loss"] for h in f32.history]  # it really ran in bfloat16
    np.testing.assert_allclose(hf_losses, [h["loss"] for h in f32.history], rtol=2e-2)


def test_wandb_logs_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    task = copy_task()
    config = task.model_config("tiny")
    result = ht.train(config, spec.TrainConfig(batch_size=8, max_steps=2, warmup_steps=2), task,
                      tmp_path, wandb=True, wandb_project="lab-test", progress=False)
    wandb.teardown()  # the wandb service writes the run file out when it stops
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    # the run file holds each logged value as JSON text beside its key
    data = runs[0].read_bytes()
    for key in (b"train/loss", b"train/token_accuracy", b"eval/exact_match", b"eval/bleu"):
        assert key in data, key
    for h in result.history:
        assert json.dumps(h["loss"]).encode() in data
    assert json.dumps(result.eval_metrics["loss"]).encode() in data


DDP = textwrap.dedent("""
    import json, os, sys
    import spec, tasks, torch_model
    from hf_bridge import trainer as ht

    task = tasks.build_task("copy", train_size=40, eval_size=8, seed=0, max_len=8)
    config = task.model_config("tiny", dropout_rate=0.0)
    train = spec.TrainConfig(batch_size=8, grad_accum_steps=2, max_steps=3, warmup_steps=3)
    flat = torch_model.init(config, 7).to_canonical()
    result = ht.train(config, train, task, sys.argv[1], params=flat, progress=False)
    print("RESULT", json.dumps({"rank": int(os.environ.get("RANK", 0)),
                                "world": int(os.environ.get("WORLD_SIZE", 1)),
                                "history": result.history}))
""")


@pytest.mark.slow
def test_ddp_on_two_gloo_processes_matches_one_process(tmp_path):
    """torchrun --nproc_per_node 2: each rank takes half of every batch (copy sequences of
    different lengths, so the halves hold different token counts); the logged losses equal
    those of one process on the whole batch."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    results = {}
    for world in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
               str(script), str(tmp_path / f"out{world}")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [json.loads(x.split(" ", 1)[1]) for x in done.stdout.splitlines()
                 if x.startswith("RESULT ")]
        assert sorted((r["rank"], r["world"]) for r in lines) == [(r, world) for r in range(world)]
        results[world] = lines
    one = results[1][0]["history"]
    for rank in results[2]:
        assert [h["step"] for h in rank["history"]] == [1, 2, 3]
        for a, b in zip(rank["history"], one):
            for key in STEP_KEYS:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (rank["rank"], key)
    assert (tmp_path / "out2" / "final" / "model.safetensors").is_file()

"""training/: the framework-free pieces every trainer shares (numpy only, no jax or torch)."""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest

import spec
import tasks
import training
from training import data


def test_training_imports_no_framework():
    import subprocess

    code = ("import sys, training, training.data, training.evaluation; "
            "print(sorted(m for m in ('jax', 'torch', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- metrics logger ----------------------------------------------------------------------------
def test_logger_writes_one_json_line_per_step_and_resume_truncates(tmp_path):
    with training.MetricsLogger(tmp_path, total_steps=5, progress=False) as log:
        for step in range(1, 6):
            log.log(step, {"loss": 1.0 / step, "learning_rate": np.float32(0.5)})
        log.log(5, {"exact_match": 0.25}, split="eval")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert json.loads(lines[0]) == {"step": 1, "split": "train", "loss": 1.0,
                                    "learning_rate": 0.5}
    assert [r["step"] for r in training.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3,
                                                                                      4, 5]
    assert training.read_metrics(tmp_path / "metrics.jsonl", "eval") == [
        {"step": 5, "split": "eval", "exact_match": 0.25}]
    # A run resumed from step 3 drops what the killed run logged after it, then appends.
    with training.MetricsLogger(tmp_path, resume_step=3, progress=False) as log:
        log.log(4, {"loss": float("nan")})
    records = training.read_metrics(tmp_path / "metrics.jsonl", None)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert math.isnan(records[-1]["loss"])
    # A fresh (not resumed) run starts an empty file.
    training.MetricsLogger(tmp_path, progress=False).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_logger_tensorboard_event_file_holds_the_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import Event

    with training.MetricsLogger(tmp_path, tensorboard=True, progress=False) as log:
        for step in (1, 2, 3):
            log.log(step, {"loss": 2.0 * step})
    (path,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    raw, scalars = path.read_bytes(), []
    while raw:  # TFRecord: u64 length, u32 crc, payload, u32 crc
        n = int.from_bytes(raw[:8], "little")
        event = Event.FromString(raw[12:12 + n])
        raw = raw[16 + n:]
        scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    assert scalars == [(1, "train/loss", 2.0), (2, "train/loss", 4.0), (3, "train/loss", 6.0)]


def test_logger_wandb_runs_offline_or_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install wandb"):
            training.MetricsLogger(tmp_path, wandb=True, progress=False)
        return
    with training.MetricsLogger(tmp_path, wandb=True, wandb_project="t", progress=False) as log:
        log.log(1, {"loss": 1.0})
    assert any((tmp_path / "wandb").glob("offline-run-*"))


def test_progress_bar_counts_steps(tmp_path, capsys):
    with training.MetricsLogger(tmp_path, total_steps=4, progress=True) as log:
        log.advance(3, {"loss": 0.123456})
        log.write("evaluated")
    err = capsys.readouterr().err
    assert "3/4" in err and "loss=0.1235" in err


# -- non-finite guard --------------------------------------------------------------------------
def test_guard_names_the_first_bad_step_and_the_kept_checkpoint():
    training.check_finite([(1, 2.0), (2, 1.5)])
    with pytest.raises(training.NonFiniteLossError) as info:
        training.check_finite([(7, 1.0), (8, float("inf")), (9, float("nan"))], last_checkpoint=6)
    err = info.value
    assert (err.step, err.value, err.last_checkpoint) == (8, float("inf"), 6)
    assert "at step 8" in str(err) and "step 6" in str(err)
    assert "no checkpoint" in training.non_finite_message(3, float("nan"))
    with pytest.raises(training.NonFiniteLossError, match="the gradient norm is nan at step 2"):
        training.check_finite([(1, 1.0), (2, float("nan"))], what="gradient norm")


# -- internals files ---------------------------------------------------------------------------
def test_internals_round_trip_with_canonical_keys(tmp_path):
    inter = {"encoder/layer_0/self_attn/weights": np.full((2, 4, 3, 3), 0.25, np.float64),
             "logits": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}
    src = np.array([[5, 6, 2]], np.int32)
    path = training.save_internals(tmp_path, 40, inter, {"src": src})
    assert path.name == "internals_step_40.npz"
    training.save_internals(tmp_path, 5, {"logits": np.zeros(1)})
    got, inputs = training.load_internals(path)
    assert set(got) == set(inter)
    assert got["encoder/layer_0/self_attn/weights"].dtype == np.float32  # floats stored f32
    np.testing.assert_array_equal(got["logits"], inter["logits"])
    np.testing.assert_array_equal(inputs["src"], src)
    assert [s for s, _ in training.list_internals(tmp_path)] == [5, 40]  # numeric order
    assert not list(tmp_path.glob(".internals*"))  # no temporary file left behind


def test_internals_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="step must be"):
        training.save_internals(tmp_path, -1, {"logits": np.zeros(1)})
    with pytest.raises(ValueError, match="empty"):
        training.save_internals(tmp_path, 1, {})
    with pytest.raises(ValueError, match="reserved prefix"):
        training.save_internals(tmp_path, 1, {"inputs/src": np.zeros(1)})


# -- the step plan -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def copy_task():
    return tasks.build_task("copy", train_size=20, eval_size=6, seed=3, max_len=8)


def test_step_plan_resumes_exactly_across_epochs(copy_task):
    per_epoch = data.batches_per_epoch(copy_task, "train", 4)
    assert per_epoch == 5
    assert data.total_steps(0, 3, per_epoch, 2) == 7  # 15 micro-batches, pairs of 2
    assert data.total_steps(11, 3, per_epoch, 2) == 11
    full = data.step_batches(copy_task, "train", 4, 2, 0, per_epoch)
    steps = [next(full) for _ in range(8)]  # 16 micro-batches: runs into epoch 3
    assert [s for s, _ in steps] == list(range(1, 9))
    epoch1 = list(copy_task.batches("train", 4, 1, 0, 0))
    np.testing.assert_array_equal(steps[2][1][1]["src"], epoch1[0]["src"])  # batch 5 = e1 b0
    for start in (1, 2, 5):
        resumed = data.step_batches(copy_task, "train", 4, 2, 0, per_epoch, start)
        for want in steps[start:start + 3]:
            got = next(resumed)
            assert got[0] == want[0]
            for a, b in zip(got[1], want[1]):
                for key in data.BATCH_KEYS:
                    np.testing.assert_array_equal(a[key], b[key])


def test_pad_batch_and_stack_fix_the_shapes(copy_task):
    batch = next(copy_task.batches("eval", 4, 0, 0, 0))
    fixed = data.pad_batch(batch, 6, 9, 10, 0)
    assert fixed["src"].shape == (6, 9) and fixed["labels"].shape == (6, 10)
    np.testing.assert_array_equal(fixed["src"][:4, :batch["src"].shape[1]], batch["src"])
    assert (fixed["labels"][4:] == 0).all() and (fixed["src"][:, batch["src"].shape[1]:] == 0).all()
    assert data.stack([fixed, fixed])["tgt_in"].shape == (2, 6, 10)
    with pytest.raises(ValueError, match=r"batch\['src'\] has shape"):
        data.pad_batch(batch, 2, 9, 10, 0)
    assert data.fixed_lengths(copy_task, ("train", "eval"), 4, 0, 64) == copy_task.max_lengths()
    with pytest.raises(ValueError, match="max_len=3"):
        data.fixed_lengths(copy_task, ("train",), 4, 0, 3)


def test_run_plan_is_what_every_trainer_derives(copy_task):
    config = copy_task.model_config("tiny")
    train = spec.TrainConfig(batch_size=5, grad_accum_steps=2, epochs=3)
    n = len(copy_task.pairs("train"))
    plan = data.run_plan(copy_task, config, train)
    assert plan == (5, *copy_task.max_lengths(), -(-n // 5), 3 * -(-n // 5) // 2)
    assert data.run_plan(copy_task, config, train.replace(max_steps=7)).total == 7
    with pytest.raises(ValueError, match="max_len=3"):
        data.run_plan(copy_task, config.replace(max_len=3), train)


# -- evaluation glue ---------------------------------------------------------------------------
def test_eval_accumulator_exact_means_and_string_metrics(copy_task):
    acc = training.EvalAccumulator(copy_task)
    batch = next(copy_task.batches("eval", 3, 0, 0, 0))
    right = batch["labels"]
    wrong = right.copy()
    wrong[0, 0] = right[0, 1] if right[0, 1] != right[0, 0] else 5  # one row differs
    acc.add(6.0, 4, 3, hypotheses=right, labels=batch["labels"])
    acc.add(2.0, 12, 3, hypotheses=wrong, labels=batch["labels"])
    out = acc.result()
    assert out["loss"] == pytest.approx(8.0 / 16)  # token-weighted, not a mean of means
    assert out["token_accuracy"] == pytest.approx(6 / 16)
    assert out["exact_match"] == pytest.approx(5 / 6)
    assert 0 < out["bleu"] < 100 and set(out) == {"loss", "token_accuracy", "exact_match",
                                                   "bleu", "chrf"}
    assert copy_task.decode_batch(right) == copy_task.references("eval")[:3]
    with pytest.raises(ValueError, match="no non-pad label"):
        training.EvalAccumulator(copy_task).result()


def test_eval_accumulator_scores_each_group_on_its_own(copy_task):
    batch = next(copy_task.batches("eval", 4, 0, 0, 0))
    wrong = batch["labels"].copy()
    wrong[2, 0] = wrong[2, 1] if wrong[2, 1] != wrong[2, 0] else 5  # row 2 (group "fr") wrong
    acc = training.EvalAccumulator(copy_task, groups=["de", "fr", "fr", "ko"])
    acc.add(1.0, 4, 4, hypotheses=wrong, labels=batch["labels"])
    out = acc.result()
    assert out["exact_match"] == pytest.approx(3 / 4)
    assert (out["exact_match_de"], out["exact_match_fr"], out["exact_match_ko"]) == (1, 0.5, 1)
    short = training.EvalAccumulator(copy_task, groups=["de", "fr"])
    short.add(1.0, 4, 4, hypotheses=wrong, labels=batch["labels"])
    with pytest.raises(ValueError, match="groups label 2 examples but 4 were decoded"):
        short.result()
    assert training.eval_groups(copy_task, "eval") is None


# -- the loop (training.loop), on a numpy backend ---------------------------------------------
class NumpyBackend:
    """A real (if tiny) learner for `training.loop.run_loop`, in numpy: a table of weights
    `w [src_vocab, tgt_vocab]` fitted by SGD to predict each label from the source token
    bag, with "dropout" noise drawn from a generator whose state is checkpointed.  Not a mock:
    its losses depend on every batch, every update and the restored state, so a resume that
    skips, repeats or mis-restores anything changes the logged numbers."""

    checks_grad_norm = True

    def __init__(self, directory, config, seed=0):
        self.directory = directory
        self.config = config
        self.w = np.zeros((config.src_vocab_size, config.tgt_vocab_size))
        self.rng = np.random.default_rng(seed)
        self.steps_run = []

    def _loss_grad(self, batch):
        src, labels = batch["src"], batch["labels"]
        bag = np.stack([np.bincount(r, minlength=len(self.w)) for r in src]) / src.shape[1]
        logits = bag @ self.w                                                 # [b, v]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        target = np.stack([np.bincount(r[r != 0], minlength=self.w.shape[1]) for r in labels])
        target = target / np.maximum(target.sum(-1, keepdims=True), 1)        # [b, v]
        loss = -(target * np.log(probs)).sum(-1).mean()
        return loss, bag.T @ (probs - target) / len(src)

    def step(self, micro_batches):
        losses, grads = zip(*(self._loss_grad(b) for b in micro_batches))
        grad = np.mean(grads, 0) * (self.rng.random(self.w.shape) > 0.1)   # "dropout"
        self.w -= 0.5 * grad
        self.steps_run.append(len(self.steps_run))
        return {"loss": np.mean(losses), "grad_norm": np.linalg.norm(grad)}

    def fetch(self, metrics):
        return [{k: float(v) for k, v in m.items()} for m in metrics]

    def evaluate(self):
        return {"loss": float(np.abs(self.w).sum())}

    def capture(self, probe):
        return {"logits": self.w[probe["src"]].sum(1)}

    def save(self, step, meta):
        folder = self.directory / f"step_{step}"
        tmp = self.directory / f".tmp_{step}"
        tmp.mkdir(parents=True)
        np.save(tmp / "weights.npy", self.w)
        (tmp / "meta.json").write_text(json.dumps({**meta, "rng": self.rng.bit_generator.state}))
        tmp.rename(folder)

    def checkpoints(self):
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name[5:]) for p in self.directory.glob("step_*"))

    def read_meta(self, step):
        return json.loads((self.directory / f"step_{step}" / "meta.json").read_text())

    def restore(self, step):
        self.w = np.load(self.directory / f"step_{step}" / "weights.npy")
        self.rng.bit_generator.state = self.read_meta(step)["rng"]

    def delete(self, step):
        import shutil

        shutil.rmtree(self.directory / f"step_{step}")

    def finish(self):
        pass


LOOP_TRAIN = spec.TrainConfig(batch_size=4, max_steps=8, warmup_steps=2, log_every=3,
                              checkpoint_every=2, keep_checkpoints=2, eval_every=4,
                              track_internals_every=4)


def loop_run(folder, task, train=LOOP_TRAIN, resume=False, die_at=None):
    """One `run_loop` into `folder`; `die_at=N` raises KeyboardInterrupt in this process's
    N-th update (an interrupted run)."""
    from training import loop

    config = task.model_config("tiny")
    backend = NumpyBackend(folder / "checkpoints", config, train.seed)
    if die_at is not None:
        real = backend.step

        def step(micro):
            if len(backend.steps_run) + 1 == die_at:
                raise KeyboardInterrupt("killed")
            return real(micro)

        backend.step = step
    plan = data.run_plan(task, config, train)
    probe = training.probe_batch(task, "eval", 2, plan.src_len, plan.tgt_len, 0, train.seed)
    return loop.run_loop(backend, plan, task=task, model_config=config, train_config=train,
                         output_dir=folder, probe=probe, resume=resume, progress=False)


def test_loop_logs_every_step_checkpoints_keep_last_k_and_captures(tmp_path, copy_task):
    result = loop_run(tmp_path / "run", copy_task)
    assert result.start == 0 and result.steps == 8
    train_lines = training.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in train_lines] == list(range(1, 9))
    assert [r["loss"] for r in train_lines] == [h["loss"] for h in result.history]
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]  # it learns
    evals = training.read_metrics(tmp_path / "run" / "metrics.jsonl", "eval")
    assert [r["step"] for r in evals] == [4, 8]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == \
        ["step_6", "step_8"]
    assert [s for s, _ in training.list_internals(tmp_path / "run")] == [0, 4, 8]


def test_loop_resume_repeats_the_uninterrupted_losses(tmp_path, copy_task, capsys):
    whole = loop_run(tmp_path / "whole", copy_task)
    with pytest.raises(KeyboardInterrupt):
        loop_run(tmp_path / "cut", copy_task, die_at=6)
    cut = tmp_path / "cut"
    # every line logged before the interruption is on disk, at least up to the checkpoint
    logged = [r["step"] for r in training.read_metrics(cut / "metrics.jsonl")]
    assert logged == list(range(1, len(logged) + 1)) and logged[-1] >= 4
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_2", "step_4"]
    resumed = loop_run(cut, copy_task, resume=True)
    assert "resume: continuing from the checkpoint of step 4" in capsys.readouterr().out
    assert resumed.start == 4 and [h["step"] for h in resumed.history] == [5, 6, 7, 8]
    assert resumed.history == whole.history[4:]  # exactly: same batches, noise, updates
    assert (training.read_metrics(cut / "metrics.jsonl", None)
            == training.read_metrics(tmp_path / "whole" / "metrics.jsonl", None))
    # resuming a finished run trains nothing and logs nothing more
    again = loop_run(cut, copy_task, resume=True)
    assert again.history == [] and again.steps == 8
    assert again.eval_metrics == whole.eval_metrics
    assert (training.read_metrics(cut / "metrics.jsonl", None)
            == training.read_metrics(tmp_path / "whole" / "metrics.jsonl", None))


def test_loop_falls_back_past_a_corrupt_checkpoint_and_says_so(tmp_path, copy_task, capsys):
    whole = loop_run(tmp_path / "whole", copy_task)
    with pytest.raises(KeyboardInterrupt):
        loop_run(tmp_path / "cut", copy_task, die_at=6)
    weights = tmp_path / "cut" / "checkpoints" / "step_4" / "weights.npy"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    capsys.readouterr()
    resumed = loop_run(tmp_path / "cut", copy_task, resume=True)
    out = capsys.readouterr().out
    assert re.search(r"checkpoint of step 4 in .* is unreadable \(ValueError: .*\); falling "
                     r"back to step 2", out), out
    assert "continuing from the checkpoint of step 2" in out
    assert resumed.start == 2 and resumed.history == whole.history[2:]
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == \
        ["step_6", "step_8"]


def test_loop_resume_with_nothing_to_resume_starts_fresh_and_says_so(tmp_path, copy_task,
                                                                      capsys):
    whole = loop_run(tmp_path / "whole", copy_task)
    fresh = loop_run(tmp_path / "empty", copy_task, resume=True)
    assert re.search(r"resume: nothing to resume in .*empty.checkpoints \(no checkpoint\): "
                     r"training from scratch", capsys.readouterr().out)
    assert fresh.start == 0 and fresh.history == whole.history


def test_loop_resume_refuses_other_settings_naming_each_field(tmp_path, copy_task):
    loop_run(tmp_path / "run", copy_task, train=LOOP_TRAIN.replace(max_steps=4))
    with pytest.raises(training.ResumeError) as err:
        loop_run(tmp_path / "run", copy_task, train=LOOP_TRAIN.replace(learning_rate=0.5),
                 resume=True)
    message = str(err.value)
    assert "\n" not in message
    assert "train config field(s) ['learning_rate'] differ from the checkpoint's: " \
           "learning_rate 1.0 -> 0.5" in message
    other = tasks.build_task("copy", train_size=30, eval_size=6, seed=3, max_len=8)
    with pytest.raises(training.ResumeError, match=r"data field\(s\) \['train_size'\] differ "
                                                   r".*train_size 20 -> 30"):
        loop_run(tmp_path / "run", other, resume=True)
    # a longer run (max_steps) and other bookkeeping are allowed
    longer = loop_run(tmp_path / "run", copy_task, train=LOOP_TRAIN.replace(keep_checkpoints=3),
                      resume=True)
    assert longer.start == 4 and [h["step"] for h in longer.history] == [5, 6, 7, 8]


def test_fresh_run_deletes_an_earlier_runs_checkpoints(tmp_path, copy_task, capsys):
    loop_run(tmp_path / "run", copy_task)
    capsys.readouterr()
    loop_run(tmp_path / "run", copy_task, train=LOOP_TRAIN.replace(max_steps=2))
    assert "deleting the checkpoints of an earlier run there (steps [6, 8])" in \
        capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_2"]


def test_eval_accumulator_scores_languages_and_magnitudes_side_by_side(copy_task):
    batch = next(copy_task.batches("eval", 5, 0, 0, 0))
    wrong = batch["labels"].copy()
    for row in (1, 4):  # rows 1 ("fr", 10digit) and 4 ("de", 2digit) wrong
        wrong[row, 0] = wrong[row, 1] if wrong[row, 1] != wrong[row, 0] else 5
    groups = [("de", "2digit"), ("fr", "10digit"), ("fr", "2digit"), ("de", "1digit"),
              ("de", "2digit")]
    acc = training.EvalAccumulator(copy_task, groups=groups)
    acc.add(1.0, 5, 5, hypotheses=wrong, labels=batch["labels"])
    out = acc.result()
    assert out["exact_match"] == pytest.approx(3 / 5)
    scores = {k: v for k, v in out.items() if k.startswith("exact_match_")}
    assert list(scores) == ["exact_match_de", "exact_match_fr", "exact_match_1digit",
                            "exact_match_2digit", "exact_match_10digit"]  # natural order
    assert list(scores.values()) == pytest.approx([2 / 3, 1 / 2, 1, 2 / 3, 0])


def test_eval_groups_of_the_numbers_task_are_language_and_digit_count():
    one = tasks.build_task("numbers", train_size=20, eval_size=10, seed=1, max_number=1000)
    groups = training.eval_groups(one, "eval")
    assert groups == [(f"{len(str(n))}digit",) for n in one.info["eval_numbers"].tolist()]
    multi = tasks.build_task("numbers", train_size=20, eval_size=10, seed=1, max_number=1000,
                             tgt_langs=("de", "fr"))
    assert training.eval_groups(multi, "eval") == [
        (lang, f"{len(str(n))}digit") for lang, n in
        zip(["de", "fr"] * 5, multi.info["eval_numbers"].tolist())]

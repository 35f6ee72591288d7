"""The JAX trainer: loss vs the numpy reference, schedule, accumulation, clipping, bf16,
determinism, data parallelism on 4 virtual CPU devices, and the loop (checkpoints, kill -9 and
resume, the NaN guard, internals, evaluation, the final canonical export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402
from helpers import hand_batch  # noqa: E402

import spec  # noqa: E402
from jax_model import train as jt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Every axis a different size: b 8, s 7, t 5, vocab 64 (tiny preset).
B, S, T = 8, 7, 5


def tiny(**overrides) -> spec.TransformerConfig:
    return spec.TransformerConfig.preset("tiny", **overrides)



def micro(batch: dict[str, np.ndarray], parts: int) -> dict[str, np.ndarray]:
    """[b, len] -> [parts, b/parts, len]: consecutive rows form each micro-batch."""
    return {k: v.reshape(parts, v.shape[0] // parts, *v.shape[1:]) for k, v in batch.items()}


def max_abs_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


FULL = spec.TrainConfig(batch_size=B, warmup_steps=10, clip_norm=0.5)
HALVES = FULL.replace(batch_size=B // 2, grad_accum_steps=2)


@pytest.fixture(scope="module")
def steps():
    """Compiled once per module (compiling is the slow part on a shared CPU)."""
    config = tiny(dropout_rate=0.0)
    return {"config": config,
            "full": jt.make_train_step(config, FULL, donate=False),
            "halves": jt.make_train_step(config, HALVES, donate=False),
            "state": jt.create_train_state(config, FULL)}


def test_loss_matches_spec_reference():
    config = tiny()
    params = jt.create_train_state(config, spec.TrainConfig()).params
    batch = hand_batch()
    batch["labels"][0] = 0  # a row of pad labels only: it must not count
    for smoothing in (0.0, 0.1, 0.3):
        loss, aux = jt.loss_fn(params, batch, config, smoothing)
        logits, _ = jt.apply_model(params, config, batch["src"], batch["tgt_in"])
        ref = spec.label_smoothed_cross_entropy(np.asarray(logits), batch["labels"], 0, smoothing)
        assert abs(float(loss) - ref) < 1e-5 * max(1.0, ref)
        assert int(aux["tokens"]) == int((batch["labels"] != 0).sum()) == 21
        # and optax's own formulation: smooth_labels + softmax_cross_entropy, pads weighted 0
        targets = optax.smooth_labels(jax.nn.one_hot(batch["labels"], 64), smoothing)
        keep = batch["labels"] != 0
        optax_mean = (optax.softmax_cross_entropy(logits, targets) * keep).sum() / keep.sum()
        assert float(loss) == pytest.approx(float(optax_mean), rel=1e-6)


def test_schedule_is_spec_learning_rate():
    config = tiny()
    for train in (spec.TrainConfig(warmup_steps=7),
                  spec.TrainConfig(schedule="constant", learning_rate=3e-4, warmup_steps=5),
                  spec.TrainConfig(warmup_steps=3, max_steps=11, cooldown_steps=6)):
        schedule = jt.make_schedule(config, train)
        for count in (0, 1, 4, 6, 7, 50):  # optax counts updates from 0, spec steps from 1
            want = spec.learning_rate(count + 1, train, config.d_model)
            assert float(schedule(jnp.asarray(count))) == pytest.approx(want, rel=1e-6)


def test_first_step_is_adam_with_the_schedule_and_clipping(steps):
    """By hand: step 1 of Adam moves each weight by -lr * g / (|g| + eps) after clipping."""
    config, train, state = steps["config"], FULL, steps["state"]
    batch = hand_batch()
    grads = jax.grad(lambda p: jt.loss_fn(p, batch, config, 0.1)[0])(state.params)
    norm = float(optax.tree.norm(grads))
    assert norm > 0.5  # so the clip really acts
    lr = spec.learning_rate(1, train, config.d_model)
    clipped = jax.tree.map(lambda g: g * 0.5 / norm, grads)
    m = jax.tree.map(lambda g: (1 - 0.9) * g / (1 - 0.9), clipped)
    v = jax.tree.map(lambda g: (1 - 0.98) * g * g / (1 - 0.98), clipped)
    want = jax.tree.map(lambda p, m_, v_: p - lr * m_ / (jnp.sqrt(v_) + 1e-9), state.params, m, v)
    new, metrics = steps["full"](state, micro(batch, 1))
    # Adam's first step is ~lr * sign(g): where g is rounding noise (key biases, whose true
    # gradient is 0 since softmax ignores them) the sign is noise too, so compare elsewhere.
    for got, ref, g in zip(jax.tree.leaves(new.params), jax.tree.leaves(want),
                           jax.tree.leaves(clipped)):
        real = np.abs(np.asarray(g)) > 1e-6
        np.testing.assert_allclose(np.asarray(got)[real], np.asarray(ref)[real], atol=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
    assert float(metrics["learning_rate"]) == pytest.approx(lr, rel=1e-6)
    assert int(new.step) == 1


def test_two_accumulated_halves_equal_one_full_batch(steps):
    """Each half holds the same number of non-pad labels, so the mean of the two half-batch
    means is the full-batch mean: the accumulated step must be the full step."""
    config, state, batch = steps["config"], steps["state"], hand_batch()
    grads = jax.grad(lambda p: jt.loss_fn(p, batch, config, 0.1)[0])(state.params)
    a, b = state, state
    for i in range(3):
        a, ma = steps["full"](a, micro(batch, 1))
        b, mb = steps["halves"](b, micro(batch, 2))
        assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)
        assert float(ma["grad_norm"]) == pytest.approx(float(mb["grad_norm"]), rel=1e-5)
        if i == 0:  # Adam moves each weight by ~lr * sign(g): compare where g is not noise
            for got, want, g in zip(jax.tree.leaves(b.params), jax.tree.leaves(a.params),
                                    jax.tree.leaves(grads)):
                real = np.abs(np.asarray(g)) > 1e-6
                # 1e-6 is 0.02% of this step's lr (5.6e-3): summation-order rounding only
                np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real],
                                           atol=1e-6)
    assert max_abs_diff(a.params, state.params) > 1e-3  # it did train


def test_dropout_is_deterministic_and_depends_on_the_key():
    config = tiny(dropout_rate=0.3)
    batch = micro(hand_batch(), 1)
    state = jt.create_train_state(config, spec.TrainConfig())

    def run(step):
        s, losses = state, []
        for _ in range(2):
            s, m = step(s, batch)
            losses.append(float(m["loss"]))
        return losses

    rbg = jt.make_train_step(config, spec.TrainConfig(seed=0), donate=False)
    other = jt.make_train_step(config, spec.TrainConfig(seed=1), rng_impl="threefry2x32",
                               donate=False)
    first = run(rbg)
    assert run(rbg) == first  # same seed, same masks, same losses
    assert run(other)[0] != first[0]  # another key, other masks (same initial params)
    plain = float(jt.loss_fn(state.params, hand_batch(), config, 0.1)[0])
    assert abs(first[0] - plain) > 1e-4  # dropout acts
    key = jt.dropout_key(0, jnp.asarray(5))
    assert jax.random.key_impl(key) == jax.random.key_impl(jax.random.key(0, impl="rbg"))


def test_capture_in_train_step_gives_canonical_intermediates(steps):
    config, state, plain = steps["config"], steps["state"], steps["halves"]
    captured = jt.make_train_step(config, HALVES, capture=True, donate=False)
    batch = micro(hand_batch(), 2)
    s1, m1 = plain(state, batch)
    s2, m2 = captured(state, batch)
    assert max_abs_diff(s1.params, s2.params) == 0.0
    inter = m2["inter"]
    shapes = spec.intermediate_shapes(config, B // 2, S, T)
    assert set(inter) == set(shapes)
    for name, shape in shapes.items():
        assert inter[name].shape == (2, *shape), name  # leading micro-batch axis
    want, _ = jt.apply_model(state.params, config, batch["src"][1], batch["tgt_in"][1])
    # eager op-by-op vs one fused program: float32 rounding only
    np.testing.assert_allclose(inter["logits"][1], want, rtol=1e-5, atol=1e-5)


def dot_operand_dtypes(jaxpr) -> list[tuple[str, ...]]:
    """The operand dtypes of every matmul in `jaxpr`, nested jaxprs (pjit, remat) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None:
                found += dot_operand_dtypes(getattr(inner, "jaxpr", inner))
    return found


def test_bf16_computes_in_bfloat16_with_float32_masters():
    config = tiny(dropout_rate=0.0)
    train = spec.TrainConfig(mixed_precision="bf16", warmup_steps=3)
    state = jt.create_train_state(config, train)
    batch = hand_batch()
    jaxpr = jax.make_jaxpr(lambda p: jt.loss_fn(p, batch, config, 0.1, dtype=jnp.bfloat16))(
        state.params)
    dtypes = dot_operand_dtypes(jaxpr.jaxpr)
    assert len(dtypes) > 20 and set(dtypes) == {("bfloat16", "bfloat16")}, dtypes
    new, metrics = jt.make_train_step(config, train, donate=False)(state, micro(batch, 1))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(new.params))
    f32 = float(jt.loss_fn(state.params, batch, config, 0.1)[0])
    assert float(metrics["loss"]) == pytest.approx(f32, rel=2e-2)


def test_bad_arguments_raise_value_error():
    config = tiny()
    with pytest.raises(ValueError, match="rng_impl='philox'"):
        jt.make_train_step(config, spec.TrainConfig(), rng_impl="philox")
    with pytest.raises(ValueError, match="mixed_precision='fp16'"):
        jt.make_train_step(config, spec.TrainConfig(mixed_precision="fp16"))


SHARDED = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    import numpy as np
    import spec
    from jax_model import sharding, train as jt
    sys.path.insert(0, {tests!r})
    from test_jax_train import hand_batch, micro

    assert jax.device_count() == 4, jax.devices()
    config = spec.TransformerConfig.preset("tiny", dropout_rate=0.2)
    train = spec.TrainConfig(batch_size=8, grad_accum_steps=2, warmup_steps=3)
    out = {{}}
    for n in (1, 4):
        mesh = sharding.make_mesh(jax.devices()[:n])
        state = sharding.replicate(jt.create_train_state(config, train), mesh)
        step = jt.make_train_step(config, train, mesh)
        losses = []
        for i in range(3):
            batch = sharding.shard_batch(micro(hand_batch(i, 16), 2), mesh, batch_axis=1)
            state, m = step(state, batch)
            losses.append(float(m["loss"]))
        out[n] = {{"losses": losses, "devices": len(state.params["encoder"]["layer_0"]["ffn"]
                  ["w1"]["kernel"].sharding.device_set),
                  "batch_shards": len(batch["src"].addressable_shards)}}
    print(json.dumps(out))
""")


def test_data_parallel_on_four_cpu_devices_matches_one_device(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    one, four = out["1"], out["4"]
    assert four["devices"] == 4 and four["batch_shards"] == 4  # replicated params, split batch
    assert one["devices"] == 1
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-6)
    assert len(set(one["losses"])) == 3


# -- the loop ----------------------------------------------------------------------------------
tasks = pytest.importorskip("tasks")
import training  # noqa: E402
from jax_model.checkpointing import Checkpointer  # noqa: E402


def copy_task():
    return tasks.build_task("copy", train_size=48, eval_size=8, seed=0, max_len=8)


LOOP = spec.TrainConfig(batch_size=8, grad_accum_steps=2, max_steps=12, warmup_steps=5,
                        log_every=5, checkpoint_every=4, keep_checkpoints=2, eval_every=6,
                        track_internals_every=6)


def test_train_loop_writes_metrics_checkpoints_internals_and_export(tmp_path):
    import jax_model

    task = copy_task()
    config = task.model_config("tiny")
    result = jt.train(config, LOOP, task, tmp_path, progress=False)
    assert result.steps == 12
    records = training.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))  # every step, in order
    assert [r["loss"] for r in records] == [h["loss"] for h in result.history]
    assert records[-1]["loss"] < records[0]["loss"]
    lr = [r["learning_rate"] for r in records]
    np.testing.assert_allclose(lr, [spec.learning_rate(s, LOOP, config.d_model)
                                    for s in range(1, 13)], rtol=1e-6)
    evals = training.read_metrics(tmp_path / "metrics.jsonl", "eval")
    assert [r["step"] for r in evals] == [6, 12]
    assert evals[-1] == {"step": 12, "split": "eval", **result.eval_metrics}
    assert set(result.eval_metrics) == {"loss", "token_accuracy", "exact_match", "bleu", "chrf"}
    assert 0.0 <= result.eval_metrics["exact_match"] <= 1.0
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [8, 12]  # every 4 steps, the last 2 kept

    # Internals at steps 0, 6, 12 on the fixed probe batch, canonical names and shapes.
    steps = training.list_internals(tmp_path)
    assert [s for s, _ in steps] == [0, 6, 12]
    s_len, t_len = task.max_lengths()
    inter0, probe = training.load_internals(steps[0][1])
    assert {k: v.shape for k, v in inter0.items()} == spec.intermediate_shapes(config, 4, s_len,
                                                                               t_len)
    init = jax_model.init(config, LOOP.seed)
    logits, _ = jax_model.forward(init, config, probe["src"], probe["tgt"], capture=False)
    np.testing.assert_allclose(inter0["logits"], logits, rtol=1e-5, atol=1e-5)
    inter12, probe12 = training.load_internals(steps[2][1])
    np.testing.assert_array_equal(probe12["src"], probe["src"])
    assert np.abs(inter12["logits"] - inter0["logits"]).max() > 1e-2

    # The final weights: a canonical checkpoint any implementation loads, plus the tokenizer.
    flat, loaded_config = spec.load_checkpoint(result.final_checkpoint)
    assert loaded_config == config
    for name, value in jax_model.to_canonical(result.params).items():
        np.testing.assert_array_equal(flat[name], value)
    assert (result.final_checkpoint / "tokenizer.json").is_file()

    # Resuming a finished run trains nothing more and keeps the log as it was.
    again = jt.train(config, LOOP, task, tmp_path, resume=True, progress=False)
    assert again.steps == 12 and again.history == []
    assert training.read_metrics(tmp_path / "metrics.jsonl") == records
    assert training.read_metrics(tmp_path / "metrics.jsonl", "eval") == evals
    assert again.eval_metrics == result.eval_metrics
    assert max_abs_diff(again.params, result.params) == 0.0
    with pytest.raises(ValueError, match="learning_rate"):
        jt.train(config, LOOP.replace(learning_rate=2.0), task, tmp_path, resume=True,
                 progress=False)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    """A constant learning rate of 30 without clipping blows the weights up within steps."""
    task = copy_task()
    config = task.model_config("tiny")
    train = spec.TrainConfig(batch_size=8, max_steps=30, schedule="constant", warmup_steps=4,
                             learning_rate=30.0, clip_norm=0.0, checkpoint_every=1,
                             keep_checkpoints=2, log_every=10)
    import jax_model

    init = jax_model.init(config, 0)
    with pytest.raises(training.NonFiniteLossError) as info:
        jt.train(config, train, task, tmp_path, progress=False, params=init)
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(init))  # not donated
    bad = info.value.step
    assert bad > 1 and info.value.last_checkpoint == bad - 1
    assert f"at step {bad}" in str(info.value) and f"step {bad - 1}" in str(info.value)
    records = training.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, bad + 1))
    watched = {"loss": "loss", "gradient norm": "grad_norm"}[info.value.what]
    assert all(np.isfinite([r["loss"], r["grad_norm"]]).all() for r in records[:-1])
    assert not np.isfinite(records[-1][watched])
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [bad - 2, bad - 1][-min(2, bad - 1):]
        state, meta = ckpt.restore(bad - 1, jt.create_train_state(config, train))
    assert meta["step"] == bad - 1 and int(state.step) == bad - 1
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))
    assert not (tmp_path / "final").exists()


RUN = textwrap.dedent("""
    import sys, time
    import spec, tasks
    from jax_model import train as jt
    sys.path.insert(0, {tests!r})
    from test_jax_train import LOOP, copy_task

    out, resume, delay = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    task = copy_task()
    config = task.model_config("tiny", dropout_rate=0.1)

    class Delayed:
        '''The real task, with a pause before each batch: time to kill the run mid-way.'''
        def __getattr__(self, name):
            return getattr(task, name)
        def batches(self, *args, **kwargs):
            for batch in task.batches(*args, **kwargs):
                time.sleep(delay)
                yield batch

    train = LOOP.replace(log_every=1, eval_every=0, track_internals_every=0)
    jt.train(config, train, Delayed() if delay else task, out, resume=resume, progress=False)
""")


@pytest.mark.slow
def test_kill_9_and_resume_gives_the_uninterrupted_losses(tmp_path):
    """Three processes: an uninterrupted run; a run killed with SIGKILL after its step-4
    checkpoint; that run resumed.  The resumed log must equal the uninterrupted one exactly."""
    import signal
    import time

    script = tmp_path / "run.py"
    script.write_text(RUN.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           # the three processes compile the same programs: compile once, load twice
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

    def start(out, resume, delay):
        return subprocess.Popen([sys.executable, str(script), str(out), resume, str(delay)],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    whole = start(tmp_path / "whole", "0", 0)
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]

    killed_dir = tmp_path / "killed"
    killed = start(killed_dir, "0", 0.5)
    marker = killed_dir / "checkpoints" / "4" / "_CHECKPOINT_METADATA"
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (killed_dir / "final").exists()  # it really died before the end
    logged = training.read_metrics(killed_dir / "metrics.jsonl")
    assert 4 <= logged[-1]["step"] < 12

    resumed = start(killed_dir, "1", 0)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    want = training.read_metrics(tmp_path / "whole" / "metrics.jsonl")
    got = training.read_metrics(killed_dir / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 13))
    assert got == want  # bit-exact: loss, grad_norm, learning_rate, accuracy of every step
    a, _ = spec.load_checkpoint(tmp_path / "whole" / "final")
    b, _ = spec.load_checkpoint(killed_dir / "final")
    assert all(np.array_equal(a[name], b[name]) for name in a)

"""Issue 13: the FLOPs formula (by hand on a tiny config, and against torch's own FLOP counter),
and gradient checkpointing (remat) giving the same gradients in JAX and torch, with less memory
kept for the backward pass."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import hand_batch

import spec
from benchmarks import flops

# Every axis a different size: b 2, s 3, t 5; tiny preset: m 32, f 64, v 64, 2+2 layers.
B, S, T = 2, 3, 5


def tiny(**overrides) -> spec.TransformerConfig:
    return spec.TransformerConfig.preset("tiny", **overrides)


def test_forward_flops_by_hand():
    got = flops.forward_flops(tiny(), B, S, T)
    mm = 2 * 32 * 32  # one [m, m] projection of one token
    encoder_layer = S * 4 * mm + 2 * (2 * S * S * 32) + S * 2 * (2 * 32 * 64)
    assert encoder_layer == 50_304
    decoder_layer = (T * 4 * mm + 2 * (2 * T * T * 32)           # self-attention
                     + T * 2 * mm + S * 2 * mm + 2 * (2 * T * S * 32)  # cross: q, o; k, v
                     + T * 2 * (2 * 32 * 64))                   # ffn
    assert decoder_layer == 119_808
    assert got.encoder == 2 * B * 50_304 == 201_216
    assert got.decoder == 2 * B * 119_808 == 479_232
    assert got.logits == B * T * 2 * 32 * 64 == 40_960
    assert got.total == 721_408
    assert flops.train_step_flops(tiny(), B, S, T) == 3 * 721_408
    assert flops.train_step_flops(tiny(), B, S, T, grad_accum_steps=4) == 12 * 721_408


def test_decode_step_flops_by_hand():
    got = flops.decode_step_flops(tiny(), B, S, cache_len=7)
    mm = 2 * 32 * 32
    layer = (4 * mm + 2 * (2 * 7 * 32)        # self: q, k, v, o of the new position; 7 keys
             + 2 * mm + 2 * (2 * S * 32)      # cross: q, o; keys and values cached
             + 2 * (2 * 32 * 64))
    assert got.decoder == 2 * B * layer and got.encoder == 0
    assert got.logits == B * 2 * 32 * 64
    assert flops.cross_kv_flops(tiny(), B, S) == 2 * 2 * mm * S * B


def test_flops_match_torch_flop_counter():
    """torch's FlopCounterMode counts every matmul the mirror runs: the forward equals our
    count exactly, and forward + backward is 3x it."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    import torch_model

    config = tiny(share_embeddings=False, tie_output=False, src_vocab_size=48)
    model = torch_model.Transformer(config).load_canonical(spec.random_params(config, 0))
    src = torch.randint(3, 48, (B, S))
    tgt = torch.randint(3, 64, (B, T))
    counter = FlopCounterMode(display=False)
    with counter:
        logits = model(src, tgt)
    forward = flops.forward_flops(config, B, S, T)
    assert counter.get_total_flops() == forward.total
    with counter:
        model(src, tgt).sum().backward()
    assert counter.get_total_flops() == flops.train_step_flops(config, B, S, T)
    assert logits.shape == (B, T, 64)


def test_flops_reject_bad_shapes():
    with pytest.raises(ValueError, match="batch=0"):
        flops.forward_flops(tiny(), 0, S, T)
    with pytest.raises(ValueError, match="grad_accum_steps=1.5"):
        flops.train_step_flops(tiny(), B, S, T, grad_accum_steps=1.5)
    with pytest.raises(ValueError, match="seconds=0"):
        flops.mfu(1e9, 0, 1e9)
    assert flops.mfu(2e9, 0.5, 8e9) == pytest.approx(0.5)


def normalised(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def test_jax_remat_same_gradients_and_is_used():
    jax = pytest.importorskip("jax")
    import jax_model
    from jax_model import train as jt

    config = tiny()  # dropout 0.1: remat must replay the same masks
    params = jax_model.init(config, 0)
    batch = {k: jax.numpy.asarray(v) for k, v in hand_batch().items()}
    key = jt.dropout_key(0, 3)

    def grads(remat: bool):
        fn = jax.grad(lambda p: jt.loss_fn(p, batch, config, dropout_key=key, remat=remat)[0])
        return fn, jax.jit(fn)(params)

    plain_fn, plain = grads(False)
    remat_fn, remat = grads(True)
    flat_plain, flat_remat = jax_model.to_canonical(plain), jax_model.to_canonical(remat)
    assert flat_plain.keys() == flat_remat.keys()
    for name in flat_plain:
        assert normalised(flat_remat[name], flat_plain[name]) <= 1e-6, name
    assert max(float(np.abs(g).max()) for g in flat_plain.values()) > 0
    # the recomputation is really there: one checkpoint per layer in the remat program only
    remat_jaxpr, plain_jaxpr = (str(jax.make_jaxpr(f)(params)) for f in (remat_fn, plain_fn))
    assert remat_jaxpr.count("checkpoint") + remat_jaxpr.count("remat") >= 4
    assert "checkpoint" not in plain_jaxpr and "remat" not in plain_jaxpr


def test_jax_train_step_reads_gradient_checkpointing():
    """The flag reaches the jitted step: remat in its program, the same loss and gradient norm
    (parameters after an Adam step are not compared: Adam's first update is about lr * sign(g),
    so float32 noise in a gradient that is zero in exact arithmetic flips whole steps)."""
    jax = pytest.importorskip("jax")
    from jax_model import train as jt

    config = tiny()
    batch = {k: jax.numpy.asarray(v)[None] for k, v in hand_batch().items()}
    results = []
    for remat in (False, True):
        train = spec.TrainConfig(batch_size=8, warmup_steps=10, gradient_checkpointing=remat)
        step = jt.make_train_step(config, train, donate=False)
        state = jt.create_train_state(config, train)
        program = str(jax.make_jaxpr(step)(state, batch))
        _, metrics = step(state, batch)
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]),
                        "checkpoint" in program or "remat" in program))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)
    assert [r[2] for r in results] == [False, True]


def test_torch_gradient_checkpointing_same_gradients():
    torch = pytest.importorskip("torch")
    from torch_model import train as tt

    config = tiny()
    t = tt.to_tensors(hand_batch(), torch.device("cpu"))
    grads, flags = [], []
    for remat in (False, True):
        train = spec.TrainConfig(batch_size=8, gradient_checkpointing=remat)
        state = tt.create_train_state(config, train, device="cpu")
        flags.append(state.model.gradient_checkpointing)
        model = state.model.train()
        torch.manual_seed(5)  # the same dropout masks (checkpoint replays the RNG state)
        logits = model(t["src"], t["tgt_in"])
        loss, _, _ = tt.loss_and_counts(logits, t["labels"], config.pad_id, 0.1)
        loss.backward()
        grads.append(model.canonical_grads())
    assert flags == [False, True]
    for name in grads[0]:
        assert normalised(grads[1][name], grads[0][name]) <= 1e-6, name


def test_remat_keeps_less_for_the_backward():
    """benchmarks.memory on the tiny preset: remat shrinks what both frameworks save."""
    pytest.importorskip("jax")
    pytest.importorskip("torch")
    from benchmarks import memory

    config = tiny()
    batch = hand_batch()
    saved = {}
    for remat in (False, True):
        train = spec.TrainConfig(batch_size=8, gradient_checkpointing=remat)
        saved[remat] = {**memory.jax_memory(config, train, batch),
                        "torch": memory.torch_saved_bytes(config, train, batch)}
    for key in ("residuals", "torch"):
        assert 0 < saved[True][key] < 0.7 * saved[False][key], (key, saved)
    # XLA's temp peak is not asserted: at this size it is the recomputation's own buffers and
    # the optimizer's, not the activations (benchmarks/RESULTS.md has it for the small preset)
    assert saved[True]["temp"] > 0 and saved[False]["temp"] > 0


def test_train_benchmark_interleaves_and_the_losses_agree(capsys, monkeypatch):
    """benchmarks/train.py on a tiny model: jax, torch and torch.compile take turns step by
    step, train the same weights on the same batches to the same loss, and the ratio lines
    read against the targets."""
    from benchmarks import train

    calls: list[str] = []
    real = train.run_interleaved

    def spy(steppers, steps, warmup):
        def wrap(name, step):
            def run(micro):
                calls.append(name)
                return step(micro)
            return run
        return real({k: wrap(k, v) for k, v in steppers.items()}, steps, warmup)

    monkeypatch.setattr(train, "run_interleaved", spy)
    assert train.main(["--d_model", "16", "--heads", "2", "--layers", "1", "--batch", "4",
                       "--train_size", "40", "--steps", "2", "--warmup", "1",
                       "--only", "jax,torch", "--threads", "1"]) == 0
    assert calls == ["jax", "torch"] * 3
    out = capsys.readouterr().out
    losses = {line.split()[0]: float(line.split()[-3]) for line in out.splitlines()
              if line.startswith(("jax (jit)", "torch eager"))}
    assert set(losses) == {"jax", "torch"}
    assert abs(losses["jax"] - losses["torch"]) < 1e-4 * max(1.0, abs(losses["torch"]))
    assert "JAX step vs torch eager: " in out and "(target >= 1.2x: " in out

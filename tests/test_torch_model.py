"""torch_model: canonical names and layouts, taps, hand-computed values, patching, inputs.

Every dimension has its own size so a swapped axis cannot pass: batch 4, d_model 24, 3 heads
(head dim 8), d_ff 40, 2 encoder and 3 decoder layers, source 7, target 5, vocabularies 37
(and 43 for an unshared target side).  Source row 2 is all padding.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import normalised, padded_ids, random_flat

import spec
import torch_model as tm
from torch_model.taps import Tap

B, S, T = 4, 7, 5
BASE = dict(src_vocab_size=37, tgt_vocab_size=37, d_model=24, num_heads=3, d_ff=40,
            num_encoder_layers=2, num_decoder_layers=3, max_len=16, dropout_rate=0.0)
CONFIGS = {
    "post_interleaved_shared": spec.TransformerConfig(**BASE),
    "pre_split_untied_bias_gelu": spec.TransformerConfig(
        **{**BASE, "tgt_vocab_size": 43}, norm_position="pre", positional_layout="split",
        share_embeddings=False, tie_output=False, output_bias=True, activation="gelu"),
    "post_tied_bias_swish_unscaled": spec.TransformerConfig(
        **BASE, output_bias=True, activation="swish", scale_embeddings=False,
        layer_norm_eps=1e-3),
}


@pytest.fixture(params=list(CONFIGS))
def config(request) -> spec.TransformerConfig:
    return CONFIGS[request.param]


def batch(config: spec.TransformerConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return padded_ids(config, seed, B, S, T)


def loaded(config: spec.TransformerConfig, seed: int = 0) -> tm.Transformer:
    return tm.Transformer(config).load_canonical(random_flat(config, seed))




# -- a numpy re-implementation, float64, written from docs/architecture.md alone ---------------------------
def numpy_forward(flat, c, src, tgt):
    f = {k: v.astype(np.float64) for k, v in flat.items()}
    h, k = c.num_heads, c.head_dim

    def dense(x, p):
        return x @ f[f"{p}/kernel"] + f[f"{p}/bias"]

    def norm(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + c.layer_norm_eps) * f[f"{p}/scale"] + f[f"{p}/bias"]

    def heads(x):  # [b, l, m] -> [b, h, l, k]
        return x.reshape(x.shape[0], x.shape[1], h, k).transpose(0, 2, 1, 3)

    def attention(x, mem, mask, p):
        q, kk, v = heads(dense(x, f"{p}/query")), heads(dense(mem, f"{p}/key")), heads(dense(mem, f"{p}/value"))
        scores = np.where(mask, q @ kk.transpose(0, 1, 3, 2) / math.sqrt(k), -1e300)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        ctx = (w @ v).transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], h * k)
        return dense(ctx, f"{p}/out")

    erf = np.vectorize(math.erf)
    act = {"relu": lambda x: np.maximum(x, 0), "gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
           "swish": lambda x: x / (1 + np.exp(-x))}[c.activation]

    def sub(x, p, fn):
        if c.norm_position == "pre":
            return x + fn(norm(x, f"{p}_norm"))
        return norm(x + fn(x), f"{p}_norm")

    tables = spec.embedding_names(c)
    pos = spec.sinusoidal_positions(c.max_len, c.d_model, c.positional_layout).astype(np.float64)
    scale = math.sqrt(c.d_model) if c.scale_embeddings else 1.0

    def embed(ids, side):
        return f[tables[side]][ids] * scale + pos[: ids.shape[1]]

    src_mask = (src != c.pad_id)[:, None, None, :]
    causal = np.tril(np.ones((tgt.shape[1],) * 2, bool))[None, None]
    x = embed(src, "encoder")
    for i in range(c.num_encoder_layers):
        p = f"encoder/layer_{i}"
        x = sub(x, f"{p}/self_attn", lambda y, p=p: attention(y, y, src_mask, f"{p}/self_attn"))
        x = sub(x, f"{p}/ffn", lambda y, p=p: dense(act(dense(y, f"{p}/ffn/w1")), f"{p}/ffn/w2"))
    memory = norm(x, "encoder/final_norm") if c.norm_position == "pre" else x
    y = embed(tgt, "decoder")
    for i in range(c.num_decoder_layers):
        p = f"decoder/layer_{i}"
        y = sub(y, f"{p}/self_attn", lambda z, p=p: attention(z, z, causal, f"{p}/self_attn"))
        y = sub(y, f"{p}/cross_attn", lambda z, p=p: attention(z, memory, src_mask, f"{p}/cross_attn"))
        y = sub(y, f"{p}/ffn", lambda z, p=p: dense(act(dense(z, f"{p}/ffn/w1")), f"{p}/ffn/w2"))
    if c.norm_position == "pre":
        y = norm(y, "decoder/final_norm")
    kernel = f[tables["decoder"]].T if c.tie_output else f["output/kernel"]
    return y @ kernel + (f["output/bias"] if c.output_bias else 0.0)


# -- parameters -------------------------------------------------------------------------------
def test_canonical_names_and_shapes(config):
    model = tm.Transformer(config)
    flat = model.to_canonical()
    assert {n: a.shape for n, a in flat.items()} == spec.param_shapes(config)
    assert all(a.dtype == np.float32 for a in flat.values())
    # every torch parameter is reachable from exactly one canonical name
    assert sum(1 for _ in model.parameters()) == len(flat)


def test_load_to_canonical_round_trip_and_kernel_transpose(config):
    flat = random_flat(config)
    model = tm.Transformer(config).load_canonical(flat)
    back = model.to_canonical()
    assert all(np.array_equal(back[n], flat[n]) for n in flat)
    query = model.decoder.layer_1.cross_attn.query
    x = torch.randn(2, config.d_model)
    expected = x.numpy() @ flat["decoder/layer_1/cross_attn/query/kernel"] + \
        flat["decoder/layer_1/cross_attn/query/bias"]
    np.testing.assert_allclose(query(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.encoder.layer_0.ffn_norm.weight.detach().numpy(),
                                  flat["encoder/layer_0/ffn_norm/scale"])


def test_to_canonical_is_a_copy():
    """Arrays handed out must not be views of live parameters (training mutates those)."""
    model = loaded(CONFIGS["post_interleaved_shared"])
    flat = model.to_canonical()
    before = flat["encoder/layer_0/ffn_norm/bias"].copy()
    with torch.no_grad():
        model.encoder.layer_0.ffn_norm.bias.add_(1.0)
        model.shared_embedding.weight.mul_(2.0)
    np.testing.assert_array_equal(flat["encoder/layer_0/ffn_norm/bias"], before)
    assert not np.array_equal(model.to_canonical()["shared_embedding/embedding"],
                              flat["shared_embedding/embedding"])


def test_init_is_deterministic():
    config = CONFIGS["pre_split_untied_bias_gelu"]
    a, b, c = tm.init(config, 3).to_canonical(), tm.init(config, 3).to_canonical(), tm.init(config, 4).to_canonical()
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["output/kernel"], c["output/kernel"])
    torch.manual_seed(5)
    d = tm.Transformer(config).to_canonical()
    torch.manual_seed(5)
    e = tm.Transformer(config).to_canonical()
    assert all(np.array_equal(d[n], e[n]) for n in d)


def test_strict_loading_lists_every_problem():
    config = CONFIGS["post_tied_bias_swish_unscaled"]
    model = tm.Transformer(config)
    before = model.to_canonical()
    flat = random_flat(config)
    del flat["decoder/layer_2/ffn/w2/bias"]
    flat["output/kernel"] = np.zeros((24, 37), np.float32)
    flat["encoder/layer_1/self_attn/key/kernel"] = np.zeros((24, 25), np.float32)
    with pytest.raises(ValueError) as err:
        model.load_canonical(flat)
    text = str(err.value)
    assert "decoder/layer_2/ffn/w2/bias" in text and "output/kernel" in text
    assert "encoder/layer_1/self_attn/key/kernel" in text and "(24, 25)" in text
    after = model.to_canonical()
    assert all(np.array_equal(before[n], after[n]) for n in before)  # nothing half-loaded
    flat = random_flat(config)
    flat["shared_embedding/embedding"] = flat["shared_embedding/embedding"].astype(np.int32)
    with pytest.raises(ValueError, match="not floating point"):
        model.load_canonical(flat)


def test_checkpoint_round_trip(tmp_path):
    config = CONFIGS["pre_split_untied_bias_gelu"]
    model = loaded(config)
    spec.save_checkpoint(tmp_path / "ckpt", model.to_canonical(), config)
    flat, config_back = spec.load_checkpoint(tmp_path / "ckpt")
    assert config_back == config
    other = tm.Transformer(config_back).load_canonical(flat)
    src, tgt = batch(config)
    a, _ = tm.forward(model, src, tgt, capture=False)
    b, _ = tm.forward(other, src, tgt, capture=False)
    assert torch.equal(a, b)


def test_load_canonical_accepts_torch_tensors():
    config = CONFIGS["post_interleaved_shared"]
    flat = random_flat(config)
    model = tm.Transformer(config).load_canonical({n: torch.from_numpy(a) for n, a in flat.items()})
    assert np.array_equal(model.to_canonical()["shared_embedding/embedding"],
                          flat["shared_embedding/embedding"])


# -- the whole forward against numpy ------------------------------------------------------------
def test_logits_equal_numpy_reimplementation(config):
    flat = random_flat(config)
    src, tgt = batch(config)
    logits, _ = tm.forward(tm.Transformer(config).load_canonical(flat), src, tgt, capture=False)
    ref = numpy_forward(flat, config, src, tgt)
    # float32 against float64 through 5 layers: 1e-5 of the largest logit is float32 round-off
    assert normalised(logits.detach().numpy(), ref) < 1e-5


# -- intermediates ----------------------------------------------------------------------------
def test_captured_names_order_and_shapes(config):
    src, tgt = batch(config)
    logits, inter = tm.forward(loaded(config), src, tgt)
    expected = spec.intermediate_shapes(config, B, S, T)
    assert list(inter) == list(expected)  # same names, in execution order
    assert {n: a.shape for n, a in inter.items()} == expected
    assert all(np.isfinite(a).all() and a.dtype == np.float32 for a in inter.values())
    np.testing.assert_array_equal(inter["logits"], logits.detach().numpy())


def test_hand_computed_intermediates(config):
    flat = random_flat(config)
    src, tgt = batch(config)
    _, inter = tm.forward(tm.Transformer(config).load_canonical(flat), src, tgt)
    positions = spec.sinusoidal_positions(config.max_len, config.d_model, config.positional_layout)
    tables = spec.embedding_names(config)
    scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
    for side, ids in (("encoder", src), ("decoder", tgt)):
        np.testing.assert_allclose(inter[f"{side}/embed/tokens"], flat[tables[side]][ids] * scale, rtol=1e-6)
        np.testing.assert_allclose(inter[f"{side}/embed/output"] - inter[f"{side}/embed/tokens"],
                                   np.broadcast_to(positions[: ids.shape[1]], (B, ids.shape[1], 24)),
                                   atol=1e-5)
    pad = src == config.pad_id                                     # [b, s]
    for prefix in spec.attention_names(config):
        w = inter[f"{prefix}/weights"]
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(inter[f"{prefix}/context"], w @ inter[f"{prefix}/v"], atol=1e-5)
        np.testing.assert_allclose(
            inter[f"{prefix}/scores"],
            inter[f"{prefix}/q"] @ inter[f"{prefix}/k"].transpose(0, 1, 3, 2) / math.sqrt(8), atol=1e-5)
        merged = inter[f"{prefix}/context"].transpose(0, 2, 1, 3).reshape(B, -1, 24)
        np.testing.assert_allclose(inter[f"{prefix}/output"],
                                   merged @ flat[f"{prefix}/out/kernel"] + flat[f"{prefix}/out/bias"], atol=1e-5)
        if prefix.startswith("decoder") and prefix.endswith("self_attn"):
            assert np.all(w[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0.0)
        else:
            live = ~pad[1]
            assert np.all(w[1][..., ~live] == 0.0)                  # masked keys exactly 0
            assert np.all(w[2] == np.float32(1.0 / S))             # all-pad row exactly uniform
    for side in spec.SIDES:
        for i in range(spec.num_layers(config, side)):
            for sub in spec.sublayers(side):
                p = f"{side}/layer_{i}/{sub}"
                x_in = inter[f"{p}_norm/input"]
                mu = x_in.mean(-1, keepdims=True)
                normed = (x_in - mu) / np.sqrt(x_in.var(-1, keepdims=True) + config.layer_norm_eps)
                np.testing.assert_allclose(inter[f"{p}_norm/output"],
                                           normed * flat[f"{p}_norm/scale"] + flat[f"{p}_norm/bias"],
                                           atol=1e-4)
                out = inter[f"{p}/output"]
                if config.norm_position == "post":  # norm/input = x + sublayer(x)
                    previous = _stream_before(inter, config, side, i, sub)
                    np.testing.assert_allclose(x_in, previous + out, atol=1e-5)
                if sub == "ffn":
                    pre = inter[f"{p}/pre_activation"]
                    act = {"relu": np.maximum(pre, 0), "swish": pre / (1 + np.exp(-pre)),
                           "gelu": 0.5 * pre * (1 + np.vectorize(math.erf)(pre / math.sqrt(2)))}
                    np.testing.assert_allclose(inter[f"{p}/activation"], act[config.activation], atol=1e-5)
    for side in spec.SIDES:
        last = (inter[f"{side}/final_norm/output"] if config.norm_position == "pre"
                else inter[f"{side}/layer_{spec.num_layers(config, side) - 1}/ffn_norm/output"])
        np.testing.assert_array_equal(inter[f"{side}/output"], last)


def _stream_before(inter, config, side, i, sub):
    """The residual stream entering sublayer `sub` of layer i (post-LN: the previous norm)."""
    order = spec.sublayers(side)
    k = order.index(sub)
    if k > 0:
        return inter[f"{side}/layer_{i}/{order[k - 1]}_norm/output"]
    if i > 0:
        return inter[f"{side}/layer_{i - 1}/ffn_norm/output"]
    return inter[f"{side}/embed/output"]


def test_pre_ln_norm_input_is_the_residual_stream():
    config = CONFIGS["pre_split_untied_bias_gelu"]
    src, tgt = batch(config)
    _, inter = tm.forward(loaded(config), src, tgt)
    np.testing.assert_array_equal(inter["decoder/layer_0/self_attn_norm/input"], inter["decoder/embed/output"])
    np.testing.assert_allclose(inter["decoder/layer_0/cross_attn_norm/input"],
                               inter["decoder/embed/output"] + inter["decoder/layer_0/self_attn/output"], atol=1e-5)


# -- patching ---------------------------------------------------------------------------------
def test_patching_a_head_matches_manual_recomputation():
    config = CONFIGS["post_interleaved_shared"]
    flat = random_flat(config)
    model = tm.Transformer(config).load_canonical(flat)
    src, tgt = batch(config)
    j, k = 1, config.head_dim
    base, _ = tm.forward(model, src, tgt, capture=False)

    def zero_head_weights(w):  # [b, h, q, k]
        w = w.clone()
        w[:, j] = 0.0
        return w

    def zero_head_context(c):  # [b, h, q, d]
        c = c.clone()
        c[:, j] = 0.0
        return c

    with tm.patch(model, {"decoder/layer_1/self_attn/weights": zero_head_weights}):
        patched, inter = tm.forward(model, src, tgt)
    with tm.patch(model, {"decoder/layer_1/self_attn/context": zero_head_context}):
        via_context, _ = tm.forward(model, src, tgt, capture=False)
    assert not tm.has_hooks(model)
    assert normalised(patched.detach().numpy(), base.detach().numpy()) > 1e-3
    np.testing.assert_allclose(patched.detach().numpy(), via_context.detach().numpy(), atol=1e-6)
    # the capture records the patched value, and the output projection sees it
    p = "decoder/layer_1/self_attn"
    assert np.all(inter[f"{p}/weights"][:, j] == 0.0) and np.all(inter[f"{p}/context"][:, j] == 0.0)
    merged = inter[f"{p}/context"].transpose(0, 2, 1, 3).reshape(B, T, 24)
    kernel = flat[f"{p}/out/kernel"].copy()
    np.testing.assert_allclose(inter[f"{p}/output"], merged @ kernel + flat[f"{p}/out/bias"], atol=1e-5)
    kernel[j * k:(j + 1) * k] = 0.0  # the same head's rows of the out kernel contribute nothing
    np.testing.assert_allclose(inter[f"{p}/output"], merged @ kernel + flat[f"{p}/out/bias"], atol=1e-5)
    # layers before the patch are untouched
    _, clean = tm.forward(model, src, tgt)
    np.testing.assert_array_equal(inter["decoder/layer_0/ffn/output"], clean["decoder/layer_0/ffn/output"])


def test_unknown_tap_name_is_rejected():
    model = tm.Transformer(CONFIGS["post_interleaved_shared"])
    with pytest.raises(ValueError, match="decoder/layer_7/self_attn/q"):
        with tm.capture(model, ["decoder/layer_7/self_attn/q"]):
            pass
    with pytest.raises(ValueError, match="encoder/nothing"):
        with tm.patch(model, {"encoder/nothing": lambda x: x}):
            pass


def test_capture_subset_and_hooks_removed_after_error():
    config = CONFIGS["post_interleaved_shared"]
    model = loaded(config)
    src, tgt = batch(config)
    with tm.capture(model, ["encoder/layer_1/ffn/activation", "logits"]) as got:
        model(torch.as_tensor(src), torch.as_tensor(tgt))
    assert list(got) == ["encoder/layer_1/ffn/activation", "logits"]
    with pytest.raises(RuntimeError, match="boom"):
        with tm.capture(model):
            raise RuntimeError("boom")
    assert not tm.has_hooks(model)


def test_taps_keep_canonical_names_when_wrapped():
    config = CONFIGS["post_interleaved_shared"]
    wrapper = torch.nn.Module()
    wrapper.model = loaded(config)
    src, tgt = batch(config)
    with tm.capture(wrapper, ["decoder/output"]) as got:
        wrapper.model(torch.as_tensor(src), torch.as_tensor(tgt))
    assert got["decoder/output"].shape == (B, T, 24)


# -- behaviour of the forward -----------------------------------------------------------------
def test_causality():
    config = CONFIGS["pre_split_untied_bias_gelu"]
    model = loaded(config)
    src, tgt = batch(config)
    a, _ = tm.forward(model, src, tgt, capture=False)
    changed = tgt.copy()
    changed[:, 3] = (changed[:, 3] + 5) % config.tgt_vocab_size
    b, _ = tm.forward(model, src, changed, capture=False)
    assert torch.equal(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_padding_invariance():
    config = CONFIGS["post_tied_bias_swish_unscaled"]
    model = loaded(config)
    src, tgt = batch(config)
    longer = np.concatenate([src, np.full((B, 3), config.pad_id)], axis=1)  # [4, 10]
    a, inter_a = tm.forward(model, src, tgt)
    b, inter_b = tm.forward(model, longer, tgt)
    rows = [0, 1, 3]  # real rows: extra padded keys change nothing (all-pad row 2 does change:
    # its uniform weights spread over more positions)
    assert normalised(b.detach().numpy()[rows], a.detach().numpy()[rows]) < 1e-6
    short = src[1:2, :4]  # row 1 without its padding
    c, _ = tm.forward(model, short, tgt[1:2], capture=False)
    assert normalised(c.detach().numpy(), a.detach().numpy()[1:2]) < 1e-6
    np.testing.assert_allclose(inter_b["encoder/output"][rows, :S], inter_a["encoder/output"][rows], atol=1e-5)


@pytest.mark.parametrize("src, tgt, match", [
    (np.array([[3, 4, 37]]), np.array([[1, 3]]), "src holds token id 37"),
    (np.array([[3, 4, 2]]), np.array([[1, -1]]), "tgt holds token id -1"),
    (np.array([[3.0, 4.0]]), np.array([[1, 3]]), "src must hold integer"),
    (np.array([3, 4, 2]), np.array([[1, 3]]), "src must be a 2-D"),
    (np.array([[3, 4, 2]]), np.ones((1, 17), np.int64), "tgt has length 17"),
    (np.array([[3, 4, 2]] * 2), np.array([[1, 3]]), "batch sizes differ"),
])
def test_bad_inputs_raise(src, tgt, match):
    model = tm.Transformer(CONFIGS["post_interleaved_shared"])
    with pytest.raises(ValueError, match=match):
        tm.forward(model, src, tgt)


def test_torch_and_numpy_ids_agree():
    config = CONFIGS["post_interleaved_shared"]
    model = loaded(config)
    src, tgt = batch(config)
    a, _ = tm.forward(model, src.astype(np.int32), tgt, capture=False)
    b, _ = tm.forward(model, torch.as_tensor(src), torch.as_tensor(tgt, dtype=torch.int32), capture=False)
    assert torch.equal(a, b)


def test_deterministic_whatever_the_mode_and_mode_restored():
    config = CONFIGS["post_interleaved_shared"].replace(dropout_rate=0.3, attention_dropout_rate=0.2)
    model = loaded(config)
    src, tgt = batch(config)
    model.eval()
    ref, _ = tm.forward(model, src, tgt, capture=False)
    model.train()
    again, _ = tm.forward(model, src, tgt, capture=False)
    assert torch.equal(ref, again) and model.training and model.decoder.layer_0.dropout.training
    torch.manual_seed(0)
    noisy, inter = tm.forward(model, src, tgt, deterministic=False)
    torch.manual_seed(0)
    noisy2, _ = tm.forward(model, src, tgt, capture=False, deterministic=False)
    assert not torch.allclose(noisy, ref) and torch.equal(noisy, noisy2)
    model.eval()
    noisy3, _ = tm.forward(model, src, tgt, capture=False, deterministic=False)
    assert not model.training and not model.encoder.layer_1.ffn.training
    assert not torch.allclose(noisy3, ref)
    # weights are recorded before attention dropout: still a distribution
    np.testing.assert_allclose(inter["encoder/layer_0/self_attn/weights"].sum(-1), 1.0, rtol=1e-6)


def test_no_hooks_without_capture(monkeypatch):
    config = CONFIGS["post_interleaved_shared"]
    model = loaded(config)
    src, tgt = batch(config)

    def refuse(*args, **kwargs):
        raise AssertionError("a hook was registered")

    monkeypatch.setattr(Tap, "register_forward_hook", refuse)
    logits, inter = tm.forward(model, src, tgt, capture=False)
    assert inter == {} and logits.shape == (B, T, 37)
    with pytest.raises(AssertionError, match="a hook was registered"):
        tm.forward(model, src, tgt, capture=True)
    assert not tm.has_hooks(model)


def test_gradients_canonical_layout_and_checkpointing():
    config = CONFIGS["pre_split_untied_bias_gelu"]
    src, tgt = batch(config)
    labels = np.concatenate([tgt[:, 1:], np.full((B, 1), config.eos_id)], axis=1)

    def grads(checkpointing):
        model = loaded(config)  # dropout_rate 0: train mode is deterministic, so grads compare
        model.gradient_checkpointing = checkpointing
        calls = []
        model.encoder.layer_1.self_attn.q.register_forward_hook(lambda *args: calls.append(1))
        logits, _ = tm.forward(model, src, tgt, capture=False, deterministic=False)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), torch.as_tensor(labels).reshape(-1),
            ignore_index=config.pad_id, label_smoothing=0.1)
        ref = spec.label_smoothed_cross_entropy(logits.detach().numpy(), labels, config.pad_id, 0.1)
        assert abs(loss.item() - ref) < 1e-5
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)  # the layer was recomputed in backward
        return model, model.canonical_grads()

    model, plain = grads(False)
    _, ckpt = grads(True)
    assert {n: g.shape for n, g in plain.items()} == spec.param_shapes(config)
    np.testing.assert_array_equal(plain["decoder/layer_0/ffn/w1/kernel"],
                                  model.decoder.layer_0.ffn.w1.weight.grad.numpy().T)
    assert all(np.abs(g).max() > 0 for g in plain.values())
    assert all(normalised(ckpt[n], plain[n]) < 1e-6 for n in plain)
    with pytest.raises(ValueError, match="no gradient"):
        tm.Transformer(config).canonical_grads()


def test_forward_traces_without_graph_breaks():
    """With no hooks set, dynamo sees one graph: torch.compile can fuse the whole forward."""
    config = CONFIGS["pre_split_untied_bias_gelu"]
    model = loaded(config).eval()
    src, tgt = batch(config)
    explanation = torch._dynamo.explain(model)(torch.as_tensor(src), torch.as_tensor(tgt))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_import_needs_neither_jax_nor_transformers():
    """A torch-only user must not need jax, and hf_bridge builds on torch_model, not the reverse."""
    code = ("import sys, torch_model; "
            "print(sorted(m for m in ('jax', 'flax', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"

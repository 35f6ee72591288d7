"""jax_model: canonical names and shapes, hand-computed values, masks, inputs, capture, dropout.

Every dimension has its own size so a swapped axis cannot pass: batch 4, d_model 24, 3 heads
(head dim 8), d_ff 40, 2 encoder and 3 decoder layers, source 7, target 5, vocabularies 37
(and 43 for an unshared target side).  Source row 2 is all padding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from helpers import padded_ids, random_flat  # noqa: E402

import jax_model as jm  # noqa: E402
import spec  # noqa: E402

B, S, T = 4, 7, 5
BASE = dict(src_vocab_size=37, tgt_vocab_size=37, d_model=24, num_heads=3, d_ff=40,
            num_encoder_layers=2, num_decoder_layers=3, max_len=16, dropout_rate=0.1)
CONFIGS = {
    "post_interleaved_shared": spec.TransformerConfig(**BASE),
    "pre_split_untied_bias_gelu": spec.TransformerConfig(
        **{**BASE, "tgt_vocab_size": 43}, norm_position="pre", positional_layout="split",
        share_embeddings=False, tie_output=False, output_bias=True, activation="gelu"),
    "post_tied_bias_swish_unscaled": spec.TransformerConfig(
        **BASE, share_embeddings=False, output_bias=True, activation="swish",
        scale_embeddings=False, layer_norm_eps=1e-3),
}
ERF = np.vectorize(math.erf)
ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0))),
    "swish": lambda x: x / (1.0 + np.exp(-x)),
}


@pytest.fixture(params=list(CONFIGS))
def config(request) -> spec.TransformerConfig:
    return CONFIGS[request.param]


def batch(config: spec.TransformerConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return padded_ids(config, seed, B, S, T)


@pytest.fixture
def run(config):
    """(flat, params, src, tgt, logits, inter) for the config, deterministic."""
    flat = random_flat(config)
    params = jm.from_canonical(flat, config)
    src, tgt = batch(config)
    logits, inter = jm.forward(params, config, src, tgt)
    return flat, params, src, tgt, np.asarray(logits), inter


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[b, l, m] -> [b, h, l, d]: head i is columns i*d:(i+1)*d."""
    b, l, m = x.shape
    return x.reshape(b, l, heads, m // heads).transpose(0, 2, 1, 3)


def close(a, b, tol: float = 2e-5) -> None:
    """Normalised float32 difference, as the parity suite measures it."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))) <= tol


# -- names and shapes --------------------------------------------------------------------

def test_params_tree_is_the_canonical_name_set(config):
    flat = jm.to_canonical(jm.init(config, seed=3))
    expected = spec.param_shapes(config)
    assert set(flat) == set(expected)
    for name, shape in expected.items():
        assert flat[name].shape == shape, name
        assert flat[name].dtype == np.float32, name


def test_init_is_deterministic_and_seeded(config):
    a, b, c = (jm.to_canonical(jm.init(config, seed)) for seed in (0, 0, 1))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    kernel = "encoder/layer_0/self_attn/query/kernel"
    assert not np.array_equal(a[kernel], c[kernel])
    # biases start at zero, norms at identity, tables have std ~ d_model**-0.5
    np.testing.assert_array_equal(a["decoder/layer_1/ffn/w1/bias"], 0.0)
    np.testing.assert_array_equal(a["decoder/layer_1/ffn_norm/scale"], 1.0)
    table = a[spec.embedding_names(config)["decoder"]]
    assert abs(table.std() * math.sqrt(config.d_model) - 1.0) < 0.1


def test_init_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        jm.init(CONFIGS["post_interleaved_shared"], seed=1.5)
    with pytest.raises(ValueError, match="config"):
        jm.init({"d_model": 24}, seed=0)


def test_intermediates_are_exactly_the_canonical_set_in_execution_order(config, run):
    *_, inter = run
    expected = spec.intermediate_shapes(config, B, S, T)
    assert list(inter) == list(expected)
    for name, shape in expected.items():
        assert inter[name].shape == shape, name
        assert inter[name].dtype == np.float32, name


def test_canonical_round_trip_is_exact_and_keeps_the_forward(config, run):
    flat, params, src, tgt, logits, _ = run
    back = jm.to_canonical(params)
    assert set(back) == set(flat)
    for name in flat:
        np.testing.assert_array_equal(back[name], flat[name])
    again, _ = jm.forward(jm.from_canonical(back, config), config, src, tgt)
    np.testing.assert_array_equal(np.asarray(again), logits)


def test_from_canonical_is_strict(config):
    flat = random_flat(config)
    missing = dict(flat)
    del missing["decoder/layer_2/cross_attn/out/bias"]
    with pytest.raises(ValueError, match="missing.*cross_attn/out/bias"):
        jm.from_canonical(missing, config)
    with pytest.raises(ValueError, match="unexpected.*Dense_0"):
        jm.from_canonical({**flat, "encoder/Dense_0/kernel": np.zeros((2, 2), np.float32)},
                          config)
    bad = {**flat, "encoder/layer_0/ffn/w1/kernel": np.zeros((40, 24), np.float32)}
    with pytest.raises(ValueError, match="wrong shape.*ffn/w1/kernel"):
        jm.from_canonical(bad, config)
    ints = {**flat, "encoder/layer_0/ffn/w1/bias": np.zeros(40, np.int32)}
    with pytest.raises(ValueError, match="not floating point"):
        jm.from_canonical(ints, config)


# -- hand-computed values ----------------------------------------------------------------

def test_embeddings_are_scaled_tokens_plus_positions(config, run):
    flat, _, src, tgt, _, inter = run
    scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
    table = spec.sinusoidal_positions(config.max_len, config.d_model, config.positional_layout)
    for side, ids in (("encoder", src), ("decoder", tgt)):
        vectors = flat[spec.embedding_names(config)[side]][ids]
        close(inter[f"{side}/embed/tokens"], vectors * scale, 1e-6)
        diff = inter[f"{side}/embed/output"] - inter[f"{side}/embed/tokens"]
        close(diff, np.broadcast_to(table[: ids.shape[1]], diff.shape), 1e-6)


def test_projections_split_heads_as_contiguous_column_blocks(config, run):
    flat, *_, inter = run
    h, d = config.num_heads, config.head_dim
    p = "decoder/layer_1/cross_attn"
    x = inter["decoder/layer_1/cross_attn_norm/output" if config.norm_position == "pre"
              else "decoder/layer_1/self_attn_norm/output"]
    memory = inter["encoder/output"]
    for point, source in (("q", x), ("k", memory), ("v", memory)):
        proj = {"q": "query", "k": "key", "v": "value"}[point]
        expected = split_heads(source @ flat[f"{p}/{proj}/kernel"] + flat[f"{p}/{proj}/bias"], h)
        close(inter[f"{p}/{point}"], expected)
    scores = np.einsum("bhqd,bhkd->bhqk", inter[f"{p}/q"], inter[f"{p}/k"]) / math.sqrt(d)
    close(inter[f"{p}/scores"], scores)
    merged = inter[f"{p}/context"].transpose(0, 2, 1, 3).reshape(B, T, config.d_model)
    close(inter[f"{p}/output"], merged @ flat[f"{p}/out/kernel"] + flat[f"{p}/out/bias"])


def test_attention_weights_masks_and_context(config, run):
    _, _, src, _, _, inter = run
    pad = src == config.pad_id                                   # [b, s]
    causal_future = np.triu(np.ones((T, T), bool), k=1)          # [q, k]
    for prefix in spec.attention_names(config):
        w = inter[f"{prefix}/weights"]
        assert np.isfinite(w).all(), prefix
        close(w.sum(-1), np.ones(w.shape[:-1]), 1e-6)
        close(inter[f"{prefix}/context"], np.einsum("bhqk,bhkd->bhqd", w, inter[f"{prefix}/v"]))
        if prefix.startswith("decoder") and "self_attn" in prefix:
            assert (w[:, :, causal_future] == 0.0).all(), prefix
        else:
            masked = np.broadcast_to(pad[:, None, None, :], w.shape).copy()
            masked[2] = False  # row 2 is all padding: checked on its own
            assert (w[masked] == 0.0).all(), prefix
            # an all-pad source row attends uniformly, exactly, and gives no NaN
            np.testing.assert_array_equal(w[2], np.full(w[2].shape, 1.0 / S, np.float32))
        # scores are recorded before masking: masked keys keep their raw values
        assert np.isfinite(inter[f"{prefix}/scores"]).all()
        assert np.abs(inter[f"{prefix}/scores"]).max() < 1e3


def test_norms_and_residuals(config, run):
    flat, *_, inter = run
    eps = config.layer_norm_eps
    for side in spec.SIDES:
        x = inter[f"{side}/embed/output"]
        for i in range(spec.num_layers(config, side)):
            for sub in spec.sublayers(side):
                norm = f"{side}/layer_{i}/{sub}_norm"
                out = inter[f"{side}/layer_{i}/{sub}/output"]
                if config.norm_position == "post":
                    close(inter[f"{norm}/input"], x + out, 1e-6)   # norm/input = x + sublayer(x)
                    x = inter[f"{norm}/output"]
                else:
                    close(inter[f"{norm}/input"], x, 0.0)          # pre-LN: norm/input = x
                    x = x + out
                close(inter[f"{norm}/output"],
                      layer_norm(inter[f"{norm}/input"], flat[f"{norm}/scale"],
                                 flat[f"{norm}/bias"], eps))
        if config.norm_position == "pre":
            close(inter[f"{side}/final_norm/input"], x, 1e-6)
            x = layer_norm(x, flat[f"{side}/final_norm/scale"], flat[f"{side}/final_norm/bias"],
                           eps)
            close(inter[f"{side}/final_norm/output"], x)
        close(inter[f"{side}/output"], x)


def test_feed_forward_and_logits(config, run):
    flat, *_, logits, inter = run
    p = "encoder/layer_1/ffn"
    x = inter["encoder/layer_1/ffn_norm/output" if config.norm_position == "pre"
              else "encoder/layer_1/self_attn_norm/output"]
    pre = x @ flat[f"{p}/w1/kernel"] + flat[f"{p}/w1/bias"]
    close(inter[f"{p}/pre_activation"], pre)
    close(inter[f"{p}/activation"], ACTIVATIONS[config.activation](inter[f"{p}/pre_activation"]))
    close(inter[f"{p}/output"], inter[f"{p}/activation"] @ flat[f"{p}/w2/kernel"]
          + flat[f"{p}/w2/bias"])
    kernel = (flat[spec.embedding_names(config)["decoder"]].T if config.tie_output
              else flat["output/kernel"])
    expected = inter["decoder/output"] @ kernel + flat.get("output/bias", 0.0)
    close(logits, expected)
    np.testing.assert_array_equal(inter["logits"], logits)


# -- masks as behaviour --------------------------------------------------------------------

def test_decoder_is_causal(config, run):
    _, params, src, tgt, _, _ = run
    logits = np.asarray(jm.forward(params, config, src, tgt, capture=False)[0])
    changed = tgt.copy()
    changed[:, 3] = (changed[:, 3] + 1 - 3) % (config.tgt_vocab_size - 3) + 3
    other, _ = jm.forward(params, config, src, changed, capture=False)
    other = np.asarray(other)
    np.testing.assert_array_equal(other[:, :3], logits[:, :3])
    assert np.abs(other[:, 3:] - logits[:, 3:]).max() > 1e-3


def test_padding_changes_nothing(config, run):
    """Extra padding keys are invisible: row 1 (4 real tokens) gives the same logits with its
    source cut to 4 positions, and rows never see each other."""
    _, params, src, tgt, logits, _ = run
    short, _ = jm.forward(params, config, src[1:2, :4], tgt[1:2], capture=False)
    close(short, logits[1:2], 1e-6)
    other_rows = src.copy()
    other_rows[0, :3] = (other_rows[0, :3] + 1 - 3) % (config.src_vocab_size - 3) + 3
    changed, _ = jm.forward(params, config, other_rows, tgt, capture=False)
    close(np.asarray(changed)[1:], logits[1:], 1e-6)
    assert np.abs(np.asarray(changed)[0] - logits[0]).max() > 1e-3


# -- inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("field, change, message", [
    ("src", lambda s, t: (np.where(s == 0, 37, s), t), "src holds token id 37"),
    ("tgt", lambda s, t: (s, t - 2), "tgt holds token id -1"),
    ("src", lambda s, t: (s.astype(np.float32), t), "src must hold integer"),
    ("tgt", lambda s, t: (s, t[0]), "tgt must be a 2-D"),
    ("src", lambda s, t: (np.tile(s, (1, 3)), t), "src has length 21"),
    ("tgt", lambda s, t: (s, np.tile(t, (1, 4))), "tgt has length 20"),
    ("batch", lambda s, t: (s, t[:3]), "src and tgt batch sizes differ"),
])
def test_bad_inputs_raise_value_errors_naming_the_argument(field, change, message):
    config = CONFIGS["post_interleaved_shared"]
    params = jm.init(config, 0)
    src, tgt = change(*batch(config))
    with pytest.raises(ValueError, match=message):
        jm.forward(params, config, src, tgt)


def test_accepts_jax_and_list_free_integer_arrays():
    config = CONFIGS["post_interleaved_shared"]
    params = jm.init(config, 0)
    src, tgt = batch(config)
    a, _ = jm.forward(params, config, src.astype(np.int64), tgt, capture=False)
    b, _ = jm.forward(params, config, jnp.asarray(src, jnp.int32), jnp.asarray(tgt), capture=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- capture and the pure apply --------------------------------------------------------------

def test_capture_off_returns_nothing_and_costs_nothing():
    config = CONFIGS["post_interleaved_shared"]
    params = jm.init(config, 0)
    src, tgt = batch(config)
    _, inter = jm.forward(params, config, src, tgt, capture=False)
    assert inter == {}
    model = jm.Transformer(config)
    # without the mutable collection sow is a no-op: the traced program returns the logits only
    off = jax.make_jaxpr(lambda p, s, t: model.apply({"params": p}, s, t))(params, src, tgt)
    assert [a.shape for a in off.out_avals] == [(B, T, config.tgt_vocab_size)]
    on = jax.make_jaxpr(lambda p, s, t: model.apply({"params": p}, s, t,
                                                    mutable=["intermediates"]))(params, src, tgt)
    assert len(on.out_avals) == 1 + len(spec.intermediate_shapes(config, B, S, T))


def test_flatten_intermediates_names_by_module_path():
    x, y = jnp.ones((2, 3)), jnp.zeros(4)
    collection = {"encoder": {"layer_0": {"self_attn": {"q": (x,)}}}, "logits": (y,)}
    flat = jm.flatten_intermediates(collection)
    assert list(flat) == ["encoder/layer_0/self_attn/q", "logits"]
    assert isinstance(flat["logits"], np.ndarray)
    np.testing.assert_array_equal(flat["encoder/layer_0/self_attn/q"], np.ones((2, 3)))
    with pytest.raises(ValueError, match="logits.*recorded 2 times"):
        jm.flatten_intermediates({"logits": (y, y)})


def test_pure_apply_matches_forward_and_jits():
    config = CONFIGS["pre_split_untied_bias_gelu"]
    params = jm.from_canonical(random_flat(config, 1), config)
    src, tgt = batch(config, 1)
    expected, _ = jm.forward(params, config, src, tgt, capture=False)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(lambda p, s, t: jm.apply(p, config, s, t))(params, src, tgt)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-6)


# -- dropout ---------------------------------------------------------------------------------

def test_dropout_needs_an_rng_and_is_reproducible():
    config = CONFIGS["post_interleaved_shared"]
    params = jm.from_canonical(random_flat(config), config)
    src, tgt = batch(config)
    clean, _ = jm.forward(params, config, src, tgt, capture=False)
    with pytest.raises(ValueError, match="rng"):
        jm.forward(params, config, src, tgt, deterministic=False)
    a, inter = jm.forward(params, config, src, tgt, deterministic=False, rng=7)
    b, _ = jm.forward(params, config, src, tgt, deterministic=False, rng=jax.random.PRNGKey(7))
    c, _ = jm.forward(params, config, src, tgt, deterministic=False, rng=8)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(clean)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    # embedding dropout: kept entries are scaled by 1/(1-p), dropped ones are exactly zero
    out, tokens = inter["encoder/embed/output"], inter["encoder/embed/tokens"]
    table = spec.sinusoidal_positions(config.max_len, config.d_model)[:S]
    kept = out != 0
    assert 0.8 < kept.mean() < 0.97
    close(out[kept], ((tokens + table) / (1 - config.dropout_rate))[kept], 1e-6)
    # no dropout inside the FFN: activation is still act(pre_activation)
    p = "encoder/layer_0/ffn"
    close(inter[f"{p}/activation"], np.maximum(inter[f"{p}/pre_activation"], 0.0), 0.0)


def test_attention_dropout_applies_after_recording_the_weights():
    config = CONFIGS["post_interleaved_shared"].replace(attention_dropout_rate=0.5,
                                                        dropout_rate=0.0)
    params = jm.from_canonical(random_flat(config), config)
    src, tgt = batch(config)
    _, inter = jm.forward(params, config, src, tgt, deterministic=False, rng=0)
    p = "encoder/layer_0/self_attn"
    w = inter[f"{p}/weights"]
    close(w.sum(-1), np.ones(w.shape[:-1]), 1e-6)   # recorded before dropout
    undropped = np.einsum("bhqk,bhkd->bhqd", w, inter[f"{p}/v"])
    assert np.abs(inter[f"{p}/context"] - undropped).max() > 1e-3


def test_bfloat16_params_compute_in_bfloat16():
    """The position table follows the token vectors' dtype, so nothing promotes to float32."""
    config = CONFIGS["pre_split_untied_bias_gelu"]
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), jm.init(config, 0))
    src, tgt = batch(config)
    jaxpr = jax.make_jaxpr(lambda p: jm.apply(p, config, src, tgt))(params)
    # every matmul, also those nested in jnp.einsum's inner jit, writes a bf16 result
    dots = [line for line in str(jaxpr).splitlines() if "= dot_general" in line]
    assert len(dots) >= 4 * (config.num_encoder_layers + 2 * config.num_decoder_layers)
    assert all(line.split("=")[0].split(":")[1].startswith("bf16") for line in dots), dots
    assert jaxpr.out_avals[0].dtype == jnp.bfloat16

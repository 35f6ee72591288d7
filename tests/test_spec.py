"""The framework-free contract: config validation, canonical names, positions, checkpoints."""

import dataclasses
import json
import math

import numpy as np
import pytest

import spec
from spec import TrainConfig, TransformerConfig


def test_defaults_are_the_paper_base_model():
    c = TransformerConfig()
    assert (c.d_model, c.num_heads, c.num_encoder_layers, c.num_decoder_layers, c.d_ff) == (
        512, 8, 6, 6, 2048)
    assert (c.dropout_rate, c.layer_norm_eps, c.norm_position, c.activation) == (
        0.1, 1e-5, "post", "relu")
    assert (c.pad_id, c.bos_id, c.eos_id) == (0, 1, 2)
    assert c.head_dim == 64


@pytest.mark.parametrize("name,expected", [
    ("tiny", (32, 4, 2, 2, 64, 64)), ("small", (256, 8, 3, 3, 1024, 8000)),
    ("base", (512, 8, 6, 6, 2048, 8000)), ("big", (1024, 16, 6, 6, 4096, 8000)),
])
def test_presets(name, expected):
    c = TransformerConfig.preset(name)
    assert (c.d_model, c.num_heads, c.num_encoder_layers, c.num_decoder_layers, c.d_ff,
            c.src_vocab_size) == expected
    assert TransformerConfig.preset("big").dropout_rate == 0.3
    assert TransformerConfig.preset(name, d_ff=12).d_ff == 12


def test_unknown_preset_names_it_and_the_known_ones():
    with pytest.raises(ValueError, match=r"'huge'.*tiny, small, base, big"):
        TransformerConfig.preset("huge")


@pytest.mark.parametrize("changes,needle", [
    (dict(d_model=30, num_heads=4), "d_model=30.*num_heads=4"),
    (dict(activation="tanh"), "activation='tanh'"),
    (dict(norm_position="middle"), "norm_position='middle'"),
    (dict(positional_layout="rotary"), "positional_layout='rotary'"),
    (dict(d_model=0), "d_model=0"),
    (dict(num_encoder_layers=-1), "num_encoder_layers=-1"),
    (dict(dropout_rate=1.0), "dropout_rate=1.0"),
    (dict(attention_dropout_rate=-0.1), "attention_dropout_rate=-0.1"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps=0.0"),
    (dict(eos_id=64), "eos_id=64"),
    (dict(pad_id=-1), "pad_id=-1"),
    (dict(tgt_vocab_size=50), "share_embeddings.*src_vocab_size=64.*tgt_vocab_size=50"),
    (dict(d_model=32.0), "d_model=32.0"),
    (dict(tie_output="yes"), "tie_output='yes'"),
    (dict(colour="red"), "unknown config field"),
])
def test_invalid_values_name_field_and_value(changes, needle):
    with pytest.raises(ValueError, match=needle):
        TransformerConfig.preset("tiny").replace(**changes)


def test_json_round_trip(tmp_path):
    c = TransformerConfig.preset("tiny", norm_position="pre", activation="gelu",
                                 positional_layout="split", share_embeddings=False,
                                 tgt_vocab_size=50, output_bias=True)
    assert TransformerConfig.from_json(c.to_json()) == c
    c.to_json(tmp_path / "c.json")
    assert TransformerConfig.from_json(tmp_path / "c.json") == c
    assert json.loads(c.to_json())["tgt_vocab_size"] == 50
    with pytest.raises(ValueError, match="not valid JSON"):
        TransformerConfig.from_json("{oops")
    with pytest.raises(FileNotFoundError):
        TransformerConfig.from_json(tmp_path / "missing.json")


def test_config_is_frozen_and_hashable():
    c = TransformerConfig.preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.d_model = 64
    assert hash(c) == hash(TransformerConfig.preset("tiny"))


def test_param_shapes_cover_every_variant():
    c = TransformerConfig.preset("tiny")
    shapes = spec.param_shapes(c)
    assert shapes["shared_embedding/embedding"] == (64, 32)
    assert shapes["decoder/layer_1/cross_attn/key/kernel"] == (32, 32)
    assert shapes["encoder/layer_0/ffn/w1/kernel"] == (32, 64)
    assert shapes["encoder/layer_0/ffn/w2/kernel"] == (64, 32)
    assert "encoder/layer_0/cross_attn/query/kernel" not in shapes
    assert not any("final_norm" in n or n.startswith("output/") for n in shapes)
    # counted by hand: encoder layer = 8 attention + 4 ffn + 4 norm = 16,
    # dec layer = 16 attn + 4 ffn + 6 norm = 26; plus one embedding.
    assert len(shapes) == 1 + 2 * 16 + 2 * 26
    untied = spec.param_shapes(c.replace(share_embeddings=False, tgt_vocab_size=40,
                                         tie_output=False, output_bias=True,
                                         norm_position="pre"))
    assert untied["decoder/embedding/embedding"] == (40, 32)
    assert untied["output/kernel"] == (32, 40) and untied["output/bias"] == (40,)
    assert untied["encoder/final_norm/scale"] == (32,)


def test_intermediate_order_follows_norm_position():
    c = TransformerConfig.preset("tiny", num_encoder_layers=1, num_decoder_layers=1)
    post = list(spec.intermediate_shapes(c, 2, 5, 3))
    assert post.index("encoder/layer_0/self_attn/output") < post.index(
        "encoder/layer_0/self_attn_norm/input")
    pre = list(spec.intermediate_shapes(c.replace(norm_position="pre"), 2, 5, 3))
    assert pre.index("encoder/layer_0/self_attn_norm/output") < pre.index(
        "encoder/layer_0/self_attn/q")
    shapes = spec.intermediate_shapes(c, 2, 5, 3)
    assert shapes["decoder/layer_0/cross_attn/k"] == (2, 4, 5, 8)
    assert shapes["decoder/layer_0/cross_attn/weights"] == (2, 4, 3, 5)
    assert shapes["logits"] == (2, 3, 64) and post[-1] == "logits"


@pytest.mark.parametrize("d", [6, 7])
def test_positions_match_the_formula(d):
    for layout in ("interleaved", "split"):
        table = spec.sinusoidal_positions(9, d, layout)
        assert table.dtype == np.float32 and table.shape == (9, d)
        for pos in (0, 3, 8):
            for i in range((d + 1) // 2):
                angle = pos / 10000 ** (2 * i / d)
                sin_at = 2 * i if layout == "interleaved" else i
                assert table[pos, sin_at] == np.float32(math.sin(angle))
                if i < d // 2:
                    cos_at = 2 * i + 1 if layout == "interleaved" else (d + 1) // 2 + i
                    assert table[pos, cos_at] == np.float32(math.cos(angle))


def _random_params(config, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32)
            for n, s in spec.param_shapes(config).items()}


def test_checkpoint_round_trip_and_atomic_replace(tmp_path):
    c = TransformerConfig.preset("tiny")
    flat = _random_params(c)
    spec.save_checkpoint(tmp_path / "ckpt", flat, c)
    loaded, c2 = spec.load_checkpoint(tmp_path / "ckpt")
    assert c2 == c and set(loaded) == set(flat)
    for n in flat:
        np.testing.assert_array_equal(loaded[n], flat[n])
    flat2 = _random_params(c, seed=1)
    spec.save_checkpoint(tmp_path / "ckpt", flat2, c)
    loaded2, _ = spec.load_checkpoint(tmp_path / "ckpt")
    np.testing.assert_array_equal(loaded2["shared_embedding/embedding"],
                                  flat2["shared_embedding/embedding"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers


def test_checkpoint_errors_list_every_problem(tmp_path):
    c = TransformerConfig.preset("tiny")
    flat = _random_params(c)
    del flat["encoder/layer_0/ffn/w1/bias"]
    flat["encoder/layer_0/ffn/w2/kernel"] = np.zeros((3, 3), np.float32)
    flat["bogus"] = np.zeros(3, np.float32)
    flat["decoder/layer_0/ffn/w1/bias"] = np.zeros(64, np.int32)
    with pytest.raises(ValueError) as err:
        spec.save_checkpoint(tmp_path / "x", flat, c)
    msg = str(err.value)
    for needle in ("missing", "encoder/layer_0/ffn/w1/bias", "unexpected", "bogus",
                   "wrong shape", "encoder/layer_0/ffn/w2/kernel", "not floating point",
                   "decoder/layer_0/ffn/w1/bias"):
        assert needle in msg
    with pytest.raises(FileNotFoundError):
        spec.load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(c.to_json())
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable"):
        spec.load_checkpoint(tmp_path / "broken")


def test_token_checks_name_the_argument():
    c = TransformerConfig.preset("tiny", max_len=8)
    ok = np.ones((2, 4), np.int32)
    with pytest.raises(ValueError, match="src holds token id 64"):
        spec.check_tokens(np.full((2, 4), 64), ok, c)
    with pytest.raises(ValueError, match="tgt holds token id -1"):
        spec.check_tokens(ok, np.full((2, 4), -1), c)
    with pytest.raises(ValueError, match="src must hold integer"):
        spec.check_tokens(ok.astype(np.float32), ok, c)
    with pytest.raises(ValueError, match="tgt must be a 2-D"):
        spec.check_tokens(ok, np.ones(4, np.int32), c)
    with pytest.raises(ValueError, match="src has length 9, over the config's max_len=8"):
        spec.check_tokens(np.ones((2, 9), np.int32), ok, c)
    with pytest.raises(ValueError, match="batch sizes differ"):
        spec.check_tokens(ok, np.ones((3, 4), np.int32), c)


def test_reference_loss_by_hand():
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]]))
    labels = np.array([[0, 0]])
    got = spec.label_smoothed_cross_entropy(logits, labels, pad_id=2, smoothing=0.0)
    assert got == pytest.approx((-np.log(0.5) - np.log(0.2)) / 2)
    got = spec.label_smoothed_cross_entropy(logits, np.array([[0, 2]]), pad_id=2, smoothing=0.3)
    uniform = -np.mean(np.log([0.5, 0.25, 0.25]))
    assert got == pytest.approx(0.7 * -np.log(0.5) + 0.3 * uniform)


def test_train_config_and_schedule():
    t = TrainConfig(warmup_steps=4)
    lr = [spec.learning_rate(s, t, 16) for s in range(1, 9)]
    assert lr[3] == pytest.approx(16 ** -0.5 * 4 ** -0.5)  # peak at warmup
    assert lr[0] < lr[1] < lr[2] < lr[3] > lr[4] > lr[7]
    const = t.replace(schedule="constant", learning_rate=1e-3)
    assert spec.learning_rate(2, const, 16) == pytest.approx(5e-4)
    assert spec.learning_rate(100, const, 16) == pytest.approx(1e-3)
    np.testing.assert_allclose(spec.learning_rate(np.arange(1, 9), t, 16, np), lr)
    with pytest.raises(ValueError, match="schedule='cosine'"):
        TrainConfig(schedule="cosine")
    # a cool-down over the last 4 of 10 steps: full schedule until step 7, then 3/4, 2/4, 1/4
    cool = t.replace(max_steps=10, cooldown_steps=4)
    base = [spec.learning_rate(s, t, 16) for s in range(1, 11)]
    got = [spec.learning_rate(s, cool, 16) for s in range(1, 11)]
    np.testing.assert_allclose(got, base[:7] + [b * f for b, f in zip(base[7:], (.75, .5, .25))])
    np.testing.assert_allclose(spec.learning_rate(np.arange(1, 11), cool, 16, np), got)
    flat = const.replace(max_steps=4, cooldown_steps=4, warmup_steps=0)
    assert [spec.learning_rate(s, flat, 16) for s in (1, 4)] == pytest.approx([1e-3, 2.5e-4])
    with pytest.raises(ValueError, match=r"cooldown_steps=3 is invalid: expected 0, or at most "
                                         r"max_steps=0"):
        TrainConfig(cooldown_steps=3)
    with pytest.raises(ValueError, match="cooldown_steps=11"):
        TrainConfig(max_steps=10, cooldown_steps=11)
    with pytest.raises(ValueError, match="batch_size=0"):
        TrainConfig(batch_size=0)

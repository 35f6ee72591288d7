"""spec.interventions: the framework-free specs and metrics, checked by hand-computed values."""

import numpy as np
import pytest

from spec import TransformerConfig, intermediate_shapes, label_smoothed_cross_entropy
from spec import interventions as iv

CONFIG = TransformerConfig.preset("tiny", src_vocab_size=11, tgt_vocab_size=11,
                                  share_embeddings=False)
B, S, T = 2, 5, 3
SHAPES = intermediate_shapes(CONFIG, B, S, T)
WEIGHTS = "decoder/layer_1/cross_attn/weights"  # [b, h, t, s] = [2, 4, 3, 5]


def test_zero_ablation_of_one_head_and_position_by_hand():
    value = np.arange(np.prod(SHAPES[WEIGHTS]), dtype=np.float32).reshape(SHAPES[WEIGHTS])
    spec = iv.zero_ablate(WEIGHTS, heads=[2], positions=[1], keys=[0, 4])
    spec.check(SHAPES)
    out = spec.apply_numpy(value)
    changed = out != value
    assert changed.sum() == B * 1 * 1 * 2  # every row, one head, one query, two keys
    assert (out[:, 2, 1, [0, 4]] == 0).all()
    np.testing.assert_array_equal(np.delete(out, 2, axis=1), np.delete(value, 2, axis=1))


def test_every_kind_is_the_documented_affine_rewrite():
    name = "encoder/layer_0/ffn/output"  # [b, s, d]
    rng = np.random.default_rng(0)
    value, other = (rng.normal(size=SHAPES[name]).astype(np.float32) for _ in range(2))
    vector = rng.normal(size=(CONFIG.d_model,)).astype(np.float32)
    np.testing.assert_array_equal(iv.patch_from(name, other).apply_numpy(value), other)
    np.testing.assert_allclose(iv.scale(name, 3.0).apply_numpy(value), 3 * value, rtol=1e-6)
    np.testing.assert_allclose(iv.add(name, vector, positions=[4]).apply_numpy(value)[:, 4],
                               value[:, 4] + vector, rtol=1e-6)
    mean = iv.mean_ablate(name, other).apply_numpy(value)
    np.testing.assert_allclose(mean, np.broadcast_to(other.mean(0), value.shape), rtol=1e-6)
    resampled = iv.resample_ablate(name, other, seed=3).apply_numpy(value)
    idx = np.random.default_rng(3).integers(0, B, size=B)
    np.testing.assert_array_equal(resampled, other[idx])


@pytest.mark.parametrize("make, message", [
    (lambda: iv.zero_ablate("decoder/layer_9/self_attn/q"), "not a canonical intermediate"),
    (lambda: iv.zero_ablate(WEIGHTS, heads=[4]), r"heads \[4\] out of range"),
    (lambda: iv.zero_ablate(WEIGHTS, positions=[3]), r"positions \[3\] out of range"),
    (lambda: iv.zero_ablate(WEIGHTS, keys=[-1]), r"keys \[-1\] out of range"),
    (lambda: iv.patch_from(WEIGHTS, np.zeros((2, 4, 3, 6))), r"shape \(2, 4, 3, 6\)"),
    (lambda: iv.zero_ablate("encoder/layer_0/ffn/output", heads=[0]), "h axis"),
    (lambda: iv.zero_ablate("decoder/layer_0/self_attn/q", keys=[0]), "key axis"),
    (lambda: iv.scale(WEIGHTS, float("nan")), "NaN or inf"),
    (lambda: iv.zero_ablate(WEIGHTS, heads=[1, 1]), "repeats"),
])
def test_bad_specs_name_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make().check(SHAPES)


def test_check_interventions_refuses_two_on_one_name():
    specs = [iv.zero_ablate(WEIGHTS), iv.scale(WEIGHTS, 2.0)]
    with pytest.raises(ValueError, match="two interventions on"):
        iv.check_interventions(specs, CONFIG, B, S, T)


def test_loss_metric_equals_the_reference_loss():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(B, T, 11)).astype(np.float32)
    labels = np.array([[4, 5, 0], [6, 2, 7]])
    metric = iv.loss_metric(labels, 11, pad_id=0, label_smoothing=0.1)
    assert metric.value_numpy(logits) == pytest.approx(
        label_smoothed_cross_entropy(logits, labels, 0, 0.1), rel=1e-6)


def test_logprob_and_logit_diff_metrics_by_hand():
    logits = np.zeros((1, 2, 4), np.float32)
    logits[0, 1] = [0.0, 1.0, 3.0, 0.0]
    diff = iv.logit_diff(1, 2, 4, position=1, correct=2, wrong=1)
    assert diff.value_numpy(logits) == pytest.approx(2.0)
    lp = iv.target_logprob(np.array([[0, 2]]), 4, pad_id=0)
    expected = 3.0 - np.log(np.exp([0.0, 1.0, 3.0, 0.0]).sum())
    assert lp.value_numpy(logits) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="correct"):
        iv.logit_diff(1, 2, 4, position=0, correct=4, wrong=0)

"""analysis: hand-computed statistics, constructed attention patterns, contributions, gradient
flow, diffs, the report schema, the trace, figures, the model adapters and the demo."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import attention as attn
from analysis.analyzer import TransformerAnalyzer
from analysis.contributions import layer_contributions
from analysis.diff import diff_captures, error_stats
from analysis.gradients import EXPLODING_NORM, VANISHING_NORM, gradient_flow
from analysis.inputs import (
    attention_masks,
    check_attention_mask,
    default_target,
    labels_from_decoder_input,
    prepare_inputs,
)
from analysis.internals import load_captures
from analysis.qkv import head_statistics, qkv_evolution
from analysis.schema import load_schema, validate
from analysis.trace import format_trace, format_trace_side_by_side
from spec import TransformerConfig

ROOT = Path(__file__).resolve().parents[1]


def tiny(**overrides) -> TransformerConfig:
    return TransformerConfig.preset("tiny", dropout_rate=0.0, **overrides)


# -- entropy and pattern classes ------------------------------------------------------------
def test_entropy_hand_computed():
    w = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.25, 0.25, 0.0], [0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(attn.entropy(w), [math.log(4), 1.5 * math.log(2), 0.0])


L = 10  # constructed sequences: long enough that uniform attention is not "local"


def _rows(fn) -> np.ndarray:
    return np.stack([fn(q) for q in range(L)])  # [q, k]


def _onehot(k: int, n: int = L) -> np.ndarray:
    v = np.zeros(n)
    v[k] = 1.0
    return v


def _band(q: int) -> np.ndarray:
    ks = [k for k in (q - 1, q, q + 1) if 0 <= k < L]
    v = np.zeros(L)
    v[ks] = 1.0 / len(ks)
    return v


CONSTRUCTED = {
    # every row looks at the previous token (row 0 at itself): a fixed offset of -1
    "positional": _rows(lambda q: _onehot(max(q - 1, 0))),
    # every row looks at the first token
    "delimiter": _rows(lambda q: _onehot(0)),
    # uniform over all keys
    "global": np.full((L, L), 1.0 / L),
    # content-based: 0.9 / 0.1 on two keys whose offset changes from row to row
    "focused": _rows(lambda q: 0.9 * _onehot((3 * q + 5) % L) + 0.1 * _onehot((7 * q + 2) % L)),
    # spread evenly over the diagonal band k in {q-1, q, q+1}
    "local": _rows(_band),
    # two content keys (0.35, 0.25) plus a uniform floor: no mass reaches its threshold and
    # the entropy stays below "global"
    "mixed": _rows(lambda q: 0.35 * _onehot((3 * q + 5) % L) + 0.25 * _onehot((7 * q + 2) % L)
                   + 0.4 / L),
}


def test_constructed_patterns_are_classified():
    heads = list(CONSTRUCTED)
    w = np.stack([CONSTRUCTED[h] for h in heads])[None]  # [1, h, q, k]
    queries, keys = np.ones((1, L), bool), np.ones((1, L, L), bool)
    got = attn.head_metrics(w, queries, keys)
    assert [m["pattern"] for m in got] == heads
    prev = got[heads.index("positional")]
    assert prev["positional_offset"] == -1
    assert prev["positional_mass"] == pytest.approx((L - 1) / L)  # row 0 cannot look back
    assert got[heads.index("global")]["normalized_entropy"] == pytest.approx(1.0)
    assert got[heads.index("delimiter")]["first_token_mass"] == pytest.approx(1.0)


def test_delimiter_head_on_eos_key():
    """A head that looks at the eos (last real token) is a delimiter head only when told."""
    src = np.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 2]])
    w = _rows(lambda q: _onehot(L - 1))[None, None]
    queries, keys = np.ones((1, L), bool), np.ones((1, L, L), bool)
    assert attn.head_metrics(w, queries, keys)[0]["pattern"] == "focused"
    delim = np.isin(src, [2])
    assert attn.head_metrics(w, queries, keys, delim)[0]["pattern"] == "delimiter"


def test_short_uniform_rows_are_not_local():
    """Uniform attention over 3 keys puts most mass near the diagonal, but no more than
    uniform attention would: the lift rule keeps it global."""
    w = np.full((1, 1, 3, 3), 1 / 3)
    m = attn.head_metrics(w, np.ones((1, 3), bool), np.ones((1, 3, 3), bool))[0]
    assert m["local_mass"] > attn.LOCAL_MIN_MASS and m["pattern"] == "global"


def test_causal_and_padded_masks_count_only_real_choices():
    """Decoder self-attention uniform over the causal prefix is global (rows with one key are
    skipped); pad keys and pad query rows do not count."""
    t = 8
    causal = np.tril(np.ones((t, t)))
    w = (causal / causal.sum(-1, keepdims=True))[None, None]
    masks = attention_masks(None, None, 0, 1, t, t)
    m = attn.head_metrics(w, masks.queries["decoder/self_attn"], masks.keys["decoder/self_attn"])
    assert m[0]["pattern"] == "global"
    assert m[0]["normalized_entropy"] == pytest.approx(1.0)
    # encoder: 6 real tokens + 2 pads; uniform over the real keys
    src = np.array([[5, 6, 7, 8, 9, 2, 0, 0]])
    masks = attention_masks(src, src, 0, 1, 8, 8)
    w = np.zeros((1, 1, 8, 8))
    w[..., :6] = 1 / 6
    m = attn.head_metrics(w, masks.queries["encoder/self_attn"], masks.keys["encoder/self_attn"])
    assert m[0]["entropy"] == pytest.approx(math.log(6))
    assert m[0]["normalized_entropy"] == pytest.approx(1.0)


def test_cross_attention_diagonal_follows_lengths():
    """Cross-attention t=5 -> s=9 along k = 2q is local (monotonic alignment), spread over
    the neighbours so that it is not one fixed offset."""
    t, s = 5, 9
    w = np.zeros((1, 1, t, s))
    for q in range(t):
        for k in (2 * q - 1, 2 * q, 2 * q + 1):
            if 0 <= k < s:
                w[0, 0, q, k] = 1.0
    w /= w.sum(-1, keepdims=True)
    masks = attention_masks(None, None, 0, 1, s, t)
    m = attn.head_metrics(w, masks.queries["decoder/cross_attn"],
                          masks.keys["decoder/cross_attn"])[0]
    assert m["local_mass"] == pytest.approx(1.0)
    assert m["pattern"] == "local"


# -- inputs -----------------------------------------------------------------------------------
def test_default_target_labels_and_mask_checks():
    cfg = tiny()
    src = np.array([[5, 6, 7, 2, 0], [8, 9, 10, 11, 2]])
    tgt = default_target(src, cfg)
    np.testing.assert_array_equal(tgt, [[1, 5, 6, 7, 0], [1, 8, 9, 10, 11]])
    np.testing.assert_array_equal(labels_from_decoder_input(tgt, cfg), src)
    lab = labels_from_decoder_input(np.array([[1, 5, 6, 0, 0], [1, 8, 9, 10, 11]]), cfg)
    np.testing.assert_array_equal(lab, [[5, 6, 2, 0, 0], [8, 9, 10, 11, 2]])
    check_attention_mask(src != 0, src, 0)
    with pytest.raises(ValueError, match="attention_mask disagrees with pad_id=0 masking at \\[0, 4\\]"):
        check_attention_mask(np.ones_like(src), src, 0)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        check_attention_mask(np.ones((2, 3)), src, 0)
    s, t, l, source = prepare_inputs(cfg, src[0])  # 1-D input gets a batch axis
    assert s.shape == (1, 5) and source == "copy" and t[0, 0] == cfg.bos_id
    np.testing.assert_array_equal(l, s)
    with pytest.raises(ValueError, match="outside the target vocabulary"):
        default_target(np.array([[70]]), tiny(share_embeddings=False, src_vocab_size=80))


# -- qkv statistics ---------------------------------------------------------------------------
def test_qkv_head_statistics_hand_computed_and_pads_excluded():
    x = np.zeros((1, 2, 3, 2))  # [b, h, len, k]
    x[0, 0] = [[3.0, 4.0], [3.0, 4.0], [100.0, 100.0]]  # last position is a pad
    x[0, 1] = [[1.0, -1.0], [1.0, -1.0], [100.0, 100.0]]
    stats = head_statistics(x, np.array([[True, True, False]]))
    np.testing.assert_allclose(stats["mean"], [3.5, 0.0])
    np.testing.assert_allclose(stats["std"], [0.5, 1.0])
    np.testing.assert_allclose(stats["norm"], [5.0, math.sqrt(2)])


def test_qkv_evolution_series_and_spread():
    caps = []
    for step, value in ((10, 2.0), (0, 1.0), (20, 3.0)):
        q = np.full((1, 2, 4, 3), value)
        caps.append((step, {f"encoder/layer_0/self_attn/{p}": q for p in ("q", "k", "v")}))
    series = qkv_evolution(caps)["encoder/layer_0/self_attn"]["q"]
    assert series["steps"] == [0, 10, 20]
    np.testing.assert_allclose(np.array(series["mean"])[:, 0], [1.0, 2.0, 3.0])
    spread = series["spread"]["mean"]
    assert spread["min"] == [1.0, 1.0] and spread["max"] == [3.0, 3.0]
    np.testing.assert_allclose(spread["std"], [np.std([1, 2, 3])] * 2)
    with pytest.raises(ValueError, match="captures must"):
        qkv_evolution([])


# -- layer contributions ----------------------------------------------------------------------
def test_contribution_ratios_on_a_constructed_residual_stream():
    cfg = tiny(num_encoder_layers=1, num_decoder_layers=1)
    x = np.zeros((1, 2, 32))
    x[0, 0, 0], x[0, 1, 1] = 2.0, 4.0                         # residual stream, norms 2 and 4
    f_attn = 0.5 * x                                           # ratio 0.5, cosine 1
    f_ffn = np.zeros_like(x)
    f_ffn[0, 0, 2], f_ffn[0, 1, 3] = 1.0, 1.0                  # orthogonal: ratio 1/2, 1/4
    x2 = x + f_attn                                            # what the ffn reads (no norm)
    inter = {"encoder/layer_0/self_attn/output": f_attn,
             "encoder/layer_0/self_attn_norm/input": x + f_attn,   # post-LN: x + f(x)
             "encoder/layer_0/ffn/output": f_ffn,
             "encoder/layer_0/ffn_norm/input": x2 + f_ffn}
    got = layer_contributions(inter, cfg)
    assert got["encoder/layer_0/self_attn"]["norm_ratio"] == pytest.approx(0.5)
    assert got["encoder/layer_0/self_attn"]["cosine"] == pytest.approx(1.0)
    assert got["encoder/layer_0/ffn"]["norm_ratio"] == pytest.approx((1 / 3 + 1 / 6) / 2)
    assert got["encoder/layer_0/ffn"]["cosine"] == pytest.approx(0.0)
    # pre-LN: the norm input *is* the residual stream
    pre = {"encoder/layer_0/self_attn/output": -x, "encoder/layer_0/self_attn_norm/input": x}
    got = layer_contributions(pre, cfg.replace(norm_position="pre"))
    assert got["encoder/layer_0/self_attn"]["norm_ratio"] == pytest.approx(1.0)
    assert got["encoder/layer_0/self_attn"]["cosine"] == pytest.approx(-1.0)
    # only real tokens count
    real = np.array([[True, False]])
    got = layer_contributions(inter, cfg, src_real=real)
    assert got["encoder/layer_0/ffn"]["norm_ratio"] == pytest.approx(1 / 3)


# -- gradient flow ----------------------------------------------------------------------------
def test_gradient_norm_aggregation_and_warnings():
    grads = {
        "decoder/layer_0/ffn/w1/kernel": np.array([[3.0, 4.0]]),         # 5
        "shared_embedding/embedding": np.array([12.0, 0.0]),             # 12
        "encoder/layer_0/self_attn/query/kernel": np.array([[3.0]]),     # 3
        "encoder/layer_0/self_attn_norm/scale": np.array([4.0]),         # 4
        "encoder/layer_1/ffn/w2/bias": np.array([1e-9]),                 # vanishing
        "decoder/layer_0/ffn/w1/bias": np.array([12.0]),                 # with the kernel: 13
        "decoder/layer_1/cross_attn/out/kernel": np.full((2, 2), 1e3),  # 2000: exploding
    }
    flow = gradient_flow(grads, loss=1.5)
    assert list(flow["layers"]) == ["embedding", "encoder/layer_0", "encoder/layer_1",
                                    "decoder/layer_0", "decoder/layer_1"]
    assert flow["layers"]["encoder/layer_0"] == pytest.approx(5.0)
    assert flow["layers"]["decoder/layer_0"] == pytest.approx(13.0)
    assert flow["sublayers"]["encoder/layer_0/self_attn"] == pytest.approx(3.0)
    assert flow["sublayers"]["encoder/layer_0/self_attn_norm"] == pytest.approx(4.0)
    assert flow["parameters"]["decoder/layer_0/ffn/w1/kernel"] == pytest.approx(5.0)
    total = math.sqrt(25 + 144 + 9 + 16 + 1e-18 + 144 + 4 * 1e6)
    assert flow["total_norm"] == pytest.approx(total)
    kinds = {w["layer"]: w["kind"] for w in flow["warnings"]}
    assert kinds == {"encoder/layer_1": "vanishing", "decoder/layer_1": "exploding"}
    assert flow["thresholds"] == {"vanishing_norm": VANISHING_NORM, "vanishing_ratio": 1e-3,
                                  "exploding_norm": EXPLODING_NORM}
    # relative vanishing and non-finite
    flow = gradient_flow({"encoder/layer_0/ffn/w1/bias": np.array([1.0]),
                          "encoder/layer_1/ffn/w1/bias": np.array([1e-5]),
                          "decoder/layer_0/ffn/w1/bias": np.array([np.nan])})
    kinds = {w["layer"]: w["kind"] for w in flow["warnings"]}
    assert kinds == {"encoder/layer_1": "vanishing_relative", "decoder/layer_0": "non_finite"}
    assert flow["layers"]["decoder/layer_0"] is None
    with pytest.raises(ValueError, match="not a canonical parameter name"):
        gradient_flow({"Dense_0/kernel": np.ones(1)})


# -- cross-framework diff ---------------------------------------------------------------------
def test_diff_statistics_and_missing_names():
    a = {"x": np.array([0.5, -0.25]), "big": np.array([10.0, -20.0]),
         "only_a": np.ones(2), "shape": np.ones((2, 2))}
    b = {"x": np.array([0.5, 0.25]), "big": np.array([10.0, -18.0]),
         "only_b": np.ones(1), "shape": np.ones((2, 3))}
    d = diff_captures(a, b, "jax", "torch", tolerance=0.05)
    x, big = d["entries"]["x"], d["entries"]["big"]
    assert x["max_abs"] == pytest.approx(0.5) and x["normalized"] == pytest.approx(0.5)
    assert x["mean_abs"] == pytest.approx(0.25) and not x["ok"]
    assert big["max_abs"] == pytest.approx(2.0) and big["normalized"] == pytest.approx(0.1)
    assert d["entries"]["shape"] == {"shape_ref": [2, 2], "shape_other": [2, 3], "ok": False}
    assert d["missing"] == {"jax": ["only_b"], "torch": ["only_a"]}
    assert d["worst"] == "x"
    assert error_stats(np.zeros(3), np.full(3, 1e-7))["normalized"] == pytest.approx(1e-7)
    with pytest.raises(ValueError, match="must differ"):
        diff_captures(a, b, "jax", "jax")


# -- schema -----------------------------------------------------------------------------------
def test_minimal_validator_rejects_what_the_schema_forbids():
    schema = load_schema()
    head = {"head": 0, "pattern": "local", "entropy": 1.0, "normalized_entropy": 0.5,
            "max_weight": 0.5, "top_mass": 0.7, "local_mass": 0.9, "first_token_mass": 0.1,
            "delimiter_mass": 0.1, "positional_offset": -1, "positional_mass": 0.3,
            "local_lift": 0.5, "top_lift": 0.2, "delimiter_lift": 0.0, "positional_lift": 0.1}
    validate(head, {"$ref": "#/$defs/headPattern"}, schema)
    for change, message in (({"pattern": "sparse"}, "is not one of"),
                            ({"head": True}, "expected integer"),
                            ({"max_weight": 1.5}, "maximum"),
                            ({"extra": 1}, "unexpected property 'extra'")):
        with pytest.raises(ValueError, match=message):
            validate({**head, **change}, {"$ref": "#/$defs/headPattern"}, schema)
    missing = dict(head)
    del missing["entropy"]
    with pytest.raises(ValueError, match="required property 'entropy'"):
        validate(missing, {"$ref": "#/$defs/headPattern"}, schema)
    with pytest.raises(ValueError, match="unsupported keywords"):
        validate(1, {"pattern": "x"})


def test_schema_is_valid_json_schema_and_agrees_with_jsonschema(tmp_path):
    """Cross-check with the reference implementation where it is installed (dev extra)."""
    jsonschema = pytest.importorskip("jsonschema")
    torch_model = pytest.importorskip("torch_model")
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    report = TransformerAnalyzer(torch_model.init(tiny(), 0)).comprehensive_analysis(SRC, TGT)
    jsonschema.validate(report, schema)
    bad = json.loads(json.dumps(report))
    bad["attention_patterns"]["blocks"]["encoder/layer_0/self_attn"]["heads"][0]["pattern"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(ValueError, match="is not one of"):
        validate(bad, schema)


# -- trace ------------------------------------------------------------------------------------
def _known_capture() -> dict:
    q = np.full((1, 2, 3, 2), 2.0)  # [b, h, len, k]
    k = np.zeros((1, 2, 3, 2))
    k[..., 0] = 1.0                 # mean 0.5, std 0.5
    pre = np.array([[[-1.0, 1.0, -3.0, 3.0]] * 3])
    return {
        "encoder/embed/tokens": np.ones((1, 3, 4)),
        "encoder/layer_0/self_attn/q": q, "encoder/layer_0/self_attn/k": k,
        "encoder/layer_0/self_attn/v": k,
        "encoder/layer_0/self_attn/weights": np.full((1, 2, 3, 3), 1 / 3),
        "encoder/layer_0/self_attn_norm/input": np.arange(12.0).reshape(1, 3, 4),
        "encoder/layer_0/ffn/pre_activation": pre,
        "encoder/layer_0/ffn/activation": np.maximum(pre, 0),
        "logits": np.zeros((1, 2, 5)),
    }


def test_trace_shows_shapes_and_means_of_known_arrays():
    text = format_trace(_known_capture(), tiny())
    assert "=== Multi-Head Attention Forward Pass: encoder/layer_0/self_attn ===" in text
    assert "Q after W_q: [1, 3, 4], mean: 2.0000, std: 0.0000" in text
    assert "K after W_k: [1, 3, 4], mean: 0.5000, std: 0.5000" in text
    assert "Q reshaped: [1, 2, 3, 2], mean: 2.0000" in text
    assert "Attention weights, softmax with the mask: [1, 2, 3, 3], mean: 0.3333" in text
    assert "before LayerNorm: [1, 3, 4], mean: 5.5000, std: 3.4521" in text
    assert "before ReLU (x W1 + b1): [1, 3, 4], mean: 0.0000, std: 2.2361, negative: 50.0%" in text
    assert "after ReLU: [1, 3, 4], mean: 1.0000, std: 1.2247, zero: 50.0%" in text
    assert text.index("##### Encoder") < text.index("##### Output") < text.index("logits:")
    other = dict(_known_capture())
    other["encoder/layer_0/self_attn/q"] = other["encoder/layer_0/self_attn/q"] + 0.5
    del other["logits"]
    side = format_trace_side_by_side(_known_capture(), other, tiny(), ("jax", "torch"))
    line = next(x for x in side.splitlines() if x.startswith("encoder/layer_0/self_attn/q "))
    assert "2.0000" in line and "2.5000" in line and "5.00e-01" in line and "2.50e-01" in line
    assert "logits" in side and "missing in torch" in side


# -- the analyzer through real models ------------------------------------------------------
SRC = np.array([[5, 6, 7, 8, 9, 2, 0], [10, 11, 12, 13, 14, 15, 2]])
TGT = np.array([[1, 20, 21, 22, 23, 0], [1, 24, 25, 26, 27, 28]])


@pytest.fixture(scope="module")
def jax_pair():
    jax_model = pytest.importorskip("jax_model")
    cfg = tiny()
    return jax_model.init(cfg, 0), cfg


def test_report_validates_and_direct_effects_reconstruct_logits(tmp_path):
    torch_model = pytest.importorskip("torch_model")
    for norm in ("post", "pre"):
        cfg = tiny(norm_position=norm)
        analyzer = TransformerAnalyzer(torch_model.init(cfg, 1))
        path = tmp_path / f"{norm}.json"
        report = analyzer.comprehensive_analysis(SRC, TGT, attention_mask=SRC != 0,
                                                 tokens=[list("abcdefg")] * 2, save_path=path)
        assert json.loads(path.read_text()) == report
        validate(report, load_schema())
        dla = report["layer_contributions"]["direct_logit_effects"]
        assert dla["reconstruction_error"] < 1e-4  # the pieces sum to the logits
        assert set(report["qkv_statistics"]) == {
            "encoder/layer_0/self_attn", "encoder/layer_1/self_attn",
            "decoder/layer_0/self_attn", "decoder/layer_0/cross_attn",
            "decoder/layer_1/self_attn", "decoder/layer_1/cross_attn"}
        assert len(report["qkv_statistics"]["decoder/layer_1/cross_attn"]["k"]["std"]) == 4
        assert report["inputs"]["target_source"] == "given"
        assert math.isfinite(report["loss"]) and report["gradient_flow"]["total_norm"] > 0


def test_analyzer_input_rules():
    torch_model = pytest.importorskip("torch_model")
    analyzer = TransformerAnalyzer(torch_model.init(tiny(), 0))
    with pytest.raises(ValueError, match="attention_mask disagrees"):
        analyzer.comprehensive_analysis(SRC, TGT, attention_mask=np.ones_like(SRC))
    with pytest.raises(ValueError, match="tokens has 1 row"):
        analyzer.analyze_attention_patterns(SRC, tokens=list("abc"))
    with pytest.raises(ValueError, match="src holds token id 99"):
        analyzer.analyze_qkv_statistics(np.array([[99, 2]]))
    patterns = analyzer.analyze_attention_patterns(SRC[:1, :6], tokens=list("ab.de!"))
    assert patterns["thresholds"]["min_lift"] == attn.MIN_LIFT
    assert set(patterns["blocks"]["encoder/layer_0/self_attn"]["counts"]) == set(attn.PATTERNS)
    toks = analyzer.tokens(list("ab.de!"), SRC[:1, :6], SRC[:1, :6], "copy")
    assert toks["tgt"] == [["<s>", "a", "b", ".", "d", "e"]]
    flow = analyzer.analyze_gradient_flow(SRC)  # copy task: labels = src
    assert flow["loss"] > 0 and "embedding" in flow["layers"]


def test_jax_torch_hf_adapters_agree(jax_pair, tmp_path):
    pytest.importorskip("torch_model")
    hf_bridge = pytest.importorskip("hf_bridge")
    import jax_model
    import torch_model
    from spec import save_checkpoint

    params, cfg = jax_pair
    flat = jax_model.to_canonical(params)
    hf = hf_bridge.TransformerLabForConditionalGeneration.from_canonical(flat, cfg)
    save_checkpoint(tmp_path / "ckpt", flat, cfg)
    analyzers = {"jax": TransformerAnalyzer((params, cfg)),
                 "torch": TransformerAnalyzer(torch_model.Transformer(cfg).load_canonical(flat)),
                 "hf": TransformerAnalyzer(hf),
                 "folder": TransformerAnalyzer(tmp_path / "ckpt"),
                 "flat": TransformerAnalyzer(flat, config=cfg)}
    assert [a.adapter.name for a in analyzers.values()] == ["jax", "torch", "hf", "jax", "jax"]
    ref = analyzers["jax"]
    ref_q = ref.analyze_qkv_statistics(SRC, TGT)
    ref_g = ref.analyze_gradient_flow(SRC, TGT)
    ref_p = ref.analyze_attention_patterns(SRC, target_ids=TGT)
    for name in ("torch", "hf"):
        a = analyzers[name]
        q = a.analyze_qkv_statistics(SRC, TGT)
        for block, e in ref_q.items():
            np.testing.assert_allclose(q[block]["k"]["std"], e["k"]["std"], atol=1e-5)
        g = a.analyze_gradient_flow(SRC, TGT)
        assert g["loss"] == pytest.approx(ref_g["loss"], abs=1e-5)
        for layer, n in ref_g["layers"].items():
            assert g["layers"][layer] == pytest.approx(n, rel=1e-4)
        p = a.analyze_attention_patterns(SRC, target_ids=TGT)
        for block, e in ref_p["blocks"].items():
            np.testing.assert_allclose([h["entropy"] for h in p["blocks"][block]["heads"]],
                                       [h["entropy"] for h in e["heads"]], atol=1e-5)
        d = diff_captures(ref.capture(SRC, TGT), a.capture(SRC, TGT), "jax", name)
        assert d["missing"] == {"jax": [], name: []}
        assert d["entries"][d["worst"]]["normalized"] < 1e-5
    with pytest.raises(ValueError, match="not supported"):
        TransformerAnalyzer(object())
    with pytest.raises(ValueError, match="needs its config"):
        TransformerAnalyzer(flat)


# -- evolution inputs ---------------------------------------------------------------------------
def test_internals_files_round_trip_and_mask_pads(tmp_path):
    import training

    src = np.array([[5, 6, 2, 0]])
    tgt = np.array([[1, 5, 6, 0]])
    for step, scale in ((5, 2.0), (0, 1.0)):
        q = np.full((1, 2, 4, 3), scale)
        q[:, :, 3] = 100.0  # the pad position: excluded once the ids and pad_id are known
        inter = {f"encoder/layer_0/self_attn/{p}": q for p in ("q", "k", "v")}
        training.save_internals(tmp_path, step, inter, {"src": src, "tgt": tgt})
    caps = load_captures(tmp_path)
    assert [s for s, _ in caps] == [0, 5]
    np.testing.assert_array_equal(caps[0][1]["inputs/src"], src)
    masked = qkv_evolution(caps, pad_id=0)["encoder/layer_0/self_attn"]["q"]
    np.testing.assert_allclose(np.array(masked["mean"])[:, 0], [1.0, 2.0])
    unmasked = qkv_evolution(caps)["encoder/layer_0/self_attn"]["q"]
    assert unmasked["mean"][0][0] > 20
    with pytest.raises(FileNotFoundError):
        load_captures(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no internals_step"):
        load_captures(tmp_path / "empty")


# -- figures ----------------------------------------------------------------------------------
def test_visualizer_writes_titled_figures(tmp_path):
    from analysis import TransformerVisualizer, plots

    viz = TransformerVisualizer(tmp_path)
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(7), size=(8, 5))  # [h, q, k]
    path = viz.plot_attention_heatmap(w, list("abcdefg"), list("vwxyz"), "encoder/layer_0/"
                                      "self_attn/weights", name="encoder/layer_0/self_attn")
    assert path.name == "attention_weights_encoder_layer_0_self_attn.png"
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="key tokens: got 3 labels"):
        viz.plot_attention_heatmap(w, list("abc"))
    # 6 layers x 8 heads stay one panel each, labelled with canonical names
    inter = {f"encoder/layer_{i}/self_attn/weights": rng.dirichlet(np.ones(12), size=(2, 8, 12))
             for i in range(6)}
    fig = plots.attention_grid_figure(inter, "encoder/self_attn", list("abcdefghijkl"),
                                      list("abcdefghijkl"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 48 and titles[0] == "layer_0 head 0" and titles[-1] == "layer_5 head 7"
    assert fig.get_size_inches()[0] >= 8 * 1.6
    curves = viz.plot_training_curves([{"step": s, "split": "train", "loss": 1 / s, "lr": 0.1}
                                       for s in range(1, 5)] + [{"step": 4, "split": "eval",
                                                                 "loss": 0.3}])
    assert curves.name == "training_curves.png"
    fig = plots.training_curves_figure([{"step": 1, "loss": 2.0, "bleu": 3.0}])
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["loss", "bleu"]


@pytest.mark.parametrize("layers", [1, 2])
def test_cross_attention_title_fits_inside_the_figure(layers):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from analysis import plots

    rng = np.random.default_rng(1)
    inter = {f"decoder/layer_{i}/cross_attn/weights": rng.dirichlet(np.ones(6), size=(1, 2, 5))
             for i in range(layers)}
    fig = plots.cross_attention_figure(inter, list("abcdef"), list("vwxyz"))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    title = fig._suptitle.get_window_extent(canvas.get_renderer())
    assert title.x0 >= 0 and title.x1 <= fig.bbox.width  # not cut at either side


# -- demo -------------------------------------------------------------------------------------
SEED_FILES = [
    "training_curves.png", "analysis_report.json", "report.html", "debug_trace.txt",
    "visualizations/attention/attention_evolution.png",
    "visualizations/attention/multihead_comparison.png",
    "visualizations/attention/cross_attention_alignment.png",
    "visualizations/qkv/qkv_evolution.png", "visualizations/qkv/layer_contributions.png",
    "visualizations/qkv/gradient_flow.png",
]


def test_run_folder_holds_every_seed_file(tmp_path):
    """`write_outputs` (what the demo and `main.py --visualize` call) on a torch model with two
    captured "training steps", metric records and the HF model as the second implementation."""
    torch_model = pytest.importorskip("torch_model")
    hf_bridge = pytest.importorskip("hf_bridge")
    from analysis.outputs import write_outputs

    cfg = tiny()
    model = torch_model.init(cfg, 0)
    analyzer = TransformerAnalyzer(model)
    later = analyzer.adapter.with_params(
        {k: v * 1.1 for k, v in analyzer.adapter.params().items()})
    captures = [(step, {**a.capture(SRC, TGT), "inputs/src": SRC, "inputs/tgt": TGT})
                for step, a in ((0, analyzer.adapter), (50, later))]
    metrics = [{"step": s, "split": "train", "loss": 4.0 / s} for s in range(1, 6)]
    hf = hf_bridge.TransformerLabForConditionalGeneration.from_canonical(model.to_canonical(),
                                                                         cfg)
    result = write_outputs(analyzer, tmp_path, SRC, TGT, captures=captures, metrics=metrics,
                           other=TransformerAnalyzer(hf))
    assert result["skipped"] == []
    for name in SEED_FILES + ["visualizations/attention/attention_step_0.png",
                              "visualizations/attention/attention_step_50.png",
                              "visualizations/parity/intermediate_errors.png",
                              "attention_weights_decoder_layer_1_cross_attn.png"]:
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    report = json.loads((tmp_path / "analysis_report.json").read_text())
    validate(report, load_schema())
    assert report["model"]["implementation"] == "torch"
    trace = (tmp_path / "debug_trace.txt").read_text()
    assert "Q reshaped: [2, 4, 7, 8]" in trace  # b 2, h 4, s 7, d_model 32 / 4
    assert "torch mean" in trace and "hf mean" in trace


@pytest.mark.slow
def test_demo_writes_every_seed_file(tmp_path):
    """The full demo (200 Adam steps, jax preferred) as `main.py --version analysis` runs it."""
    code = (f"import time; from analysis import demo; t = time.time(); "
            f"r = demo.run({str(tmp_path)!r}); print(time.time() - t)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in SEED_FILES + ["visualizations/attention/attention_step_200.png",
                              "visualizations/parity/intermediate_errors.png"]:
        assert (tmp_path / name).is_file(), name
    assert list(tmp_path.glob("internals/internals_step_*.npz"))


def test_analysis_imports_no_framework():
    code = ("import sys, analysis, analysis.demo, analysis.outputs; "
            "print(sorted(m for m in ('jax', 'torch', 'transformers', 'flax') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

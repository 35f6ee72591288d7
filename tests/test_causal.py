"""Causal analyses (`analysis.patching`, `ablation`, `logit_lens`, `attribution`, per-head
`contributions`, `causal`) and `main.py --version interpret`.

Hand-checkable cases on the tiny preset with random weights: restoring a value everything
downstream reads gives score 1 (denoise) or 0 (noise); sites the metric cannot see (decoder
positions after it) give exactly 0; attribution patching is exact where the metric is linear
in the site (the last residual stream); integrated gradients add up to f(x) - f(baseline) with
a midpoint-rule error that shrinks like 1/N^2; the logit lens's last stage is the model's own
log-probs; per-head direct logit attribution adds up to the logit difference; a head whose out
projection is zero has ablation importance 0.  Then jax == torch for every analysis (slow:
one JAX compilation per sweep shape; the fast suite runs the two smallest sweeps on jax).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from analysis import ablation, attribution, contributions, logit_lens, patching
from analysis.causal import CausalPair, causal_report, run_causal
from analysis.schema import load_schema, validate
from spec import TransformerConfig, random_params
from spec.interventions import logit_diff

S, T, P = 7, 6, 3  # source length, target length, metric position (< T - 1: later ones exist)


def make_adapter(kind: str, flat: dict, config: TransformerConfig):
    if kind == "torch":
        torch_model = pytest.importorskip("torch_model")
        from torch_model.adapter import TorchAdapter

        return TorchAdapter(torch_model.Transformer(config).load_canonical(flat))
    jax_model = pytest.importorskip("jax_model")
    from jax_model.adapter import JaxAdapter

    return JaxAdapter(jax_model.from_canonical(flat, config), config)


def tiny(norm: str = "post") -> TransformerConfig:
    return TransformerConfig.preset("tiny", dropout_rate=0.0, norm_position=norm)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    clean = rng.integers(3, 64, (1, S)).astype(np.int32)
    clean[0, -1] = 2
    corrupt = clean.copy()
    corrupt[0, 2] = 5 if clean[0, 2] != 5 else 6
    tgt = rng.integers(3, 64, (1, T)).astype(np.int32)
    tgt[0, 0] = 1
    return clean, corrupt, tgt


@pytest.fixture(scope="module", params=["torch", "jax"])
def adapter(request):
    cfg = tiny()
    return make_adapter(request.param, random_params(cfg, 0), cfg)


def metric(config: TransformerConfig):
    return logit_diff(1, T, config.tgt_vocab_size, P, 10, 11)


def one_site_grid(name: str, positions=None) -> patching.Grid:
    return patching.Grid(name, ["r"], ["c"], [[patching.Site(name, positions=positions)]])


def test_restoring_everything_downstream_reads_gives_one_and_zero(adapter, inputs):
    clean, corrupt, tgt = inputs
    m = metric(adapter.config)
    last = f"encoder/layer_{adapter.config.num_encoder_layers - 1}/ffn_norm/output"
    grids = [one_site_grid(last)]  # the encoder output: all the decoder sees of the source
    denoise = patching.activation_patching(adapter, clean, corrupt, tgt, m, grids)
    noise = patching.activation_patching(adapter, clean, corrupt, tgt, m, grids, "noise")
    assert denoise[last]["scores"][0, 0] == pytest.approx(1.0, abs=1e-4)
    assert noise[last]["scores"][0, 0] == pytest.approx(0.0, abs=1e-4)


# the JAX variants of the bigger sweeps compile one vmapped forward per grid shape: slow here
BOTH_SLOW_JAX = ["torch", pytest.param("jax", marks=pytest.mark.slow)]


@pytest.mark.parametrize("kind", BOTH_SLOW_JAX)
def test_sweep_layout_and_causality(kind, inputs):
    clean, corrupt, tgt = inputs
    cfg = tiny()
    adapter = make_adapter(kind, random_params(cfg, 0), cfg)
    grids = patching.default_grids(cfg, S, T)
    assert [g.label for g in grids] == [
        "encoder/self_attn heads", "decoder/self_attn heads", "decoder/cross_attn heads",
        "encoder residual", "decoder residual", "encoder ffn", "decoder ffn"]
    out = patching.activation_patching(adapter, clean, corrupt, tgt, metric(cfg), grids)
    assert out["encoder/self_attn heads"]["scores"].shape == (2, 4)
    assert out["encoder residual"]["scores"].shape == (2, S)
    dec = out["decoder residual"]["scores"]
    assert dec.shape == (2, T)
    # the decoder is causal: positions after the metric's cannot change it
    np.testing.assert_allclose(dec[:, P + 1:], 0.0, atol=1e-5)
    np.testing.assert_allclose(out["decoder ffn"]["scores"][:, P + 1:], 0.0, atol=1e-5)
    # the last layer's stream at the metric position carries everything: score 1
    assert dec[-1, P] == pytest.approx(1.0, abs=1e-4)
    # some encoder head matters (the corrupted token is read by someone)
    assert np.abs(out["encoder/self_attn heads"]["scores"]).max() > 0.05


def test_attribution_patching_is_exact_where_the_metric_is_linear(adapter, inputs):
    clean, corrupt, tgt = inputs
    cfg = adapter.config
    name = f"decoder/layer_{cfg.num_decoder_layers - 1}/ffn_norm/output"  # = decoder/output
    grids = [one_site_grid(name, positions=(P,)), patching.head_grid(cfg, "decoder/cross_attn")]
    exact = patching.activation_patching(adapter, clean, corrupt, tgt, metric(cfg), grids)
    approx = patching.attribution_patching(adapter, clean, corrupt, tgt, metric(cfg), grids)
    assert approx[name]["scores"][0, 0] == pytest.approx(exact[name]["scores"][0, 0], abs=1e-4)
    agree = patching.agreement(exact, approx)
    assert set(agree) == {name, "decoder/cross_attn heads", "all"}
    assert agree["all"]["pearson"] > 0.5  # nonlinear sites: an approximation, not noise


@pytest.mark.parametrize("kind", BOTH_SLOW_JAX)
def test_integrated_gradients_completeness_and_causal_target_map(kind, inputs):
    # gelu: a smooth path, where the midpoint rule's error is O(1/N^2) (ReLU's kinks along
    # the path make it O(1/N): measured 0.108, 0.035, 0.010, 0.0066 for N = 8..64)
    cfg = tiny().replace(activation="gelu")
    adapter = make_adapter(kind, random_params(cfg, 0), cfg)
    clean, _, tgt = inputs
    targets = np.array([5, 9, 12, 20, 2, 7])
    coarse = attribution.source_attribution(adapter, clean, tgt, targets, steps=8)
    fine = attribution.source_attribution(adapter, clean, tgt, targets, steps=32)
    assert np.abs(fine["f"] - fine["f_baseline"]).max() > 0.5  # something to attribute
    # 4x the steps -> ~16x smaller error; ask for 8x, and 2e-3 absolute at N = 32
    assert fine["completeness_error"].max() < 2e-3
    assert fine["completeness_error"].max() < coarse["completeness_error"].max() / 8
    ig = fine["integrated_gradients"]
    assert ig["source"].shape == (T, S) and ig["target"].shape == (T, T)
    for method in ("saliency", "input_x_gradient", "integrated_gradients"):
        upper = np.triu(fine[method]["target"], 1)  # row j may only see decoder inputs 0..j
        np.testing.assert_allclose(upper, 0.0, atol=1e-6)
        assert np.abs(fine[method]["source"]).max() > 0
    # f is the model's own log-prob of each target at its position
    logits, _ = adapter.run(clean, tgt)
    logp = logit_lens.log_softmax(logits.astype(np.float64))[0]
    np.testing.assert_allclose(fine["f"], logp[np.arange(T), targets], atol=1e-4)
    pad = attribution.source_attribution(adapter, clean, tgt, targets, steps=32,
                                         baseline="pad")
    assert pad["completeness_error"].max() < 2e-3
    assert not np.allclose(pad["f_baseline"], fine["f_baseline"])


def test_integrated_gradients_refined_to_a_tolerance_equal_a_direct_run(inputs):
    """ReLU (the paper's, and the CLI's): the midpoint rule's error falls slowly, so with a
    tolerance the steps triple, reusing every gradient already taken, until it is met."""
    cfg = tiny()
    adapter = make_adapter("torch", random_params(cfg, 0), cfg)
    clean, _, tgt = inputs
    targets = np.array([5, 9, 12, 20, 2, 7])
    # measured here: 36.7%, 10.7%, 3.4%, 1.5% of max |f(x) - f(x0)| at N = 2, 6, 18, 54
    refined = attribution.source_attribution(adapter, clean, tgt, targets, steps=2,
                                             tolerance=0.05)
    assert refined["converged"] and refined["completeness_relative_error"] <= 0.05
    assert refined["steps"] in (6, 18, 54) and refined["tolerance"] == 0.05
    direct = attribution.source_attribution(adapter, clean, tgt, targets, steps=refined["steps"])
    assert direct["tolerance"] is None and direct["converged"] is False
    for side in ("source", "target"):
        np.testing.assert_allclose(refined["integrated_gradients"][side],
                                   direct["integrated_gradients"][side], rtol=1e-9, atol=1e-12)
    coarser = attribution.source_attribution(adapter, clean, tgt, targets,
                                             steps=refined["steps"] // 3)
    assert coarser["completeness_relative_error"] > 0.05  # it stopped at the first count met
    capped = attribution.source_attribution(adapter, clean, tgt, targets, steps=2,
                                            tolerance=1e-9, max_steps=20)
    assert capped["steps"] == 18 and not capped["converged"]
    assert capped["completeness_relative_error"] > 1e-9


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_logit_lens_last_stage_is_the_model(norm, inputs):
    cfg = tiny(norm)
    flat = random_params(cfg, 1)
    ad = make_adapter("torch", flat, cfg)
    clean, _, tgt = inputs
    logits, inter = ad.run(clean, tgt)
    labels = np.array([[5, 9, 12, 20, 2, 7]])
    lens = logit_lens.logit_lens(inter, flat, cfg, labels)
    assert lens["stages"][0] == "decoder/embed" and len(lens["stages"]) == 1 + 3 * 2
    own = logit_lens.log_softmax(logits.astype(np.float64))
    np.testing.assert_allclose(lens["logprob"][-1], np.take_along_axis(
        own, labels[..., None], -1)[..., 0], atol=1e-4)
    want_rank = (logits > np.take_along_axis(logits, labels[..., None], -1)).sum(-1)
    np.testing.assert_array_equal(lens["rank"][-1], want_rank)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_per_head_dla_adds_up_to_the_logit_difference(norm, inputs):
    cfg = tiny(norm)
    flat = random_params(cfg, 2)
    ad = make_adapter("torch", flat, cfg)
    clean, _, tgt = inputs
    logits, inter = ad.run(clean, tgt)
    m = metric(cfg)
    effects, error = contributions.direct_logit_effects(inter, flat, cfg, per_head=True)
    assert error < 1e-4
    heads = contributions.head_logit_attribution(effects, cfg, m.logit_weights)
    assert heads["decoder/cross_attn heads"].shape == (2, 4)
    others = sum(float((m.logit_weights * e).sum()) for n, e in effects.items()
                 if "/head_" not in n)
    total = sum(float(g.sum()) for g in heads.values()) + others
    assert total == pytest.approx(m.value_numpy(logits), abs=1e-4)
    split = contributions.head_outputs(inter, flat, "decoder/layer_0/cross_attn", cfg)
    np.testing.assert_allclose(sum(split.values()), inter["decoder/layer_0/cross_attn/output"],
                               atol=1e-5)


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_a_silent_head_has_no_ablation_importance(method, inputs):
    cfg = tiny()
    flat = random_params(cfg, 3)
    k = cfg.head_dim
    flat["decoder/layer_1/cross_attn/out/kernel"][2 * k:3 * k] = 0.0  # head 2 says nothing
    ad = make_adapter("torch", flat, cfg)
    clean, _, tgt = inputs
    out = ablation.head_ablation(ad, clean, tgt, metric(cfg), method)
    imp = out["decoder/cross_attn heads"]["importance"]
    assert imp[1, 2] == pytest.approx(0.0, abs=1e-6)
    assert np.abs(imp).max() > 1e-3
    assert out["intact"]["value"] == pytest.approx(metric(cfg).value_numpy(ad.run(clean, tgt)[0]),
                                                   abs=1e-4)


def test_bad_inputs_name_what_is_wrong(inputs):
    cfg = tiny()
    ad = make_adapter("torch", random_params(cfg, 0), cfg)
    clean, corrupt, tgt = inputs
    with pytest.raises(ValueError, match="direction 'sideways'"):
        patching.activation_patching(ad, clean, corrupt, tgt, metric(cfg), [], "sideways")
    with pytest.raises(ValueError, match="equal shapes"):
        patching.prepare(ad, clean, corrupt[:, :-1], tgt, metric(cfg))
    with pytest.raises(ValueError, match="nothing to patch"):
        patching.prepare(ad, clean, clean, tgt, metric(cfg))
    with pytest.raises(ValueError, match="norm_position='post'"):
        patching.position_grid(tiny("pre"), "residual", "encoder", S)
    with pytest.raises(ValueError, match="baseline 'mean'"):
        attribution.source_attribution(ad, clean, tgt, np.arange(T), baseline="mean")
    with pytest.raises(ValueError, match="steps=0"):
        attribution.source_attribution(ad, clean, tgt, np.arange(T), steps=0)
    for tolerance in (0, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match=f"tolerance={tolerance!r} is invalid"):
            attribution.source_attribution(ad, clean, tgt, np.arange(T), tolerance=tolerance)
    with pytest.raises(ValueError, match=r"max_steps=4 is invalid: expected an integer >= steps"):
        attribution.source_attribution(ad, clean, tgt, np.arange(T), steps=8, max_steps=4)
    with pytest.raises(ValueError, match="ablation method 'random'"):
        ablation.head_ablation(ad, clean, tgt, metric(cfg), "random")
    with pytest.raises(ValueError, match="equal lengths"):
        CausalPair(clean, corrupt[:, :-1], tgt, np.arange(T), P, 10, 11, {})


def _pair(inputs) -> CausalPair:
    clean, corrupt, tgt = inputs
    targets = np.array([5, 9, 12, 20, 2, 7])
    names = {"clean": "a b", "corrupt": "a c", "src": [f"s{i}" for i in range(S)],
             "corrupt_src": [f"s{i}" for i in range(S)], "tgt": [f"t{i}" for i in range(T)],
             "out": [f"o{i}" for i in range(T)], "corrupt_token": "x"}
    return CausalPair(clean, corrupt, tgt, targets, P, 10, 11, names)


@pytest.mark.slow
def test_jax_and_torch_agree_on_every_analysis(inputs):
    cfg = tiny()
    flat = random_params(cfg, 0)
    reports = [causal_report(run_causal(make_adapter(kind, flat, cfg), _pair(inputs),
                                        ig_steps=4), _pair(inputs))
               for kind in ("torch", "jax")]
    schema = load_schema()
    validate(json.loads(json.dumps(reports)), {"$defs": schema["$defs"],
                                               **schema["properties"]["causal"]})
    a, b = (json.loads(json.dumps(r)) for r in reports)
    assert (a["implementation"], b["implementation"]) == ("torch", "jax")

    def compare(x, y, path="$"):
        if isinstance(x, dict):
            assert set(x) == set(y), path
            for key in x:
                if key != "implementation":
                    compare(x[key], y[key], f"{path}.{key}")
        elif isinstance(x, list):
            assert len(x) == len(y), path
            for i, (u, v) in enumerate(zip(x, y)):
                compare(u, v, f"{path}[{i}]")
        elif isinstance(x, float):
            assert y == pytest.approx(x, rel=1e-3, abs=1e-4), path
        else:
            assert x == y, path

    compare(a, b)


def run_main(argv: list[str]) -> str:
    import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main.main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model's final/ folder: random weights + a character tokenizer of number words.

    Weights N(0, 0.5), seed 2: large enough that greedy decoding depends on the source (with
    the default 0.2 every source gives the same string, and interpret refuses the pair)."""
    from spec import save_checkpoint
    from tasks.numbers import number_words
    from tasks.tokenizer import build_tokenizer

    texts = [number_words(n, lang) for n in range(0, 1000, 7) for lang in ("en", "de")]
    tok = build_tokenizer(texts + [number_words(342, "en")], "char")
    cfg = TransformerConfig.preset("tiny", src_vocab_size=tok.vocab_size,
                                   tgt_vocab_size=tok.vocab_size, max_len=48, dropout_rate=0.0)
    folder = tmp_path_factory.mktemp("run") / "final"
    save_checkpoint(folder, random_params(cfg, 2, weight_std=0.5), cfg)
    tok.save(folder)
    return folder


def test_interpret_command_writes_its_files(checkpoint, tmp_path):
    out = tmp_path / "interp"
    printed = run_main(["--version", "interpret", "--checkpoint", str(checkpoint),
                        "--output_dir", str(out), "--backend", "torch", "--ig_steps", "2"])
    assert "three hundred and forty-two" in printed and "IG completeness error" in printed
    doc = json.loads((out / "interpret_report.json").read_text())
    for pair in doc["pairs"]:  # --ig_steps 2 is the first try; the default tolerance refines
        ig = pair["source_attribution"]
        assert ig["tolerance"] == 0.05 and ig["steps"] in (2, 6, 18, 54)
        assert ig["converged"] == (ig["completeness_relative_error"] <= 0.05)
        assert ig["converged"] or ig["steps"] == 54
        assert f"{ig['steps']} steps" in printed
    exact = tmp_path / "exact"  # --ig_tolerance 0: exactly --ig_steps
    run_main(["--version", "interpret", "--checkpoint", str(checkpoint), "--output_dir",
              str(exact), "--backend", "torch", "--ig_steps", "3", "--ig_tolerance", "0",
              "--clean", "three hundred and forty-two", "--corrupt", "three hundred and forty-six"])
    ig = json.loads((exact / "interpret_report.json").read_text())["pairs"][0]["source_attribution"]
    assert (ig["steps"], ig["tolerance"], ig["converged"]) == (3, None, False)
    assert [p["pair"]["corrupt"] for p in doc["pairs"]] == [
        "three hundred and forty-six", "three hundred and forty-two".replace("three", "seven")]
    first = doc["pairs"][0]
    assert first["metric"]["clean"] != first["metric"]["corrupt"]
    assert len(first["pair"]["source_tokens"]) == len(first["pair"]["corrupt_source_tokens"])
    report = json.loads((out / "analysis_report.json").read_text())
    assert [c["pair"]["corrupt"] for c in report["causal"]] == [p["pair"]["corrupt"]
                                                                for p in doc["pairs"]]
    html = (out / "report.html").read_text()
    assert "Causal analyses" in html and "three hundred and forty-six" in html
    first_ig = first["source_attribution"]
    assert (f"Integrated gradients ({first_ig['steps']} steps, zero baseline)" in html
            and f"{100 * first_ig['completeness_relative_error']:.4g}% of the largest" in html
            and ("tolerance 5% met" if first_ig["converged"] else
                 "tolerance 5% not met at the most steps allowed") in html)
    for name in ("patching_heads", "patching_positions", "attribution_patching_heads",
                 "patching_agreement", "head_ablation", "head_dla", "logit_lens",
                 "attribution_ig", "attribution_ixg"):
        for k in (0, 1):
            assert (out / f"{name}_pair{k}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize("argv, message", [
    (["--version", "interpret"], "--checkpoint FOLDER"),
    (["--version", "interpret", "--checkpoint", "x", "--clean", "one"], "one --corrupt per"),
    (["--version", "jax", "--clean", "one"], "only used with --version interpret"),
    (["--version", "interpret", "--checkpoint", "/nonexistent/final"], "not a trained model"),
])
def test_interpret_flag_errors(argv, message, capsys):
    import main

    with pytest.raises(SystemExit) as e:
        main.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_interpret_refuses_unequal_token_counts(checkpoint, tmp_path, capsys):
    import main

    with pytest.raises(SystemExit):
        main.main(["--version", "interpret", "--checkpoint", str(checkpoint), "--output_dir",
                   str(tmp_path), "--backend", "torch", "--clean", "forty-two", "--corrupt",
                   "forty-seven"])
    err = capsys.readouterr().err
    assert "argument --corrupt" in err and "same count" in err

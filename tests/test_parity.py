"""Cross-framework parity: jax vs torch vs HF (and MarianMT) over configs that give every
dimension a different size, and the `python -m parity.check` command itself."""

import json

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax_model  # noqa: E402
from parity import check, runners  # noqa: E402
from parity.batch import make_batch  # noqa: E402
from parity.report import compare, format_table  # noqa: E402
from spec import TransformerConfig  # noqa: E402

# d_model 24, 3 heads (k = 8), d_ff 40, 2 encoder and 3 decoder layers, src 7, tgt 5, vocab 37:
# every axis has its own size, so a swapped axis cannot hide.
BASE = TransformerConfig(src_vocab_size=37, tgt_vocab_size=37, d_model=24, num_heads=3,
                         num_encoder_layers=2, num_decoder_layers=3, d_ff=40, max_len=16)

# A fractional grid: each factor takes both values, and every pair of factors meets.
GRID = {
    "post-interleaved-shared-tied": BASE,
    "pre-split-untied-bias": BASE.replace(norm_position="pre", positional_layout="split",
                                          share_embeddings=False, tgt_vocab_size=41,
                                          tie_output=False, output_bias=True),
    "post-split-shared-untied-bias-gelu": BASE.replace(positional_layout="split",
                                                       tie_output=False, output_bias=True,
                                                       activation="gelu"),
    "pre-interleaved-separate-tied-swish": BASE.replace(norm_position="pre",
                                                        share_embeddings=False,
                                                        tgt_vocab_size=29, activation="swish"),
}


@pytest.fixture(scope="module", autouse=True)
def full_precision():
    check.force_full_precision()


@pytest.mark.parametrize("name", list(GRID))
def test_forward_and_gradients_agree(name):
    config = GRID[name]
    flat = jax_model.to_canonical(jax_model.init(config, seed=3))
    batch = make_batch(config, seed=5, batch=4, src_len=7, tgt_len=5, all_pad_row=True)
    assert (batch["src"][-1] == config.pad_id).all()
    checks = check.forward_and_gradients(config, flat, batch)
    failed = [c for c in checks if not c.ok]
    assert not failed, format_table(failed)
    names = {c.name for c in checks}
    assert "decoder/layer_2/cross_attn/weights" in names and "logits" in names
    assert "grad/decoder/layer_2/ffn/w2/kernel" in names and "loss" in names
    assert ("encoder/final_norm/output" in names) == (config.norm_position == "pre")
    assert {c.pair for c in checks} == {"torch~jax", "hf~jax"}


@pytest.mark.parametrize("name", ["post-interleaved-shared-tied", "pre-split-untied-bias"])
def test_decoding_agrees(name):
    config = GRID[name]
    flat = jax_model.to_canonical(jax_model.init(config, seed=4))
    batch = make_batch(config, seed=6, batch=3, src_len=7, tgt_len=5)
    checks = check.decoding(config, flat, batch)
    failed = [c for c in checks if not c.ok]
    assert not failed, format_table(failed)
    assert any(c.name.startswith("decode/decoder/layer_2/self_attn/weights") for c in checks)


def test_marian_agrees_on_a_marian_config():
    config = GRID["post-split-shared-untied-bias-gelu"]
    flat = jax_model.to_canonical(jax_model.init(config, seed=7))
    # HF's Marian does not train final_logits_bias but holds it: give it a value to carry.
    flat["output/bias"] = np.random.default_rng(0).normal(size=flat["output/bias"].shape
                                                          ).astype(np.float32)
    checks = check.marian(config, flat, make_batch(config, seed=8, batch=3))
    assert len(checks) > 10 and all(c.ok for c in checks), format_table(checks)


def test_pre_ln_is_reported_as_not_marian_compatible():
    checks = check.marian(GRID["pre-split-untied-bias"], {}, {})
    assert len(checks) == 1 and "norm_position" in checks[0].note


def test_a_planted_bug_is_found_and_located(monkeypatch):
    """Perturb one torch intermediate: the report must fail and name exactly that place first."""
    config = GRID["post-interleaved-shared-tied"]
    flat = jax_model.to_canonical(jax_model.init(config, seed=3))
    batch = make_batch(config, seed=5)
    real = runners.torch_forward

    def buggy(flat, config, batch):
        inter = real(flat, config, batch)
        inter["decoder/layer_1/cross_attn/context"] = inter["decoder/layer_1/cross_attn/context"] + 1e-3
        del inter["encoder/layer_0/ffn/activation"]
        return inter

    monkeypatch.setattr(runners, "torch_forward", buggy)
    checks = check.forward_and_gradients(config, flat, batch)
    failed = [c for c in checks if not c.ok]
    assert [c.name for c in failed] == ["encoder/layer_0/ffn/activation",
                                        "decoder/layer_1/cross_attn/context"]
    assert failed[0].note == "missing in torch"
    assert failed[1].max_abs == pytest.approx(1e-3, rel=1e-3)
    table = format_table(checks)
    assert "first divergence in execution order: encoder/layer_0/ffn/activation" in table
    assert table.rstrip().endswith(f"{len(checks)} checked, 2 failed")


def test_compare_normalises_by_the_reference_scale():
    ref = {"big": np.array([1000.0, -2000.0]), "small": np.array([0.5, 0.25])}
    got = {"big": np.array([1000.01, -2000.0]), "small": np.array([0.5, 0.25 + 2e-5])}
    big, small = compare("a~b", got, ref, 1e-5)
    assert big.max_rel == pytest.approx(0.01 / 2000) and big.ok
    assert small.max_rel == pytest.approx(2e-5) and not small.ok
    nan = compare("a~b", {"x": np.array([np.nan])}, {"x": np.array([np.nan])}, 1.0)[0]
    assert not nan.ok


def test_command_line_runs_every_section_and_writes_json(tmp_path, capsys):
    path = tmp_path / "parity.json"
    status = check.main(["--json", str(path), "--quiet"])
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert status == 0 and report["ok"], out
    names = [c["name"] for c in report["checks"]]
    pairs = {c["pair"] for c in report["checks"]}
    assert {"torch~jax", "hf~jax", "marian~jax", "jax-cached~full",
            "torch-cached~full"} <= pairs
    for needle in ("encoder/layer_0/self_attn/q", "logits", "grad/shared_embedding/embedding",
                   "decode/greedy", "decode/beam3", "adam/step_10/decoder/layer_1/ffn/w1/kernel",
                   "marian:logits"):
        assert needle in names, needle
    assert set(report["checks"][0]) >= {"name", "pair", "shape", "max_abs", "max_rel", "ok"}
    assert out.rstrip().splitlines()[-2] == f"{len(names)} checked, 0 failed"


def test_command_line_rejects_bad_arguments(capsys):
    assert check.main(["--src-len", "500", "--section", "marian"]) == 2
    assert "src_len=500 is over the config's max_len" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check.main(["--section", "nope"])

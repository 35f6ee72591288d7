"""Pretrained families (FSMT, BART, mBART, M2M100, Pegasus, Marian) against HF's own classes.

Each family: a tiny HF model built by transformers itself, every weight randomised (HF's init
leaves attention nearly uniform and would hide a swapped kernel), saved with `save_pretrained`
to a temporary folder (nothing from the internet), opened with `jax_model.from_pretrained` and
`torch_model.from_pretrained`.  Checked: logits, every intermediate HF exposes (hidden states,
attentions), all our intermediates jax vs torch, the loss gradient of every weight jax vs HF,
greedy and beam tokens vs HF `generate`, and `to_hf(from_hf(m))` weights identical.  Batches
are padded on both sides.  One module fixture per family computes everything once.
"""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jax_model  # noqa: E402
import torch_model  # noqa: E402
from hf_bridge import TransformerLabForConditionalGeneration  # noqa: E402
from hf_bridge.convert import family_compatible, from_hf, to_hf  # noqa: E402
from jax_model.train import loss_fn  # noqa: E402
from parity.hf_folder import (  # noqa: E402
    family_batch,
    hf_generate,
    hf_outputs,
    layer_output_names,
    without_pad_row,
)
from spec import (  # noqa: E402
    TransformerConfig,
    attention_names,
    intermediate_shapes,
    position_table,
    sinusoidal_positions,
)  # noqa: E402

TOL = 1e-5  # normalised max|a - b| / max(1, max|ref|): float32 reassociation only
MAX_NEW = 7
# every family differs in d_model, heads and layers from the others
COMMON = dict(encoder_layers=2, decoder_layers=2, max_position_embeddings=24,
              attn_implementation="eager", activation_dropout=0.0, encoder_layerdrop=0.0,
              decoder_layerdrop=0.0)
FAMILY_CONFIGS = {
    "fsmt": ("FSMTConfig", "FSMTForConditionalGeneration",
             dict(langs=["en", "de"], src_vocab_size=64, tgt_vocab_size=48, d_model=24,
                  encoder_attention_heads=3, decoder_attention_heads=3, encoder_ffn_dim=40,
                  decoder_ffn_dim=40, tie_word_embeddings=False)),
    "bart": ("BartConfig", "BartForConditionalGeneration",
             dict(vocab_size=64, d_model=16, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=36, decoder_ffn_dim=36)),
    "mbart": ("MBartConfig", "MBartForConditionalGeneration",
              dict(vocab_size=60, d_model=20, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=28, decoder_ffn_dim=28,
                   scale_embedding=True, decoder_start_token_id=2)),
    "m2m_100": ("M2M100Config", "M2M100ForConditionalGeneration",
                dict(vocab_size=56, d_model=24, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)),
    "pegasus": ("PegasusConfig", "PegasusForConditionalGeneration",
                dict(vocab_size=50, d_model=16, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=24,
                     scale_embedding=True)),
    "marian": ("MarianConfig", "MarianMTModel",
               dict(vocab_size=52, decoder_vocab_size=52, d_model=16,
                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
                    decoder_ffn_dim=24, pad_token_id=51, decoder_start_token_id=51,
                    eos_token_id=0, activation_function="swish", scale_embedding=True)),
}
FAMILIES = list(FAMILY_CONFIGS)
LEARNED = ("bart", "mbart")  # their position tables are weights


def normalised(a, ref) -> float:
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(a - ref).max() / max(1.0, np.abs(ref).max()))


def build_hf(family: str, seed: int = 0, **changes):
    config_cls, model_cls, kwargs = FAMILY_CONFIGS[family]
    config = getattr(transformers, config_cls)(**{**COMMON, **kwargs, **changes})
    model = getattr(transformers, model_cls)(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embed_positions" in name and family not in LEARNED:
                continue  # fixed sinusoids, not weights
            scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(torch.randn(param.shape, generator=gen) * (0.2 if param.ndim == 2
                                                                    else 0.1) + scale)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape,
                                                      generator=gen))
    return model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request, tmp_path_factory):
    family = request.param
    native = build_hf(family, seed=FAMILIES.index(family))
    folder = tmp_path_factory.mktemp(family) / "model"
    native.save_pretrained(folder)
    jax_ckpt = jax_model.from_pretrained(folder)
    torch_ckpt = torch_model.from_pretrained(folder)
    config = jax_ckpt.config
    data = family_batch(config, seed=3, batch=3, src_len=7, tgt_len=6)
    src, tgt, labels = data["src"], data["tgt_in"], data["labels"]
    hf_values, hf_loss, hf_grads = hf_outputs(native, config, data, family)
    _, torch_inter = torch_model.forward(torch_ckpt.model, src, tgt)
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in
             (("src", src), ("tgt_in", tgt), ("labels", labels))}
    with jax.default_matmul_precision("highest"):  # one compile: loss, grads and intermediates
        (jax_loss, aux), grads = jax.jit(jax.value_and_grad(
            lambda p: loss_fn(p, batch, config, 0.1, capture=True), has_aux=True))(
            jax_ckpt.params)
    jax_inter = {name: np.asarray(value) for name, value in aux["inter"].items()}
    return dict(family=family, native=native, folder=folder, jax=jax_ckpt, torch=torch_ckpt,
                config=config, src=src, tgt=tgt, hf=hf_values, hf_loss=hf_loss,
                hf_grads=hf_grads, jax_loss=float(jax_loss),
                jax_grads=jax_model.to_canonical(grads), jax_inter=jax_inter,
                torch_inter=torch_inter)


def test_config_reflects_the_family(family_run):
    c, family = family_run["config"], family_run["family"]
    expected = {
        "fsmt": ("post", "sinusoidal", "fairseq", 2, True, False, False, False),
        "bart": ("post", "learned", "paper", 2, False, True, True, True),
        "mbart": ("pre", "learned", "paper", 2, False, True, True, True),
        "m2m_100": ("pre", "sinusoidal", "fairseq", 2, True, False, True, False),
        "pegasus": ("pre", "sinusoidal", "paper", 0, False, False, True, True),
        "marian": ("post", "sinusoidal", "paper", 0, False, False, True, True),
    }[family]
    assert (c.norm_position, c.positional_encoding, c.sinusoid_formula, c.position_offset,
            c.zero_pad_positions, c.embedding_norm, c.share_embeddings, c.output_bias) == expected
    hc = family_run["native"].config
    start = hc.decoder_start_token_id
    assert (c.pad_id, c.bos_id, c.eos_id) == (hc.pad_token_id, start, hc.eos_token_id)
    assert family_compatible(c, family) is c


def test_both_loaders_and_from_hf_agree(family_run):
    flat, config = from_hf(family_run["native"])
    assert config == family_run["config"] == family_run["torch"].config
    assert family_run["torch"].tokenizer is None  # the folder has no tokenizer.json
    for name, value in jax_model.to_canonical(family_run["jax"].params).items():
        np.testing.assert_array_equal(value, flat[name], err_msg=name)
    for name, value in family_run["torch"].model.to_canonical().items():
        np.testing.assert_array_equal(value, flat[name], err_msg=name)


def test_logits_and_hf_intermediates_match(family_run):
    """Logits, HF's hidden states (embedding output, each layer's output, the encoder output)
    and attention weights, against the Flax reference and the torch mirror."""
    hf, c = family_run["hf"], family_run["config"]
    ji, ti = family_run["jax_inter"], family_run["torch_inter"]
    assert hf["logits"].std() > 0.3  # the logits depend on the weights
    expected = {"logits", "encoder/output"}
    for side in ("encoder", "decoder"):
        expected |= set(layer_output_names(c, side))
    expected |= {n + "/weights" for n in attention_names(c)}
    assert set(hf) == expected
    for name, value in hf.items():
        assert normalised(ji[name], value) <= TOL, name
        assert normalised(ti[name], value) <= TOL, name
        if name.endswith("/weights"):
            assert value.max() > 2.0 / value.shape[-1]  # far from uniform: a wrong kernel shows


def test_every_intermediate_jax_equals_torch(family_run):
    ji, ti, c = family_run["jax_inter"], family_run["torch_inter"], family_run["config"]
    src, tgt = family_run["src"], family_run["tgt"]
    assert set(ji) == set(ti) == set(intermediate_shapes(c, *src.shape, tgt.shape[1]))
    if c.embedding_norm:
        assert "encoder/embed_norm/output" in ji and "decoder/embed_norm/input" in ji
    for name in ji:
        assert normalised(ti[name], ji[name]) <= TOL, name


def test_loss_gradients_match_hf(family_run):
    """Every weight's gradient, mapped through the family table.  Two documented exceptions:
    HF's token tables have `padding_idx` (the pad row gets no gradient there; every canonical
    implementation trains it), and `final_logits_bias` is a buffer in HF (never trained)."""
    c, family = family_run["config"], family_run["family"]
    assert abs(family_run["jax_loss"] - family_run["hf_loss"]) <= TOL * max(1.0, family_run["hf_loss"])
    ours, theirs = family_run["jax_grads"], family_run["hf_grads"]
    assert set(theirs) == set(ours) - {"output/bias"}
    for name, ref in theirs.items():
        assert normalised(without_pad_row(ours[name], name, c), ref) <= TOL, name
    assert max(np.abs(g).max() for g in theirs.values()) > 1e-3
    if family in LEARNED:  # the learned position tables are trained alike
        assert np.abs(theirs["decoder/embed/positions"]).max() > 1e-3


@pytest.mark.parametrize("beams,alpha", [(1, 1.0), (3, 0.8)])
def test_decoding_matches_hf_generate(family_run, beams, alpha):
    c, src = family_run["config"], family_run["src"]
    ref = hf_generate(family_run["native"], c, src, MAX_NEW, beams, alpha)
    params, model = family_run["jax"].params, family_run["torch"].model
    if beams == 1:
        got_jax = jax_model.greedy_decode(params, c, src, MAX_NEW)
        got_torch = torch_model.greedy_decode(model, src, MAX_NEW)
    else:
        got_jax = jax_model.beam_search(params, c, src, beams, MAX_NEW, alpha)
        got_torch = torch_model.beam_search(model, src, beams, MAX_NEW, alpha)
    np.testing.assert_array_equal(np.asarray(got_jax), ref)
    np.testing.assert_array_equal(np.asarray(got_torch), ref)


def test_round_trip_gives_identical_weights(family_run):
    native = family_run["native"]
    flat, config = from_hf(native)
    back = to_hf(flat, config, family_run["family"])
    assert type(back) is type(native) and not back.training
    theirs, ours = native.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name


def test_the_lab_hf_model_computes_the_family(family_run):
    """hf_bridge's own model on the family config (the new fields through the torch modules)."""
    flat, config = from_hf(family_run["native"])
    lab = TransformerLabForConditionalGeneration.from_canonical(flat, config)
    src, tgt = (torch.as_tensor(family_run[k]) for k in ("src", "tgt"))
    with torch.no_grad():
        logits = lab(input_ids=src, decoder_input_ids=tgt).logits
    assert normalised(logits, family_run["hf"]["logits"]) <= TOL


# -- refusals -------------------------------------------------------------------------------
def test_unsupported_model_type_is_refused_naming_the_field(tmp_path):
    build_hf("bart").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    for load in (jax_model.from_pretrained, torch_model.from_pretrained):
        with pytest.raises(ValueError, match="model_type='t5'"):
            load(tmp_path)
    with pytest.raises(ValueError, match="model_type"):
        from_hf(transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=32, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)))
    with pytest.raises(FileNotFoundError):
        jax_model.from_pretrained(tmp_path / "absent")
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        torch_model.from_pretrained(tmp_path)


@pytest.mark.parametrize("family,change,field", [
    ("bart", dict(activation_function="gelu_new"), "activation_function"),
    ("m2m_100", dict(encoder_layerdrop=0.1), "encoder_layerdrop"),
    ("pegasus", dict(decoder_ffn_dim=20), "decoder_ffn_dim"),
    ("fsmt", dict(activation_dropout=0.1), "activation_dropout"),
])
def test_incompatible_hf_configs_are_refused_naming_the_field(family, change, field):
    with pytest.raises(ValueError, match=field):
        from_hf(build_hf(family, **change))


def test_from_pretrained_drops_training_only_dropout_with_a_warning(tmp_path):
    build_hf("fsmt", activation_dropout=0.1).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="activation_dropout"):
        ckpt = torch_model.from_pretrained(tmp_path)
    assert ckpt.config.sinusoid_formula == "fairseq"


@pytest.mark.parametrize("family,change,field", [
    ("bart", dict(norm_position="pre"), "norm_position"),
    ("mbart", dict(embedding_norm=False), "embedding_norm"),
    ("m2m_100", dict(position_offset=0), "position_offset"),
    ("m2m_100", dict(output_bias=True), "output_bias"),
    ("pegasus", dict(positional_encoding="learned", position_offset=0), "positional_encoding"),
    ("fsmt", dict(zero_pad_positions=False), "zero_pad_positions"),
    ("bart", dict(share_embeddings=False), "share_embeddings"),
    ("bart", dict(share_embeddings=False, tie_output=False, tgt_vocab_size=40),
     "tgt_vocab_size"),
])
def test_inexpressible_canonical_configs_are_refused_naming_the_field(family, change, field):
    config = from_hf(build_hf(family))[1].replace(**change)
    with pytest.raises(ValueError, match=field):
        family_compatible(config, family)
    with pytest.raises(ValueError, match="family='t5'"):
        family_compatible(config, "t5")


# -- the contract's new fields ------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("positional_encoding", "rotary"), ("sinusoid_formula", "t2t"), ("position_offset", -1),
    ("position_offset", 1.5), ("zero_pad_positions", 1), ("embedding_norm", "yes"),
])
def test_new_fields_are_validated_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TransformerConfig.preset("tiny", **{field: value})


def test_fairseq_formula_needs_split_and_four_features():
    with pytest.raises(ValueError, match="positional_layout"):
        TransformerConfig.preset("tiny", sinusoid_formula="fairseq")
    with pytest.raises(ValueError, match="d_model"):
        TransformerConfig.preset("tiny", sinusoid_formula="fairseq", positional_layout="split",
                                 d_model=2, num_heads=1)


def test_defaults_are_the_paper_and_old_config_files_load(tmp_path):
    config = TransformerConfig.preset("tiny")
    data = config.to_dict()
    for field in ("positional_encoding", "sinusoid_formula", "position_offset",
                  "zero_pad_positions", "embedding_norm"):
        data.pop(field)
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert TransformerConfig.from_json(tmp_path / "config.json") == config
    np.testing.assert_array_equal(position_table(config),
                                  sinusoidal_positions(config.max_len, config.d_model))


@pytest.mark.parametrize("d_model", [16, 17])
def test_fairseq_table_is_hfs(d_model):
    """The spec's fairseq table (float64, cast) against FSMT's own float32 one, pad row aside."""
    from transformers.models.fsmt.modeling_fsmt import SinusoidalPositionalEmbedding

    theirs = SinusoidalPositionalEmbedding.get_embedding(40, d_model, None).numpy()
    ours = sinusoidal_positions(40, d_model, "split", "fairseq")
    assert np.abs(ours - theirs).max() < 1e-5
    assert ours[3, 0] == np.float32(np.sin(3.0))
    if d_model % 2:
        assert not ours[:, -1].any()


def test_parity_check_hf_folder(tmp_path, capsys):
    """`python -m parity.check --hf PATH` on a saved FSMT folder: every row agrees, and the
    report holds the HF rows, the gradients and the tokens; a bad folder exits 2."""
    from parity.check import main

    build_hf("fsmt", seed=9).save_pretrained(tmp_path / "fsmt")
    report = tmp_path / "report.json"
    assert main(["--hf", str(tmp_path / "fsmt"), "--json", str(report), "--quiet"]) == 0
    rows = json.loads(report.read_text())["checks"]
    assert all(r["ok"] for r in rows)
    pairs = {(r["name"], r["pair"]) for r in rows}
    for row in [("logits", "hf~jax"), ("logits", "torch~jax"),
                ("decoder/layer_1/cross_attn/weights", "hf~jax"),
                ("encoder/layer_0/ffn/activation", "torch~jax"), ("loss", "hf~jax"),
                ("grad/decoder/layer_0/self_attn/query/kernel", "hf~jax"),
                ("grad/output/kernel", "hf~jax"), ("tokens/greedy", "jax~hf"),
                ("tokens/beam_3", "torch~hf")]:
        assert row in pairs, row
    assert main(["--hf", str(tmp_path / "absent")]) == 2
    assert "not found" in capsys.readouterr().err


def word_tokenizer(vocab_size: int, specials: dict[str, int]):
    """A `tokenizers` word-level tokenizer over `w<i>` words with the family's special ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {**{f"w{i}": i for i in range(vocab_size)}, **specials}
    vocab = {token: i for token, i in vocab.items()
             if token in specials or i not in specials.values()}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok


def test_analysis_probe_of_a_saved_folder(tmp_path):
    """lab_cli.pretrained: a folder's tokenizer.json turns texts into eos-terminated, padded
    source ids; without texts a fixed padded batch of ordinary ids is used."""
    from lab_cli.pretrained import is_hf_folder, open_folder, probe_sources

    build_hf("pegasus", seed=2).save_pretrained(tmp_path)
    word_tokenizer(50, {"<pad>": 0, "</s>": 1, "<unk>": 2}).save(str(tmp_path / "tokenizer.json"))
    assert is_hf_folder(tmp_path)
    flat, config, tokenizer = open_folder(tmp_path)
    assert config.pad_id == config.bos_id == 0 and "encoder/final_norm/scale" in flat
    src = probe_sources(config, tokenizer, ["w7 w9 w11", "w5"])
    np.testing.assert_array_equal(src, [[7, 9, 11, 1], [5, 1, 0, 0]])
    fixed = probe_sources(config, None, None)
    assert fixed.shape == (2, 12) and fixed[0, -1] == config.eos_id
    assert not np.isin(fixed[0, :-1], [0, 1]).any() and (fixed[1, 6:] == config.pad_id).all()
    with pytest.raises(FileNotFoundError):
        open_folder(tmp_path / "absent")


@pytest.mark.slow  # the whole analysis (figures, HTML) of a model: about 10 s on a quiet CPU
def test_main_analysis_opens_a_saved_folder_with_its_tokenizer(tmp_path, capsys):
    """`python main.py --version analysis --checkpoint PATH --translate TEXT`: the folder's
    tokenizer.json encodes the text, the model translates it greedily, and the analysis
    (report, figures, trace, HTML) is written for what the pretrained model computes."""
    import main

    folder = tmp_path / "bart"
    build_hf("bart", seed=4).save_pretrained(folder)
    word_tokenizer(64, {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}).save(
        str(folder / "tokenizer.json"))
    ckpt = jax_model.from_pretrained(folder)
    assert ckpt.tokenizer.encode("w7 w9").ids == [7, 9]
    out = tmp_path / "analysis"
    assert main.main(["--version", "analysis", "--checkpoint", str(folder), "--output_dir",
                      str(out), "--translate", "w7 w9 w11", "--translate", "w5"]) == 0
    report = json.loads((out / "analysis_report.json").read_text())
    assert report["inputs"]["src"] == [[7, 9, 11, 2], [5, 2, 1, 1]]
    assert report["inputs"]["tgt"][0][0] == ckpt.config.bos_id
    assert (out / "report.html").exists() and (out / "debug_trace.txt").exists()
    assert "analysis of" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main.main(["--version", "jax", "--checkpoint", str(folder)])
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(SystemExit):
        main.main(["--version", "analysis", "--checkpoint", str(folder)])
    assert "model_type='t5'" in capsys.readouterr().err


def test_positions_by_hand_in_both_frameworks():
    """embed/output = tokens * sqrt(d) + table[j + offset], zero for pad tokens with
    zero_pad_positions; the learned table is read at the same rows; embed_norm sits between."""
    base = dict(max_len=10, pad_id=1, bos_id=2, eos_id=2, dropout_rate=0.0)
    src = np.array([[5, 6, 7, 2, 1, 1]])
    tgt = np.array([[2, 8, 9, 1]])
    for extra in (dict(sinusoid_formula="fairseq", positional_layout="split", position_offset=2,
                       zero_pad_positions=True),
                  dict(positional_encoding="learned", position_offset=3, embedding_norm=True)):
        config = TransformerConfig.preset("tiny", **base, **extra)
        rng = np.random.default_rng(1)
        flat = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32)  # off the init values
                for k, v in jax_model.to_canonical(jax_model.init(config, 0)).items()}
        if config.positional_encoding == "learned":
            table = flat["encoder/embed/positions"]
            assert table.shape == (config.max_len + 3, config.d_model)
        else:
            table = position_table(config)
        _, ji = jax_model.forward(jax_model.from_canonical(flat, config), config, src, tgt)
        _, ti = torch_model.forward(torch_model.Transformer(config).load_canonical(flat), src, tgt)
        tokens = flat["shared_embedding/embedding"][src[0]] * np.sqrt(config.d_model)
        rows = table[np.arange(src.shape[1]) + config.position_offset]
        if config.zero_pad_positions:
            rows = rows * (src[0] != config.pad_id)[:, None]
        summed = tokens + rows
        if config.embedding_norm:
            np.testing.assert_allclose(ji["encoder/embed_norm/input"][0], summed, atol=1e-5)
            mean = summed.mean(-1, keepdims=True)
            var = ((summed - mean) ** 2).mean(-1, keepdims=True)
            summed = ((summed - mean) / np.sqrt(var + config.layer_norm_eps)
                      * flat["encoder/embed_norm/scale"] + flat["encoder/embed_norm/bias"])
        for inter in (ji, ti):
            np.testing.assert_allclose(inter["encoder/embed/output"][0], summed, atol=1e-5)

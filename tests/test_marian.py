"""hf_bridge.marian: canonical <-> HF MarianMTModel, exact round trips and logits parity.

Every weight is randomised (HF's own init leaves attention nearly uniform and would hide a
swapped or transposed kernel), every dimension differs (d_model 24, 3 heads, d_ff 40, 2 encoder
and 3 decoder layers, vocabularies 37 / 29), and batches are padded.
"""

import itertools
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import MarianConfig, MarianMTModel  # noqa: E402

import torch_model  # noqa: E402
from hf_bridge import TransformerLabForConditionalGeneration  # noqa: E402
from hf_bridge.marian import (  # noqa: E402
    from_marian,
    from_pretrained_marian,
    marian_compatible,
    marian_config,
    to_marian,
)
from spec import TransformerConfig, random_params  # noqa: E402

TOL = 1e-5  # normalised max|a - b| / max(1, max|ref|): float32 reassociation only


def marian_cfg(**overrides) -> TransformerConfig:
    base = dict(src_vocab_size=37, tgt_vocab_size=37, d_model=24, num_heads=3,
                num_encoder_layers=2, num_decoder_layers=3, d_ff=40, max_len=20,
                positional_layout="split", pad_id=0, bos_id=1, eos_id=2)
    return TransformerConfig(**{**base, **overrides})


def random_flat(config: TransformerConfig, seed: int) -> dict[str, np.ndarray]:
    """Every canonical weight random (see spec.random_params): attention far from uniform."""
    return random_params(config, seed)


def padded_batch(config: TransformerConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """src [3, 7] ending with eos then right pads; tgt [3, 6] starting with bos, right pads."""
    rng = np.random.default_rng(seed)
    lo = 3  # ids below 3 are special
    src = rng.integers(lo, config.src_vocab_size, size=(3, 7))
    tgt = rng.integers(lo, config.tgt_vocab_size, size=(3, 6))
    for row, (s_len, t_len) in enumerate([(7, 6), (4, 3), (2, 5)]):
        src[row, s_len - 1], src[row, s_len:] = config.eos_id, config.pad_id
        tgt[row, t_len:] = config.pad_id
    tgt[:, 0] = config.bos_id
    return torch.as_tensor(src), torch.as_tensor(tgt)


def normalised(a: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray) -> float:
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(a - ref).max() / max(1.0, np.abs(ref).max()))


def marian_logits(model: MarianMTModel, src: torch.Tensor, tgt: torch.Tensor,
                  pad_id: int) -> torch.Tensor:
    with torch.no_grad():  # HF masks by attention_mask only: give it the pad mask explicitly
        return model(input_ids=src, attention_mask=(src != pad_id).long(),
                     decoder_input_ids=tgt).logits


# every combination MarianMT can express, with odd-one-out vocabularies when unshared
EXPRESSIBLE = [
    dict(share_embeddings=share, tie_output=tie, output_bias=bias, activation=act,
         scale_embeddings=scale, tgt_vocab_size=37 if share else 29)
    for (share, tie, bias), act, scale in zip(
        itertools.product([True, False], [True, False], [True, False]),
        itertools.cycle(["relu", "gelu", "swish"]), itertools.cycle([True, False, False]))
]


@pytest.mark.parametrize("overrides", EXPRESSIBLE, ids=lambda o: "-".join(
    f"{k}={v}" for k, v in o.items() if k != "tgt_vocab_size"))
def test_round_trip_and_logits_parity(overrides):
    config = marian_cfg(**overrides)
    flat = random_flat(config, seed=len(str(overrides)))
    marian = to_marian(flat, config)
    assert marian.config._attn_implementation == "eager"
    assert not marian.training

    back, back_config = from_marian(marian)
    assert back_config == config
    assert sorted(back) == sorted(flat)
    for name in flat:
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], flat[name], err_msg=name)

    src, tgt = padded_batch(config, seed=3)
    ref = marian_logits(marian, src, tgt, config.pad_id)
    mirror = torch_model.Transformer(config).load_canonical(flat).eval()
    logits, _ = torch_model.forward(mirror, src, tgt, capture=False)
    assert normalised(logits.detach(), ref) <= TOL
    hf = TransformerLabForConditionalGeneration.from_canonical(flat, config)
    with torch.no_grad():
        hf_logits = hf(input_ids=src, decoder_input_ids=tgt).logits
    assert normalised(hf_logits, ref) <= TOL
    # the logits really depend on every choice (not all near zero or constant)
    assert ref.std() > 0.1


def test_attention_weights_match_marian_per_layer():
    """A transposed or head-permuted kernel could still give close logits by luck; the
    per-layer attention probabilities of every block cannot."""
    config = marian_cfg(activation="gelu")
    flat = random_flat(config, seed=11)
    src, tgt = padded_batch(config, seed=12)
    marian = to_marian(flat, config)
    with torch.no_grad():
        out = marian(input_ids=src, attention_mask=(src != 0).long(), decoder_input_ids=tgt,
                     output_attentions=True)
    mirror = torch_model.Transformer(config).load_canonical(flat).eval()
    _, inter = torch_model.forward(mirror, src, tgt)
    for i in range(config.num_encoder_layers):
        ours = inter[f"encoder/layer_{i}/self_attn/weights"]
        assert normalised(ours, out.encoder_attentions[i]) <= TOL
        assert ours.max() > 0.5  # far from uniform: the test can see a wrong kernel
    for i in range(config.num_decoder_layers):
        assert normalised(inter[f"decoder/layer_{i}/self_attn/weights"],
                          out.decoder_attentions[i]) <= TOL
        assert normalised(inter[f"decoder/layer_{i}/cross_attn/weights"],
                          out.cross_attentions[i]) <= TOL


def test_converted_marian_round_trip_through_save_pretrained(tmp_path):
    config = marian_cfg(share_embeddings=True, tie_output=False, output_bias=True)
    flat = random_flat(config, seed=5)
    to_marian(flat, config).save_pretrained(tmp_path / "marian")
    ckpt = from_pretrained_marian(tmp_path / "marian")
    assert ckpt.config == config
    assert ckpt.tokenizer is None  # the folder has no tokenizer files
    for name in flat:
        np.testing.assert_array_equal(ckpt.flat[name], flat[name], err_msg=name)
    with pytest.raises(ValueError, match="with_tokenizer=True"):
        from_pretrained_marian(tmp_path / "marian", with_tokenizer=True)


def randomise_every_weight(model: MarianMTModel, seed: int) -> None:
    """Overwrite every parameter and final_logits_bias (HF init: near-uniform attention)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embed_positions" in name:
                continue  # fixed sinusoids, not weights
            noise = torch.randn(param.shape, generator=gen) * (0.2 if param.ndim == 2 else 0.1)
            param.copy_(noise + (1.0 if "layer_norm.weight" in name else 0.0))
        model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=gen))


@pytest.mark.parametrize("share,tie", [(True, True), (False, True), (False, False)])
def test_native_marian_checkpoint_loads_and_matches(tmp_path, share, tie):
    """A Marian model built by transformers itself (opus-mt style: pad = decoder start,
    eos = 0, swish, scaled embeddings), saved to disk, loaded through from_pretrained_marian."""
    vocab, dec_vocab = 41, (41 if share else 33)
    mc = MarianConfig(vocab_size=vocab, decoder_vocab_size=dec_vocab,
                      share_encoder_decoder_embeddings=share, tie_word_embeddings=tie, d_model=16,
                      encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24,
                      max_position_embeddings=12, activation_function="swish",
                      scale_embedding=True, pad_token_id=vocab - 1 if share else 30,
                      decoder_start_token_id=vocab - 1 if share else 30, eos_token_id=0,
                      attn_implementation="eager")
    native = MarianMTModel(mc)
    randomise_every_weight(native, seed=int(share) + 2 * int(tie))
    native.save_pretrained(tmp_path / "opus-mt-tiny")
    ckpt = from_pretrained_marian(tmp_path / "opus-mt-tiny")
    cfg = ckpt.config
    assert (cfg.pad_id, cfg.bos_id, cfg.eos_id) == (mc.pad_token_id, mc.pad_token_id, 0)
    assert (cfg.share_embeddings, cfg.tie_output, cfg.output_bias) == (share, tie, True)
    assert (cfg.activation, cfg.scale_embeddings, cfg.positional_layout) == ("swish", True, "split")
    assert (cfg.src_vocab_size, cfg.tgt_vocab_size) == (vocab, dec_vocab)

    # opus-mt style input: source ends with eos (0), pads are pad_id; the decoder input starts
    # with the start token, which is the pad id (bos_id == pad_id)
    src = torch.tensor([[5, 6, 7, 8, 0], [9, 10, 0, cfg.pad_id, cfg.pad_id]])
    tgt = torch.tensor([[cfg.bos_id, 11, 12], [cfg.bos_id, 13, cfg.pad_id]])
    ref = marian_logits(native.eval(), src, tgt, cfg.pad_id)
    mirror = torch_model.Transformer(cfg).load_canonical(ckpt.flat).eval()
    logits, _ = torch_model.forward(mirror, src, tgt, capture=False)
    assert normalised(logits.detach(), ref) <= TOL
    # and back: canonical -> Marian gives the native model's outputs again
    assert normalised(marian_logits(to_marian(ckpt.flat, cfg), src, tgt, cfg.pad_id), ref) <= TOL


def test_generate_matches_marian():
    """HF generate on MarianMT and on the bridge model agree token for token (same weights,
    greedy and beam, eos/pad handling, a padded batch whose pad mask Marian gets explicitly)."""
    config = marian_cfg(output_bias=True)
    flat = random_flat(config, seed=23)
    flat["output/bias"][config.eos_id] += 2.0  # rows finish at different steps, or never
    src, _ = padded_batch(config, seed=22)
    marian = to_marian(flat, config)
    hf = TransformerLabForConditionalGeneration.from_canonical(flat, config)
    for kwargs in (dict(num_beams=1), dict(num_beams=3, length_penalty=0.6, num_return_sequences=2),
                   dict(num_beams=2, early_stopping=True)):
        ref = marian.generate(input_ids=src, attention_mask=(src != 0).long(), max_new_tokens=9,
                              do_sample=False, **kwargs)
        ours = hf.generate(input_ids=src, max_new_tokens=9, do_sample=False, **kwargs)
        assert torch.equal(ours, ref), kwargs
        finished = (ref[:, 1:] == config.eos_id).any(dim=1)
        assert finished.any(), kwargs


@pytest.mark.parametrize("field,value", [("norm_position", "pre"),
                                         ("positional_layout", "interleaved"),
                                         ("layer_norm_eps", 1e-6)])
def test_inexpressible_configs_are_refused_naming_the_field(field, value):
    config = marian_cfg(**{field: value})
    for call in (lambda: marian_compatible(config), lambda: marian_config(config),
                 lambda: to_marian(random_flat(config, 0), config)):
        with pytest.raises(ValueError, match=field):
            call()
    assert marian_compatible(marian_cfg()) == marian_cfg()


@pytest.mark.parametrize("change,field", [
    (dict(decoder_attention_heads=4), "decoder_attention_heads"),
    (dict(decoder_ffn_dim=32), "decoder_ffn_dim"),
    (dict(activation_function="gelu_new"), "activation_function"),
    (dict(activation_dropout=0.1), "activation_dropout"),
])
def test_inexpressible_marian_models_are_refused_naming_the_field(change, field):
    mc = dict(vocab_size=20, d_model=16, encoder_layers=1, decoder_layers=1,
              encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
              decoder_ffn_dim=24, max_position_embeddings=8, pad_token_id=19,
              decoder_start_token_id=19, eos_token_id=0)
    model = MarianMTModel(MarianConfig(**{**mc, **change}))
    with pytest.raises(ValueError, match=field):
        from_marian(model)


def test_bad_arguments():
    config = marian_cfg()
    flat = random_flat(config, 0)
    with pytest.raises(ValueError, match="must be a transformers MarianMTModel"):
        from_marian(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="missing"):
        to_marian({k: v for k, v in flat.items() if "ffn" not in k}, config)
    marian = to_marian(flat, config)
    with torch.no_grad():
        marian.final_logits_bias.fill_(0.5)
    with pytest.raises(ValueError, match="output_bias=False"):
        from_marian(marian, output_bias=False)
    flat2, cfg2 = from_marian(marian)  # auto: a non-zero bias becomes output/bias
    assert cfg2.output_bias and np.all(flat2["output/bias"] == 0.5)


def test_tokenizer_without_sentencepiece_warns_or_raises(tmp_path):
    """A folder with tokenizer files: MarianTokenizer needs sentencepiece; without it the
    default warns and returns tokenizer=None, with_tokenizer=True raises ImportError."""
    try:
        import sentencepiece  # noqa: F401
        pytest.skip("sentencepiece is installed")
    except ImportError:
        pass
    config = marian_cfg()
    to_marian(random_flat(config, 1), config).save_pretrained(tmp_path)
    (tmp_path / "source.spm").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ckpt = from_pretrained_marian(tmp_path)
    assert ckpt.tokenizer is None
    assert any("sentencepiece" in str(w.message) for w in caught)
    with pytest.raises(ImportError, match="sentencepiece"):
        from_pretrained_marian(tmp_path, with_tokenizer=True)


@pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")
def test_opus_mt_folder_with_its_sentencepiece_tokenizer_loads_and_translates_alike(tmp_path):
    """An opus-mt style folder made offline: sentencepiece models learnt here on number words,
    `MarianTokenizer.save_pretrained`, and a native Marian model over that vocabulary.
    `from_pretrained_marian` returns the tokenizer with the weights, and the ids it makes run
    through the mirror exactly as through Marian."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import MarianTokenizer

    import tasks

    texts = [tasks.number_words(n, lang) for n in range(0, 3000, 7) for lang in ("en", "de")]
    (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "spm"), vocab_size=60,
        model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
        num_threads=1, minloglevel=2)
    pieces = [line.split("\t")[0] for line in
              (tmp_path / "spm.vocab").read_text(encoding="utf-8").splitlines()]
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)  # opus-mt: pad is the last id and the decoder start
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    folder = tmp_path / "opus-mt-en-de-tiny"
    tok = MarianTokenizer(str(tmp_path / "spm.model"), str(tmp_path / "spm.model"),
                          str(tmp_path / "vocab.json"), source_lang="en", target_lang="de")
    tok.save_pretrained(folder)
    mc = MarianConfig(vocab_size=len(vocab), decoder_vocab_size=len(vocab), d_model=16,
                      encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24,
                      max_position_embeddings=32, activation_function="swish",
                      scale_embedding=True, pad_token_id=vocab["<pad>"],
                      decoder_start_token_id=vocab["<pad>"], eos_token_id=0,
                      attn_implementation="eager")
    native = MarianMTModel(mc)
    randomise_every_weight(native, seed=5)
    native.save_pretrained(folder)

    ckpt = from_pretrained_marian(folder, with_tokenizer=True)
    assert isinstance(ckpt.tokenizer, MarianTokenizer)
    assert ckpt.tokenizer.get_vocab() == vocab
    batch = ckpt.tokenizer(["three hundred and twelve", "seven"], padding=True,
                           return_tensors="pt")
    src = batch["input_ids"]                               # [2, s], each row ends with eos
    assert src[0, -1] == 0 and src[1, -1] in (0, vocab["<pad>"])
    assert ckpt.tokenizer.decode(src[0], skip_special_tokens=True) == "three hundred and twelve"
    cfg = ckpt.config
    tgt = torch.tensor([[cfg.bos_id, 7, 9], [cfg.bos_id, 11, cfg.pad_id]])
    ref = marian_logits(native.eval(), src, tgt, cfg.pad_id)
    mirror = torch_model.Transformer(cfg).load_canonical(ckpt.flat).eval()
    logits, _ = torch_model.forward(mirror, src, tgt, capture=False)
    assert normalised(logits.detach(), ref) <= TOL

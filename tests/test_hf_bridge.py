"""hf_bridge: the transformers config and model over the torch mirror.

Configs give every dimension a different size (d_model 24, 3 heads, d_ff 40, 2 encoder and 3
decoder layers, vocabularies 37 / 29); weights are random everywhere, so attention is far from
uniform; batches are right-padded.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForSeq2SeqLM, GenerationConfig  # noqa: E402
from transformers.cache_utils import EncoderDecoderCache  # noqa: E402

import torch_model  # noqa: E402
from hf_bridge import (  # noqa: E402
    TransformerLabConfig,
    TransformerLabForConditionalGeneration,
    generate_tokens,
    pad_after_eos,
    shift_tokens_right,
)
from spec import (  # noqa: E402
    TransformerConfig,
    intermediate_shapes,
    label_smoothed_cross_entropy,
    param_shapes,
    random_params,
)

Model = TransformerLabForConditionalGeneration


def cfg(**overrides) -> TransformerConfig:
    base = dict(src_vocab_size=37, tgt_vocab_size=37, d_model=24, num_heads=3,
                num_encoder_layers=2, num_decoder_layers=3, d_ff=40, max_len=20)
    return TransformerConfig(**{**base, **overrides})


CONFIGS = {
    "post-shared-tied": cfg(),
    "pre-unshared-untied-bias": cfg(norm_position="pre", share_embeddings=False,
                                    tie_output=False, output_bias=True, tgt_vocab_size=29,
                                    activation="gelu", scale_embeddings=False),
    "split-swish-shared-untied": cfg(positional_layout="split", activation="swish",
                                     tie_output=False, output_bias=True),
    "marian-ids": cfg(pad_id=5, bos_id=5, eos_id=0, positional_layout="split"),
}


def random_flat(config: TransformerConfig, seed: int) -> dict[str, np.ndarray]:
    """Every canonical weight random (see spec.random_params): attention far from uniform."""
    return random_params(config, seed)


def real_ids(config: TransformerConfig, vocab: int, rng, shape) -> np.ndarray:
    """Random ids that are not special (so a pad only appears where we put it)."""
    special = {config.pad_id, config.bos_id, config.eos_id}
    pool = np.array([i for i in range(vocab) if i not in special])
    return pool[rng.integers(0, len(pool), size=shape)]


def batch(config: TransformerConfig, seed: int = 0, lengths=((7, 6), (4, 3), (2, 5))):
    """src [3, 7] ending with eos then pads; tgt_in [3, 6] starting with bos then pads;
    labels = tgt_in shifted left with eos, pads after."""
    rng = np.random.default_rng(seed)
    s, t = max(a for a, _ in lengths), max(b for _, b in lengths)
    src = real_ids(config, config.src_vocab_size, rng, (len(lengths), s))
    body = real_ids(config, config.tgt_vocab_size, rng, (len(lengths), t))
    tgt = np.full((len(lengths), t), config.pad_id)
    labels = np.full((len(lengths), t), config.pad_id)
    for row, (s_len, t_len) in enumerate(lengths):
        src[row, s_len - 1], src[row, s_len:] = config.eos_id, config.pad_id
        tgt[row, 0], tgt[row, 1:t_len] = config.bos_id, body[row, 1:t_len]
        labels[row, :t_len - 1], labels[row, t_len - 1] = body[row, 1:t_len], config.eos_id
    return tuple(torch.as_tensor(x, dtype=torch.int64) for x in (src, tgt, labels))


def mirror_and_hf(config: TransformerConfig, seed: int = 0, **hf_kwargs):
    flat = random_flat(config, seed)
    mirror = torch_model.Transformer(config).load_canonical(flat).eval()
    return flat, mirror, Model.from_canonical(flat, config, **hf_kwargs)


# -- config --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_converts_without_loss_and_has_what_generate_reads(name, tmp_path):
    spec_cfg = CONFIGS[name]
    hf_cfg = TransformerLabConfig.from_spec(spec_cfg, label_smoothing=0.05)
    assert hf_cfg.to_spec() == spec_cfg
    assert hf_cfg.model_type == "transformer_lab" and hf_cfg.is_encoder_decoder
    assert (hf_cfg.vocab_size, hf_cfg.num_hidden_layers, hf_cfg.hidden_size) == (
        spec_cfg.tgt_vocab_size, spec_cfg.num_decoder_layers, spec_cfg.d_model)
    assert (hf_cfg.pad_token_id, hf_cfg.bos_token_id, hf_cfg.eos_token_id,
            hf_cfg.decoder_start_token_id) == (spec_cfg.pad_id, spec_cfg.bos_id,
                                               spec_cfg.eos_id, spec_cfg.bos_id)
    assert hf_cfg.tie_word_embeddings == spec_cfg.tie_output and hf_cfg.use_cache
    gen = GenerationConfig.from_model_config(hf_cfg)
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id) == (
        spec_cfg.bos_id, spec_cfg.eos_id, spec_cfg.pad_id)
    hf_cfg.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "transformer_lab" and saved["d_model"] == spec_cfg.d_model
    loaded = AutoConfig.from_pretrained(tmp_path)  # registered with AutoConfig
    assert isinstance(loaded, TransformerLabConfig)
    assert loaded.to_spec() == spec_cfg and loaded.label_smoothing == 0.05


def test_config_rejects_bad_values_naming_them():
    with pytest.raises(ValueError, match="num_heads"):
        TransformerLabConfig(**{**cfg().to_dict(), "num_heads": 5})
    with pytest.raises(ValueError, match="pad_token_id=3.*pad_id=0"):
        TransformerLabConfig(**cfg().to_dict(), pad_token_id=3)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        TransformerLabConfig(**cfg().to_dict(), decoder_start_token_id=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        TransformerLabConfig(**cfg().to_dict(), label_smoothing=1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        TransformerLabConfig(**cfg().to_dict(), vocab_size=99)
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        TransformerLabConfig(**cfg().to_dict(), tie_word_embeddings=False)  # tie_output=True
    with pytest.raises(ValueError, match="spec.TransformerConfig"):
        TransformerLabConfig.from_spec({"d_model": 24})
    # HF's own flag alone is mapped onto tie_output
    untied = TransformerLabConfig(**{k: v for k, v in cfg().to_dict().items()
                                     if k != "tie_output"}, tie_word_embeddings=False)
    assert untied.tie_output is False and untied.to_spec().tie_output is False
    # set as attributes later, the two names of one value move together
    edited = TransformerLabConfig.from_spec(cfg())
    edited.pad_id = 4
    assert edited.pad_token_id == 4 and edited.to_spec().pad_id == 4
    edited.decoder_start_token_id = 3
    assert (edited.bos_id, edited.bos_token_id) == (3, 3)
    edited.tie_word_embeddings = False
    assert edited.to_spec().tie_output is False
    edited.vocab_size = 40  # shared embeddings: one vocabulary
    assert (edited.src_vocab_size, edited.tgt_vocab_size) == (40, 40)


# -- forward -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_is_the_mirror_with_the_same_taps(name):
    config = CONFIGS[name]
    flat, mirror, hf = mirror_and_hf(config, seed=1)
    src, tgt, _ = batch(config, seed=2)
    ref, ref_inter = torch_model.forward(mirror, src, tgt)
    with torch.no_grad(), torch_model.capture(hf) as inter:
        out = hf(input_ids=src, decoder_input_ids=tgt)
    assert torch.equal(out.logits, ref.detach())  # the same modules, the same arithmetic
    as_tuple = hf(input_ids=src, decoder_input_ids=tgt, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    b, s = src.shape
    assert list(inter) == list(ref_inter)
    assert set(inter) == set(intermediate_shapes(config, b, s, tgt.shape[1]))
    for key, value in ref_inter.items():
        np.testing.assert_array_equal(inter[key], value, err_msg=key)
    assert not torch_model.has_hooks(hf)
    for key, value in hf.to_canonical().items():
        np.testing.assert_array_equal(value, flat[key], err_msg=key)


def test_patching_through_the_hf_model():
    """A patch on the HF model's tap has the same effect as on the mirror's."""
    config = CONFIGS["post-shared-tied"]
    _, mirror, hf = mirror_and_hf(config, seed=3)
    src, tgt, _ = batch(config, seed=4)
    name = "decoder/layer_1/cross_attn/weights"

    def uniform(w: torch.Tensor) -> torch.Tensor:
        return torch.full_like(w, 1.0 / w.shape[-1])

    with torch.no_grad():
        plain = hf(input_ids=src, decoder_input_ids=tgt).logits
        with torch_model.patch(hf, {name: uniform}):
            patched = hf(input_ids=src, decoder_input_ids=tgt).logits
        with torch_model.patch(mirror, {name: uniform}):
            expected = mirror(src, tgt)
    assert torch.equal(patched, expected)
    assert (patched - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["post-shared-tied", "pre-unshared-untied-bias"])
def test_attentions_and_hidden_states(name):
    config = CONFIGS[name]
    _, _, hf = mirror_and_hf(config, seed=5)
    src, tgt, _ = batch(config, seed=6)
    with torch.no_grad(), torch_model.capture(hf) as inter:
        out = hf(input_ids=src, decoder_input_ids=tgt, output_attentions=True,
                 output_hidden_states=True)
    ne, nd = config.num_encoder_layers, config.num_decoder_layers
    assert len(out.encoder_attentions) == ne
    assert len(out.decoder_attentions) == len(out.cross_attentions) == nd
    assert len(out.encoder_hidden_states) == ne + 1
    assert len(out.decoder_hidden_states) == nd + 1
    for i in range(ne):
        np.testing.assert_array_equal(out.encoder_attentions[i].numpy(),
                                      inter[f"encoder/layer_{i}/self_attn/weights"])
    for i in range(nd):
        np.testing.assert_array_equal(out.decoder_attentions[i].numpy(),
                                      inter[f"decoder/layer_{i}/self_attn/weights"])
        np.testing.assert_array_equal(out.cross_attentions[i].numpy(),
                                      inter[f"decoder/layer_{i}/cross_attn/weights"])
    for side, states, n in (("encoder", out.encoder_hidden_states, ne),
                            ("decoder", out.decoder_hidden_states, nd)):
        np.testing.assert_array_equal(states[0].numpy(), inter[f"{side}/embed/output"])
        np.testing.assert_array_equal(states[-1].numpy(), inter[f"{side}/output"])
        if config.norm_position == "post":  # a post-LN layer ends with its ffn_norm
            for i in range(n):
                np.testing.assert_array_equal(states[i + 1].numpy(),
                                              inter[f"{side}/layer_{i}/ffn_norm/output"])
    np.testing.assert_array_equal(out.encoder_last_hidden_state.numpy(), inter["encoder/output"])
    # nothing is recorded unless asked
    plain = hf(input_ids=src, decoder_input_ids=tgt)
    assert plain.encoder_attentions is None and plain.decoder_hidden_states is None


def test_cache_is_transformers_own_and_stepwise_decoding_equals_the_full_pass():
    config = CONFIGS["pre-unshared-untied-bias"]
    _, _, hf = mirror_and_hf(config, seed=7)
    src, tgt, _ = batch(config, seed=8)
    with torch.no_grad():
        full = hf(input_ids=src, decoder_input_ids=tgt)
        assert isinstance(full.cache, EncoderDecoderCache)
        assert full.cache.get_seq_length() == tgt.shape[1]
        encoder_outputs = hf.get_encoder()(input_ids=src)  # carries the pad mask
        np.testing.assert_array_equal(encoder_outputs.key_mask.numpy(), src != config.pad_id)
        cache, steps = None, []
        for i in range(tgt.shape[1]):
            # `past_key_values` is the pre-transformers-5 name of `cache`: both are accepted
            name = "cache" if i % 2 else "past_key_values"
            out = hf(encoder_outputs=encoder_outputs, decoder_input_ids=tgt[:, i:i + 1],
                     use_cache=True, output_attentions=True, **{name: cache})
            cache = out.cache
            assert isinstance(cache, EncoderDecoderCache) and cache.get_seq_length() == i + 1
            steps.append(out.logits)
            assert out.decoder_attentions[0].shape == (3, config.num_heads, 1, i + 1)
            assert out.cross_attentions[0].shape == (3, config.num_heads, 1, src.shape[1])
    stepwise = torch.cat(steps, dim=1)
    # the same math on differently shaped matmuls: float32 rounding only
    assert (stepwise - full.logits).abs().max() <= 1e-5 * max(1.0, full.logits.abs().max())


def test_encoder_outputs_tuple_needs_the_pad_mask():
    config = CONFIGS["post-shared-tied"]
    _, _, hf = mirror_and_hf(config, seed=9)
    src, tgt, _ = batch(config, seed=10)
    with torch.no_grad():
        ref = hf(input_ids=src, decoder_input_ids=tgt).logits
        memory = hf.get_encoder()(input_ids=src).last_hidden_state
        with pytest.raises(ValueError, match="attention_mask is required"):
            hf(encoder_outputs=(memory,), decoder_input_ids=tgt)
        again = hf(encoder_outputs=(memory,), attention_mask=src != config.pad_id,
                   decoder_input_ids=tgt).logits
    assert torch.equal(again, ref)


# -- masks ---------------------------------------------------------------------------------
def test_attention_mask_must_agree_with_pad_masking():
    config = CONFIGS["marian-ids"]  # pad_id 5 == bos_id
    _, _, hf = mirror_and_hf(config, seed=11)
    src, tgt, _ = batch(config, seed=12)
    with torch.no_grad():
        ref = hf(input_ids=src, decoder_input_ids=tgt).logits
        for mask in (src != config.pad_id, (src != config.pad_id).long()):
            assert torch.equal(hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits,
                               ref)
        wrong = torch.ones_like(src)  # would let queries see the pads
        with pytest.raises(ValueError, match="attention_mask disagrees"):
            hf(input_ids=src, attention_mask=wrong, decoder_input_ids=tgt)
        with pytest.raises(ValueError, match="attention_mask has shape"):
            hf(input_ids=src, attention_mask=wrong[:, :-1], decoder_input_ids=tgt)
        # right padding on the target side changes nothing at real positions
        dmask = tgt != config.pad_id
        dmask[:, 0] = True  # the start token is pad_id here, but it is a real position
        same = hf(input_ids=src, decoder_input_ids=tgt, decoder_attention_mask=dmask).logits
        assert torch.equal(same[dmask], ref[dmask])  # (pad queries see fewer keys: unused)
        # other patterns hide the target keys they mark 0 (BART's semantics): left padding works
        left_tgt = torch.cat([torch.full((3, 2), config.pad_id), tgt], dim=1)
        left = torch.cat([torch.zeros(3, 2, dtype=torch.long), torch.ones_like(tgt)], dim=1)
        shifted = hf(input_ids=src, decoder_input_ids=left_tgt, decoder_attention_mask=left)
        # positions shift by 2, so only the masking is compared: a pad key changes nothing
        shifted_pad = left_tgt.clone()
        shifted_pad[:, :2] = (config.pad_id + 1) % config.tgt_vocab_size
        other = hf(input_ids=src, decoder_input_ids=shifted_pad, decoder_attention_mask=left)
        assert torch.equal(shifted.logits[:, 2:], other.logits[:, 2:])
        with pytest.raises(ValueError, match="decoder_attention_mask has shape"):
            hf(input_ids=src, decoder_input_ids=tgt, decoder_attention_mask=left)


def test_bad_inputs_raise_naming_the_argument():
    config = CONFIGS["post-shared-tied"]
    _, _, hf = mirror_and_hf(config, seed=13)
    src, tgt, labels = batch(config, seed=14)
    with pytest.raises(ValueError, match="input_ids"):
        hf(input_ids=src + config.src_vocab_size, decoder_input_ids=tgt)
    with pytest.raises(ValueError, match="decoder_input_ids"):
        hf(input_ids=src, decoder_input_ids=tgt.float())
    with pytest.raises(ValueError, match="decoder_input_ids"):
        hf(input_ids=src, decoder_input_ids=torch.ones(3, config.max_len + 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="decoder_input_ids"):
        hf(input_ids=src)
    with pytest.raises(ValueError, match="labels"):
        hf(input_ids=src, labels=labels + 100)
    with pytest.raises(ValueError, match="inputs_embeds"):
        hf(input_ids=src, decoder_input_ids=tgt, inputs_embeds=torch.zeros(3, 7, 24))
    with pytest.raises(ValueError, match="inputs_embeds"):
        hf(inputs_embeds=torch.zeros(3, 7, 5), decoder_input_ids=tgt)
    with torch.no_grad():  # positions run out: the cache holds 18, two more would pass max_len
        out = hf(input_ids=src, decoder_input_ids=torch.ones(3, 18, dtype=torch.int64))
        with pytest.raises(ValueError, match="decoder_input_ids has length 3"):
            hf(input_ids=src, decoder_input_ids=torch.ones(3, 3, dtype=torch.int64),
               cache=out.cache)


# -- loss ----------------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_from_labels_only_matches_the_reference(smoothing):
    config = CONFIGS["marian-ids"]
    _, _, hf = mirror_and_hf(config, seed=15, label_smoothing=smoothing)
    src, tgt, labels = batch(config, seed=16)
    shifted = shift_tokens_right(labels, config.pad_id, config.bos_id)
    real = tgt != config.pad_id
    real[:, 0] = True  # the start token is pad_id in this config
    assert torch.equal(shifted[real], tgt[real])  # the decoder input, up to what follows eos
    out = hf(input_ids=src, labels=labels)
    assert out.cache is None  # a training forward builds no cache
    with torch.no_grad():
        logits = hf(input_ids=src, decoder_input_ids=shifted).logits
    assert torch.equal(out.logits.detach(), logits)
    ref = label_smoothed_cross_entropy(logits.numpy(), labels.numpy(), config.pad_id, smoothing)
    assert abs(float(out.loss.detach()) - ref) <= 1e-5 * max(1.0, abs(ref))
    # -100 (HF's "no label") is ignored like pad
    hf_style = labels.masked_fill(labels == config.pad_id, -100)
    assert torch.allclose(hf(input_ids=src, labels=hf_style).loss, out.loss, atol=0, rtol=0)
    out.loss.backward()
    grads = hf.transformer.canonical_grads()
    assert set(grads) == set(param_shapes(config))
    assert np.abs(grads["decoder/layer_2/ffn/w2/kernel"]).max() > 0


# -- weights, saving, loading --------------------------------------------------------------
def test_save_pretrained_and_auto_from_pretrained_give_identical_outputs(tmp_path):
    config = CONFIGS["pre-unshared-untied-bias"]
    flat, _, hf = mirror_and_hf(config, seed=17, label_smoothing=0.2)
    src, tgt, labels = batch(config, seed=18)
    hf.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(loaded) is Model and not loaded.training
    assert loaded.config.to_spec() == config and loaded.config.label_smoothing == 0.2
    with torch.no_grad():
        a = hf(input_ids=src, decoder_input_ids=tgt, labels=labels)
        b = loaded(input_ids=src, decoder_input_ids=tgt, labels=labels)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    for name, value in loaded.to_canonical().items():
        np.testing.assert_array_equal(value, flat[name], err_msg=name)
    # the non-persistent position tables were rebuilt, not left as uninitialised memory
    for stack in (loaded.transformer.encoder, loaded.transformer.decoder):
        assert torch.equal(stack.embed.positions, hf.transformer.encoder.embed.positions)


def test_from_canonical_is_strict_and_deterministic():
    config = CONFIGS["post-shared-tied"]
    flat = random_flat(config, seed=19)
    with pytest.raises(ValueError, match="missing"):
        Model.from_canonical({k: v for k, v in flat.items() if "ffn" not in k}, config)
    with pytest.raises(ValueError, match="config_kwargs"):
        Model.from_canonical(flat, TransformerLabConfig.from_spec(config), label_smoothing=0.3)
    with pytest.raises(ValueError, match="TransformerLabConfig"):
        Model(config)
    torch.manual_seed(0)
    a = Model(TransformerLabConfig.from_spec(config)).to_canonical()
    torch.manual_seed(0)
    b = Model(TransformerLabConfig.from_spec(config)).to_canonical()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # get_encoder() lists no weight twice
    hf = Model.from_canonical(flat, config)
    names = set(hf.state_dict())
    encoder = hf.get_encoder()
    assert set(hf.state_dict()) == names and not list(encoder.parameters())


# -- generate ------------------------------------------------------------------------------
DECODE_CASES = [(1, 1.0, False), (3, 0.8, False), (2, 1.0, True), (4, 1.3, "never")]


@pytest.mark.parametrize("name,seed", [("post-shared-tied", 20), ("pre-unshared-untied-bias", 21),
                                       ("split-swish-shared-untied", 22), ("marian-ids", 23)])
def test_generate_equals_torch_model_decoding(name, seed):
    """HF generate (greedy and beam, with the cache) gives the mirror's tokens exactly.

    The eos logit is raised so that rows finish at different steps and some never do: eos
    and pad handling, beam bookkeeping and early stopping are all exercised."""
    config = CONFIGS[name]
    if not config.output_bias:
        config = config.replace(output_bias=True)
    flat = random_flat(config, seed)
    flat["output/bias"][config.eos_id] += 1.5  # some rows stop early, others run to max_len
    mirror = torch_model.Transformer(config).load_canonical(flat).eval()
    hf = Model.from_canonical(flat, config)
    src, _, _ = batch(config, seed + 100)
    max_len = 8
    finished_early = still_running = 0
    for beam_size, alpha, early in DECODE_CASES:
        ours = generate_tokens(hf, src, max_len, beam_size, alpha, early)
        if beam_size == 1:
            ref = torch_model.greedy_decode(mirror, src, max_len)
        else:
            ref = torch_model.beam_search(mirror, src, beam_size, max_len, alpha, early)
        assert ours.shape == (3, max_len) and ours.dtype == torch.int64
        assert torch.equal(ours, ref), (beam_size, alpha, early, ours, ref)
        is_eos = ours == config.eos_id
        finished_early += int((is_eos[:, :-1].any(dim=1)).sum())
        still_running += int((~is_eos.any(dim=1)).sum())
    assert finished_early > 0 and still_running > 0, (finished_early, still_running)


def test_generate_pads_after_eos_and_needs_no_attention_mask():
    config = CONFIGS["post-shared-tied"].replace(output_bias=True)
    flat = random_flat(config, 24)
    flat["output/bias"][config.eos_id] += 2.0
    hf = Model.from_canonical(flat, config)
    src, _, _ = batch(config, 25)
    with torch.no_grad():
        raw = hf.generate(input_ids=src, max_new_tokens=8, num_beams=3, do_sample=False)
        masked = hf.generate(input_ids=src, attention_mask=src != config.pad_id,
                             max_new_tokens=8, num_beams=3, do_sample=False)
    assert torch.equal(raw, masked)  # the pad mask travels with the encoder output
    assert torch.equal(raw[:, 0], torch.full((3,), config.bos_id))
    tokens = pad_after_eos(raw[:, 1:], config.eos_id, config.pad_id)
    for row in tokens:
        eos = (row == config.eos_id).nonzero()
        if len(eos):
            assert (row[int(eos[0]) + 1:] == config.pad_id).all()
    with pytest.raises(ValueError, match="max_len"):
        generate_tokens(hf, src, config.max_len + 1)
    with pytest.raises(ValueError, match="beam_size"):
        generate_tokens(hf, src, 4, beam_size=0)
    with pytest.raises(ValueError, match="num_beams"):
        generate_tokens(hf, src, 4, num_beams=2)
    with pytest.raises(ValueError, match="src"):
        generate_tokens(hf, src + 100, 4)


# -- gradient checkpointing, sdpa, inputs_embeds -------------------------------------------
def _saved_bytes(hf, src, labels) -> tuple[int, dict[str, torch.Tensor]]:
    """Bytes autograd keeps for the backward (parameters excluded), and the gradients."""
    params = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    seen, total = set(), [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    hf.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = hf(input_ids=src, labels=labels).loss
    loss.backward()
    return total[0], {n: p.grad.clone() for n, p in hf.named_parameters()}


def test_gradient_checkpointing_saves_activations_and_keeps_the_gradients():
    config = CONFIGS["pre-unshared-untied-bias"].replace(dropout_rate=0.0)
    _, _, hf = mirror_and_hf(config, seed=30)
    src, _, labels = batch(config, seed=31)
    hf.train()
    plain, grads = _saved_bytes(hf, src, labels)
    hf.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for stack in (hf.transformer.encoder,
                                                         hf.transformer.decoder)
               for layer in stack.layers)
    checkpointed, grads_ckpt = _saved_bytes(hf, src, labels)
    assert checkpointed < 0.6 * plain, (checkpointed, plain)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    # with gradients on, the cache would be written twice by the backward replay: none is built
    assert hf(input_ids=src, decoder_input_ids=labels).cache is None


@pytest.mark.parametrize("name", ["post-shared-tied", "pre-unshared-untied-bias"])
def test_sdpa_matches_eager_and_capture_falls_back_to_eager(name):
    config = CONFIGS[name]
    _, mirror, hf = mirror_and_hf(config, seed=32)
    src, tgt, _ = batch(config, seed=33)
    sdpa = Model.from_canonical(hf.to_canonical(), config, attn_implementation="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        eager_logits = hf(input_ids=src, decoder_input_ids=tgt).logits
        fused = sdpa(input_ids=src, decoder_input_ids=tgt).logits
        torch.testing.assert_close(fused, eager_logits, rtol=1e-5, atol=1e-5)
        with torch_model.capture(sdpa) as inter:  # hooks on the taps: eager, every name filled
            captured = sdpa(input_ids=src, decoder_input_ids=tgt).logits
        ref, ref_inter = torch_model.forward(mirror, src, tgt)
        assert torch.equal(captured, ref.detach()) and set(inter) == set(ref_inter)
        attn = sdpa(input_ids=src, decoder_input_ids=tgt, output_attentions=True)
    assert len(attn.cross_attentions) == config.num_decoder_layers


@pytest.mark.parametrize("name", ["post-shared-tied", "pre-unshared-untied-bias"])
def test_inputs_embeds_equal_the_ids_they_stand_for(name):
    config = CONFIGS[name]  # scaled shared table; separate unscaled tables
    _, _, hf = mirror_and_hf(config, seed=34)
    src, tgt, _ = batch(config, seed=35)
    with torch.no_grad():
        ref = hf(input_ids=src, decoder_input_ids=tgt).logits
        src_vecs = hf.get_input_embeddings()(src)
        tgt_vecs = hf.transformer.tgt_table(tgt)
        out = hf(inputs_embeds=src_vecs, attention_mask=src != config.pad_id,
                 decoder_inputs_embeds=tgt_vecs).logits
        unmasked = hf(inputs_embeds=src_vecs, decoder_inputs_embeds=tgt_vecs).logits
    assert torch.equal(out, ref)
    assert (unmasked - ref).abs().max() > 1e-4  # without a mask the pads are real keys


def test_resize_token_embeddings_keeps_rows_and_resizes_the_output():
    config = CONFIGS["split-swish-shared-untied"]  # shared table, untied output with bias
    flat, _, hf = mirror_and_hf(config, seed=36)
    table = hf.resize_token_embeddings(config.tgt_vocab_size + 5)
    assert table.weight.shape[0] == config.tgt_vocab_size + 5
    spec_cfg = hf.spec_config
    assert (spec_cfg.src_vocab_size, spec_cfg.tgt_vocab_size) == (42, 42)
    after = hf.to_canonical()
    np.testing.assert_array_equal(after["shared_embedding/embedding"][:37],
                                  flat["shared_embedding/embedding"])
    np.testing.assert_array_equal(after["output/kernel"][:, :37], flat["output/kernel"])
    np.testing.assert_array_equal(after["output/bias"][37:], np.zeros(5, np.float32))
    src, tgt, _ = batch(config, seed=37)
    with torch.no_grad():
        assert hf(input_ids=src, decoder_input_ids=tgt).logits.shape[-1] == 42
    unshared = Model.from_canonical(random_flat(CONFIGS["pre-unshared-untied-bias"], 1),
                                    CONFIGS["pre-unshared-untied-bias"])
    with pytest.raises(ValueError, match="share_embeddings"):
        unshared.resize_token_embeddings(50)

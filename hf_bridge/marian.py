"""Conversion to and from Hugging Face's own `MarianMTModel`, and loading real Marian checkpoints.

MarianMT (the Marian NMT architecture as ported to transformers, e.g. the opus-mt models) is the
paper's Transformer with a few fixed choices, so a canonical config can be expressed in it when
(`marian_compatible` checks this and names the offending field otherwise):
- `norm_position="post"`: Marian is post-LN only (there is no `normalize_before`, no final norm);
- `positional_layout="split"`: `MarianSinusoidalPositionalEmbedding` puts the ceil(d/2) sines
  first and the floor(d/2) cosines after them (not interleaved), with the same angles;
- `layer_norm_eps=1e-5`: Marian's LayerNorms are `nn.LayerNorm(d)` with the default eps, and
  `MarianConfig` has no field to change it.
Everything else maps: `scale_embeddings` -> `scale_embedding` (x sqrt(d_model)),
`share_embeddings` -> `share_encoder_decoder_embeddings`, `tie_output` -> `tie_word_embeddings`,
`output/bias` -> `final_logits_bias`, `activation` relu/gelu/swish -> `activation_function` (the
same names in `ACT2FN`: `nn.ReLU`, exact-erf GELU, `nn.SiLU`), `max_len` ->
`max_position_embeddings`, `bos_id` -> `decoder_start_token_id`.

Known differences, and how they are handled:
- `final_logits_bias` is a buffer in HF, not a parameter: it is converted, but a HF optimizer
  never trains it.  `from_marian` sets `output_bias=True` only when the bias is non-zero (or when
  asked to with `output_bias=True`).
- Marian's token tables are `nn.Embedding(..., padding_idx=pad_id)`: the pad row gets no
  gradient there, while every canonical implementation trains it.  Forward outputs agree.
- Compare with `attn_implementation="eager"` (what `to_marian` builds): SDPA treats a fully
  masked row differently from the contract's "replace with the most negative value", and its
  attention weights are not returned.
- In transformers 5, `tie_word_embeddings=False` switches off *all* of Marian's weight tying,
  so `share_encoder_decoder_embeddings=True` alone would leave three separate token tables
  (`shared`, the encoder's and the decoder's).  For `share_embeddings=True, tie_output=False`
  `to_marian` writes the one canonical table into all three: the forward pass is the same, but
  training in HF lets the copies drift apart.  (Sharing them by module would not survive
  `save_pretrained`, which keeps one copy of an aliased tensor that `from_pretrained` then
  reports missing.)  `from_marian` reads the tables the forward pass uses and calls them shared
  only when they are identical.
- Marian's `decoder_start_token_id` is its pad id, so a real checkpoint has `bos_id == pad_id`.
  The contract's decoder self-attention is causal only (it never masks a pad *query* or key on
  the target side), so the start token is attended to like any other token, as in Marian.
- HF's Marian masks source keys with the `attention_mask` it is given, never by token id; the
  canonical models mask keys equal to `pad_id`.  Pass `attention_mask = input_ids != pad_id`
  to compare padded batches.
- `MarianConfig` defaults to `forced_eos_token_id=0`; `to_marian` sets it to None so that
  `generate()` runs with no logits processor, as the contract's decoding does.  Real opus-mt
  checkpoints also ship a `generation_config` (num_beams 4, bad_words_ids [[pad]], ...): pass
  explicit `generate()` arguments when comparing decoders.

Every converter asserts every key and every shape, like nanoGPT's `from_pretrained`.  Canonical
Dense kernels are `[in, out]`; torch `nn.Linear.weight` is `[out, in]`, hence the transposes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import MarianConfig, MarianMTModel

from spec import TransformerConfig, check_params, sinusoidal_positions
from spec.names import SIDES, num_layers, sublayers

# spec activation -> MarianConfig.activation_function (ACT2FN names), and back (aliases allowed)
TO_MARIAN_ACTIVATION = {"relu": "relu", "gelu": "gelu", "swish": "swish"}
FROM_MARIAN_ACTIVATION = {"relu": "relu", "gelu": "gelu", "gelu_python": "gelu",
                          "swish": "swish", "silu": "swish"}
MARIAN_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default; MarianConfig cannot change it

# canonical sublayer -> Marian module names
_ATTN = {"self_attn": "self_attn", "cross_attn": "encoder_attn"}
_NORM = {"self_attn": "self_attn_layer_norm", "cross_attn": "encoder_attn_layer_norm",
         "ffn": "final_layer_norm"}
_PROJ = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
_POSITIONS = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")
_BIAS = "final_logits_bias"


def marian_compatible(config: TransformerConfig) -> TransformerConfig:
    """Return `config` if MarianMT can express it; else raise ValueError naming the field."""
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"config must be a spec.TransformerConfig, got {type(config).__name__}")
    if config.norm_position != "post":
        raise ValueError(f"config field norm_position={config.norm_position!r} cannot be "
                         f"expressed in MarianMT: Marian is post-LN only (expected 'post')")
    if config.positional_layout != "split":
        raise ValueError(f"config field positional_layout={config.positional_layout!r} cannot be "
                         f"expressed in MarianMT: its sinusoids are 'split' (sines, then cosines)")
    if config.layer_norm_eps != MARIAN_LAYER_NORM_EPS:
        raise ValueError(f"config field layer_norm_eps={config.layer_norm_eps!r} cannot be "
                         f"expressed in MarianMT: its LayerNorms use eps={MARIAN_LAYER_NORM_EPS}")
    return config


def marian_config(config: TransformerConfig, attn_implementation: str = "eager") -> MarianConfig:
    """The `MarianConfig` of a Marian-compatible canonical config."""
    marian_compatible(config)
    return MarianConfig(
        vocab_size=config.src_vocab_size,
        decoder_vocab_size=config.tgt_vocab_size,
        share_encoder_decoder_embeddings=config.share_embeddings,
        tie_word_embeddings=config.tie_output,
        d_model=config.d_model,
        encoder_layers=config.num_encoder_layers,
        decoder_layers=config.num_decoder_layers,
        encoder_attention_heads=config.num_heads,
        decoder_attention_heads=config.num_heads,
        encoder_ffn_dim=config.d_ff,
        decoder_ffn_dim=config.d_ff,
        activation_function=TO_MARIAN_ACTIVATION[config.activation],
        dropout=config.dropout_rate,
        attention_dropout=config.attention_dropout_rate,
        activation_dropout=0.0,  # the paper has no dropout inside the FFN
        max_position_embeddings=config.max_len,
        scale_embedding=config.scale_embeddings,
        pad_token_id=config.pad_id,
        eos_token_id=config.eos_id,
        bos_token_id=config.bos_id,
        decoder_start_token_id=config.bos_id,
        forced_eos_token_id=None,
        attn_implementation=attn_implementation,
    )


def weight_map(config: TransformerConfig) -> dict[str, tuple[str, bool]]:
    """Marian state-dict name -> (canonical name, transposed?) for every weight but positions.

    Tables shared by several Marian names (tied embeddings) appear once per name.  The output
    bias is not here: `final_logits_bias` is a `[1, v]` buffer handled by the converters.
    """
    emb = {"encoder": "encoder/embedding/embedding", "decoder": "decoder/embedding/embedding"}
    out: dict[str, tuple[str, bool]] = {}
    if config.share_embeddings:
        emb = {"encoder": "shared_embedding/embedding", "decoder": "shared_embedding/embedding"}
        out["model.shared.weight"] = (emb["encoder"], False)
    for side in SIDES:
        # nn.Embedding.weight is [v, d] like the canonical table: no transpose
        out[f"model.{side}.embed_tokens.weight"] = (emb[side], False)
        for i in range(num_layers(config, side)):
            for sub in sublayers(side):
                src, dst = f"{side}/layer_{i}/{sub}", f"model.{side}.layers.{i}"
                if sub == "ffn":
                    for canon, hf in (("w1", "fc1"), ("w2", "fc2")):
                        # nn.Linear.weight is [out, in]; the canonical kernel is [in, out]
                        out[f"{dst}.{hf}.weight"] = (f"{src}/{canon}/kernel", True)
                        out[f"{dst}.{hf}.bias"] = (f"{src}/{canon}/bias", False)
                else:
                    for canon, hf in _PROJ.items():
                        # [out, in] vs [in, out]; head h is rows h*k:(h+1)*k of the weight, i.e.
                        # columns h*k:(h+1)*k of the kernel, in both (Marian's view(b, l, h, k))
                        out[f"{dst}.{_ATTN[sub]}.{hf}.weight"] = (f"{src}/{canon}/kernel", True)
                        out[f"{dst}.{_ATTN[sub]}.{hf}.bias"] = (f"{src}/{canon}/bias", False)
                out[f"{dst}.{_NORM[sub]}.weight"] = (f"{src}_norm/scale", False)
                out[f"{dst}.{_NORM[sub]}.bias"] = (f"{src}_norm/bias", False)
    if config.tie_output:
        # the head is the decoder's [v, d] table itself
        out["lm_head.weight"] = (emb["decoder"], False)
    else:
        # lm_head.weight is [v, d] (nn.Linear [out, in]); output/kernel is [d, v]
        out["lm_head.weight"] = ("output/kernel", True)
    return out


def _expected_keys(config: TransformerConfig) -> set[str]:
    return set(weight_map(config)) | set(_POSITIONS) | {_BIAS}


def _check_positions(state: dict[str, torch.Tensor], config: TransformerConfig) -> None:
    table = sinusoidal_positions(config.max_len, config.d_model, "split")
    for name in _POSITIONS:
        got = state[name].detach().float().cpu().numpy()
        assert got.shape == table.shape, f"{name}: shape {got.shape}, expected {table.shape}"
        if not np.array_equal(got, table):
            raise ValueError(f"{name} is not the 'split' sinusoid table of spec.sinusoidal_positions "
                             f"(max abs diff {np.abs(got - table).max():.3g}); positions are "
                             f"not learned in the canonical model")


def to_marian(flat: dict[str, Any], config: TransformerConfig,
              attn_implementation: str = "eager") -> MarianMTModel:
    """A `MarianMTModel` (eval mode, float32) holding the canonical weights `flat`."""
    marian_compatible(config)
    check_params(flat, config)
    model = MarianMTModel(marian_config(config, attn_implementation))
    state = model.state_dict()
    assert set(state) == _expected_keys(config), (
        f"MarianMTModel layout changed: missing {sorted(_expected_keys(config) - set(state))}, "
        f"unexpected {sorted(set(state) - _expected_keys(config))}")
    _check_positions(state, config)
    with torch.no_grad():
        for hf_name, (canon, transpose) in weight_map(config).items():
            value = torch.as_tensor(np.asarray(_numpy(flat[canon]), dtype=np.float32))
            if transpose:
                value = value.T  # [in, out] kernel -> [out, in] nn.Linear.weight
            assert state[hf_name].shape == value.shape, (
                f"{hf_name}: Marian shape {tuple(state[hf_name].shape)}, "
                f"{canon} gives {tuple(value.shape)}")
            state[hf_name].copy_(value)
        bias = state[_BIAS]
        if config.output_bias:
            value = torch.as_tensor(np.asarray(_numpy(flat["output/bias"]), dtype=np.float32))
            assert bias.shape == (1, *value.shape), f"{_BIAS}: shape {tuple(bias.shape)}"
            bias.copy_(value[None, :])  # [v] -> [1, v]
        else:
            bias.zero_()
    return model.eval()


def marian_to_spec_config(model: MarianMTModel, output_bias: bool | None = None
                          ) -> TransformerConfig:
    """The canonical config of what `model` computes; ValueError naming a field it cannot hold."""
    if not isinstance(model, MarianMTModel):
        raise ValueError(f"model must be a transformers MarianMTModel, got {type(model).__name__}")
    mc = model.config

    def refuse(field: str, value: object, why: str) -> ValueError:
        return ValueError(f"MarianConfig field {field}={value!r} cannot be expressed in the "
                          f"canonical config: {why}")

    if mc.encoder_attention_heads != mc.decoder_attention_heads:
        raise refuse("decoder_attention_heads", mc.decoder_attention_heads,
                     f"num_heads is shared, and encoder_attention_heads={mc.encoder_attention_heads}")
    if mc.encoder_ffn_dim != mc.decoder_ffn_dim:
        raise refuse("decoder_ffn_dim", mc.decoder_ffn_dim,
                     f"d_ff is shared, and encoder_ffn_dim={mc.encoder_ffn_dim}")
    if mc.activation_function not in FROM_MARIAN_ACTIVATION:
        raise refuse("activation_function", mc.activation_function,
                     f"expected one of {sorted(FROM_MARIAN_ACTIVATION)}")
    for field in ("activation_dropout", "encoder_layerdrop", "decoder_layerdrop"):
        if getattr(mc, field, 0.0):
            raise refuse(field, getattr(mc, field), "the canonical model has no such dropout")
    eos = mc.eos_token_id
    if isinstance(eos, (list, tuple)):
        if len(eos) != 1:
            raise refuse("eos_token_id", eos, "expected a single id")
        eos = eos[0]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    eps = {m.eps for m in norms}
    if len(eps) != 1:
        raise ValueError(f"MarianMTModel LayerNorms use several eps values {sorted(eps)}; the "
                         f"canonical config has one layer_norm_eps")

    state = model.state_dict()
    enc_table = state["model.encoder.embed_tokens.weight"]
    dec_table = state["model.decoder.embed_tokens.weight"]
    head = state["lm_head.weight"]
    share = bool(mc.share_encoder_decoder_embeddings) and torch.equal(enc_table, dec_table)
    tie = bool(mc.tie_word_embeddings) and torch.equal(head, dec_table)
    bias_nonzero = bool(state[_BIAS].any())
    if output_bias is None:
        output_bias = bias_nonzero
    elif not output_bias and bias_nonzero:
        raise ValueError("output_bias=False but the model's final_logits_bias is non-zero; "
                         "converting would drop it (pass output_bias=None or True)")
    return TransformerConfig(
        src_vocab_size=int(enc_table.shape[0]),
        tgt_vocab_size=int(head.shape[0]),
        d_model=mc.d_model,
        num_heads=mc.encoder_attention_heads,
        num_encoder_layers=mc.encoder_layers,
        num_decoder_layers=mc.decoder_layers,
        d_ff=mc.encoder_ffn_dim,
        dropout_rate=float(mc.dropout),
        attention_dropout_rate=float(mc.attention_dropout),
        max_len=mc.max_position_embeddings,
        layer_norm_eps=float(eps.pop()),
        norm_position="post",
        activation=FROM_MARIAN_ACTIVATION[mc.activation_function],
        share_embeddings=share,
        tie_output=tie,
        scale_embeddings=bool(mc.scale_embedding),
        positional_layout="split",
        output_bias=bool(output_bias),
        pad_id=mc.pad_token_id,
        bos_id=mc.decoder_start_token_id,
        eos_id=eos,
    )


def from_marian(model: MarianMTModel, output_bias: bool | None = None
                ) -> tuple[dict[str, np.ndarray], TransformerConfig]:
    """`(flat, config)`: the canonical float32 weights and config of a `MarianMTModel`.

    `output_bias=None` keeps `final_logits_bias` as `output/bias` only when it is non-zero.
    """
    config = marian_to_spec_config(model, output_bias)
    state = model.state_dict()
    # shared Marian tables are all present in the state dict; only the ones the forward pass
    # reads may differ from `model.shared` when untied, so those are the ones compared below
    ignored = {"model.shared.weight"} if "model.shared.weight" in state else set()
    expected = _expected_keys(config) | ignored
    assert set(state) == expected, (
        f"MarianMTModel layout changed: missing {sorted(expected - set(state))}, "
        f"unexpected {sorted(set(state) - expected)}")
    _check_positions(state, config)
    flat: dict[str, np.ndarray] = {}
    for hf_name, (canon, transpose) in weight_map(config).items():
        if hf_name in ignored:
            continue
        value = state[hf_name].detach().float().cpu().numpy()
        if transpose:
            value = value.T  # [out, in] nn.Linear.weight -> [in, out] kernel
        value = np.ascontiguousarray(value, dtype=np.float32)
        if canon in flat:  # a tied table: every Marian name must hold the same values
            assert np.array_equal(flat[canon], value), f"{hf_name} differs from the tied {canon}"
        flat[canon] = value
    if config.output_bias:
        bias = state[_BIAS].detach().float().cpu().numpy()
        assert bias.shape == (1, config.tgt_vocab_size), f"{_BIAS}: shape {bias.shape}"
        flat["output/bias"] = np.ascontiguousarray(bias[0], dtype=np.float32)  # [1, v] -> [v]
    check_params(flat, config)
    return flat, config


class MarianCheckpoint(NamedTuple):
    """A real Marian checkpoint in canonical form, with its tokenizer when it has one."""

    flat: dict[str, np.ndarray]
    config: TransformerConfig
    tokenizer: Any | None
    model: MarianMTModel


_TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json")


def from_pretrained_marian(name_or_path: str | Path, with_tokenizer: bool | None = None,
                           output_bias: bool | None = None, **kwargs: Any) -> MarianCheckpoint:
    """Load a Marian checkpoint (hub name such as "Helsinki-NLP/opus-mt-en-de", or a folder).

    The model is loaded in float32 with eager attention; `kwargs` go to `from_pretrained`.
    `with_tokenizer`: None loads the tokenizer when the checkpoint has one and `sentencepiece`
    (which `MarianTokenizer` needs) is installed, with a warning otherwise; True requires it;
    False skips it.  Downloads happen only where the hub is reachable and not HF_HUB_OFFLINE.
    """
    kwargs.setdefault("attn_implementation", "eager")
    kwargs.setdefault("dtype", torch.float32)
    model = MarianMTModel.from_pretrained(str(name_or_path), **kwargs).eval()
    flat, config = from_marian(model, output_bias=output_bias)
    tokenizer = None
    if with_tokenizer is not False:
        tokenizer = _load_tokenizer(name_or_path, required=bool(with_tokenizer))
    return MarianCheckpoint(flat, config, tokenizer, model)


def _load_tokenizer(name_or_path: str | Path, required: bool) -> Any | None:
    folder = Path(name_or_path)
    if folder.is_dir() and not any((folder / f).exists() for f in _TOKENIZER_FILES):
        if required:
            raise ValueError(f"with_tokenizer=True but {folder} holds no tokenizer files "
                             f"(expected {', '.join(_TOKENIZER_FILES)})")
        return None
    try:
        import sentencepiece  # noqa: F401  (MarianTokenizer needs it)
    except ImportError:
        message = ("MarianTokenizer needs the `sentencepiece` package, which is not installed; "
                   "`pip install sentencepiece` to load the tokenizer")
        if required:
            raise ImportError(message) from None
        warnings.warn(message + " (returning tokenizer=None)", stacklevel=3)
        return None
    from transformers import MarianTokenizer

    return MarianTokenizer.from_pretrained(str(name_or_path))


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)

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

The name table and the config mapping are `spec.families` ("marian"), shared with the other
families through `hf_bridge.convert`; these functions are thin wrappers kept for their callers.
Every converter checks every key and every shape, like nanoGPT's `from_pretrained`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import MarianConfig, MarianMTModel

from spec import TransformerConfig
from spec.families import LAYER_NORM_EPS, family_compatible
from spec.families import weight_map as family_weight_map

from . import convert

MARIAN_LAYER_NORM_EPS = LAYER_NORM_EPS  # nn.LayerNorm's default; MarianConfig cannot change it


def marian_compatible(config: TransformerConfig) -> TransformerConfig:
    """Return `config` if MarianMT can express it; else raise ValueError naming the field."""
    return family_compatible(config, "marian")


def marian_config(config: TransformerConfig, attn_implementation: str = "eager") -> MarianConfig:
    """The `MarianConfig` of a Marian-compatible canonical config."""
    return convert.hf_config(config, "marian", attn_implementation)


def weight_map(config: TransformerConfig) -> dict[str, tuple[str, bool]]:
    """Marian state-dict name -> (canonical name, transposed?) for every weight but positions
    (`spec.families.weight_map`, plus `model.shared.weight` when the tables are shared).

    Tables shared by several Marian names (tied embeddings) appear once per name.  The output
    bias is not here: `final_logits_bias` is a `[1, v]` buffer handled by the converters.
    """
    out = family_weight_map(marian_compatible(config), "marian")
    if config.share_embeddings:
        out = {"model.shared.weight": ("shared_embedding/embedding", False), **out}
    return out


def to_marian(flat: dict[str, Any], config: TransformerConfig,
              attn_implementation: str = "eager") -> MarianMTModel:
    """A `MarianMTModel` (eval mode, float32) holding the canonical weights `flat`."""
    return convert.to_hf(flat, config, "marian", attn_implementation)


def _check_model(model: Any) -> None:
    if not isinstance(model, MarianMTModel):
        raise ValueError(f"model must be a transformers MarianMTModel, got {type(model).__name__}")


def marian_to_spec_config(model: MarianMTModel, output_bias: bool | None = None
                          ) -> TransformerConfig:
    """The canonical config of what `model` computes; ValueError naming a field it cannot hold."""
    return from_marian(model, output_bias)[1]


def from_marian(model: MarianMTModel, output_bias: bool | None = None
                ) -> tuple[dict[str, np.ndarray], TransformerConfig]:
    """`(flat, config)`: the canonical float32 weights and config of a `MarianMTModel`.

    `output_bias=None` keeps `final_logits_bias` as `output/bias` only when it is non-zero.
    """
    _check_model(model)
    return convert.from_hf(model, output_bias=output_bias)


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

"""`from_pretrained(path)`: a saved Hugging Face folder of any supported family, in Flax.

Reads config.json and the safetensors weights with numpy and maps the names with the
framework-free tables of `spec.families`; torch and transformers are never imported.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from spec import TransformerConfig
from spec.families import load_hf_folder

from .api import Params, from_canonical


class Pretrained(NamedTuple):
    """Flax params, their canonical config, and the folder's tokenizer (or None)."""

    params: Params
    config: TransformerConfig
    tokenizer: Any | None


def from_pretrained(path: str | os.PathLike, output_bias: bool | None = None) -> Pretrained:
    """Open a folder written by `save_pretrained` of a Marian, FSMT, BART, mBART, M2M100 or
    Pegasus model: `(params, config, tokenizer)` (`tokenizer.json` as a `tokenizers.Tokenizer`).

    ValueError naming the field for an unsupported `model_type` or a config the canonical model
    cannot compute; FileNotFoundError for a missing folder.
    """
    flat, config, tokenizer = load_hf_folder(path, output_bias)
    return Pretrained(from_canonical(flat, config), config, tokenizer)

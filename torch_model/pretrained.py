"""`from_pretrained(path)`: a saved Hugging Face folder of any supported family, in torch.

Reads config.json and the safetensors weights with numpy and maps the names with the
framework-free tables of `spec.families` (transformers is not needed).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from spec import TransformerConfig
from spec.families import load_hf_folder

from .model import Transformer


class Pretrained(NamedTuple):
    """The torch mirror (eval mode) holding the weights, its config, and the tokenizer (or None)."""

    model: Transformer
    config: TransformerConfig
    tokenizer: Any | None


def from_pretrained(path: str | os.PathLike, output_bias: bool | None = None) -> Pretrained:
    """Open a folder written by `save_pretrained` of a Marian, FSMT, BART, mBART, M2M100 or
    Pegasus model: `(model, config, tokenizer)` (`tokenizer.json` as a `tokenizers.Tokenizer`).

    ValueError naming the field for an unsupported `model_type` or a config the canonical model
    cannot compute; FileNotFoundError for a missing folder.
    """
    flat, config, tokenizer = load_hf_folder(path, output_bias)
    return Pretrained(Transformer(config).load_canonical(flat).eval(), config, tokenizer)

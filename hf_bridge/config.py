"""`TransformerLabConfig`: the `spec.TransformerConfig` as a transformers `PretrainedConfig`.

The spec config stays the single source of truth: this class stores its fields under the same
names, validates them by building a `spec.TransformerConfig`, and adds only what transformers
itself reads (`vocab_size`, `num_hidden_layers`, the special token ids, `is_encoder_decoder`) plus
`label_smoothing` for the model's own loss.  `from_spec(cfg)` / `to_spec()` convert without loss.

The special token ids are kept twice on purpose: `pad_id`, `bos_id`, `eos_id` (the contract's
names) and `pad_token_id`, `bos_token_id`, `eos_token_id`, `decoder_start_token_id` (what
`generate()` and `GenerationConfig.from_model_config` read).  Given together to the constructor
they must agree (ValueError otherwise, instead of decoding with the wrong start token); set later
as attributes, either name sets both (`config.pad_token_id = 3` is `pad_id = 3`).  HF's
`tie_word_embeddings` is `tie_output` the same way (given alone, it sets it), and `vocab_size`
is `tgt_vocab_size` (and also `src_vocab_size` when the embeddings are shared), so transformers'
own `config.vocab_size = n` keeps the config valid.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from spec import TransformerConfig

SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(TransformerConfig))

# transformers' name -> the spec field it mirrors (checked for agreement, never stored apart)
TOKEN_ALIASES = {
    "pad_token_id": "pad_id",
    "bos_token_id": "bos_id",
    "eos_token_id": "eos_id",
    "decoder_start_token_id": "bos_id",
}
# an attribute set after construction -> every attribute that holds the same value
SYNCED = {
    "pad_id": ("pad_token_id",), "pad_token_id": ("pad_id",),
    "eos_id": ("eos_token_id",), "eos_token_id": ("eos_id",),
    "bos_id": ("bos_token_id", "decoder_start_token_id"),
    "bos_token_id": ("bos_id", "decoder_start_token_id"),
    "decoder_start_token_id": ("bos_id", "bos_token_id"),
    "tie_output": ("tie_word_embeddings",), "tie_word_embeddings": ("tie_output",),
}


class TransformerLabConfig(PretrainedConfig):
    """The Transformer's hyperparameters for transformers (`model_type="transformer_lab"`).

    `label_smoothing` is the epsilon of the model's loss when `labels` are given: the target
    distribution is (1 - eps) * onehot + eps / V and pad labels are ignored, as in
    `spec.label_smoothed_cross_entropy`.  The default 0.1 is the paper's.
    """

    model_type = "transformer_lab"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_decoder_layers",
        "vocab_size": "tgt_vocab_size",
    }

    def __init__(self, label_smoothing: float = 0.1, use_cache: bool = True,
                 **kwargs: Any) -> None:
        spec_kwargs = {name: kwargs.pop(name) for name in SPEC_FIELDS if name in kwargs}
        tie = kwargs.pop("tie_word_embeddings", None)
        if tie is not None:
            spec_kwargs.setdefault("tie_output", tie)  # HF's flag alone sets tie_output
            if tie != spec_kwargs["tie_output"]:
                raise ValueError(
                    f"TransformerLabConfig got tie_word_embeddings={tie!r} but tie_output="
                    f"{spec_kwargs['tie_output']!r}; they must agree (one mirrors the other)")
        for alias in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
            if alias in kwargs:
                raise ValueError(
                    f"TransformerLabConfig got {alias}={kwargs[alias]!r}: set the spec field "
                    f"{self.attribute_map[alias]!r} instead (it is the one source of the value)")
        spec_cfg = TransformerConfig(**spec_kwargs)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"config field label_smoothing={label_smoothing!r} is invalid: "
                             f"expected a number in [0, 1)")
        for alias, field in TOKEN_ALIASES.items():
            given = kwargs.pop(alias, None)
            if given is not None and given != getattr(spec_cfg, field):
                raise ValueError(
                    f"TransformerLabConfig got {alias}={given!r} but {field}="
                    f"{getattr(spec_cfg, field)!r}; they must agree ({alias} mirrors {field})")
        if kwargs.pop("is_encoder_decoder", True) is not True:
            raise ValueError("TransformerLabConfig is an encoder-decoder: is_encoder_decoder must "
                             "be True")
        for name in SPEC_FIELDS:
            setattr(self, name, getattr(spec_cfg, name))
        self.label_smoothing = float(label_smoothing)
        super().__init__(
            is_encoder_decoder=True,
            pad_token_id=spec_cfg.pad_id,
            bos_token_id=spec_cfg.bos_id,
            eos_token_id=spec_cfg.eos_id,
            decoder_start_token_id=spec_cfg.bos_id,
            **kwargs,
        )
        self.tie_word_embeddings = spec_cfg.tie_output
        # after super().__init__, which drops generation settings such as use_cache from kwargs
        self.use_cache = bool(use_cache)  # forward() returns a KV cache unless told otherwise

    def __setattr__(self, key: str, value: Any) -> None:
        key = self.attribute_map.get(key, key)
        super().__setattr__(key, value)
        synced = SYNCED.get(key, ())
        if key == "tgt_vocab_size" and getattr(self, "share_embeddings", False):
            synced = ("src_vocab_size",)  # one shared table: one vocabulary
        for other in synced:
            if self.__dict__.get(other, value) != value:
                super().__setattr__(other, value)

    @classmethod
    def from_spec(cls, config: TransformerConfig, **kwargs: Any) -> TransformerLabConfig:
        """The HF config of a spec config; `kwargs` are extra HF settings (e.g. label_smoothing)."""
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"config must be a spec.TransformerConfig, got {type(config).__name__}")
        return cls(**config.to_dict(), **kwargs)

    def to_spec(self) -> TransformerConfig:
        """The spec config (validated again, so a field edited after construction is checked)."""
        spec_cfg = TransformerConfig(**{name: getattr(self, name) for name in SPEC_FIELDS})
        for alias, field in TOKEN_ALIASES.items():
            if getattr(self, alias, None) != getattr(spec_cfg, field):
                raise ValueError(
                    f"config {alias}={getattr(self, alias, None)!r} disagrees with {field}="
                    f"{getattr(spec_cfg, field)!r}; set both or rebuild with from_spec")
        return spec_cfg


AutoConfig.register(TransformerLabConfig.model_type, TransformerLabConfig, exist_ok=True)

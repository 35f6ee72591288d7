"""The one configuration every implementation reads: `TransformerConfig`.

A frozen dataclass, like the Flax WMT example's `TransformerConfig`: modules take only the
config, and variants are made with `config.replace(...)`. Defaults are the paper's base model.
Construction validates every field and raises ValueError naming the field, the value and what
was expected, so a bad config never reaches a framework.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from typing import Any, Literal

ACTIVATIONS = ("relu", "gelu", "swish")
NORM_POSITIONS = ("post", "pre")
POSITIONAL_LAYOUTS = ("interleaved", "split")
POSITIONAL_ENCODINGS = ("sinusoidal", "learned")
SINUSOID_FORMULAS = ("paper", "fairseq")

# name -> overrides of the defaults.  vocabularies default to 8000 outside `tiny`.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=64,
                 src_vocab_size=64, tgt_vocab_size=64, max_len=128),
    "small": dict(d_model=256, num_heads=8, num_encoder_layers=3, num_decoder_layers=3,
                  d_ff=1024),
    "base": dict(d_model=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6,
                 d_ff=2048),
    "big": dict(d_model=1024, num_heads=16, num_encoder_layers=6, num_decoder_layers=6,
                d_ff=4096, dropout_rate=0.3),
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of the encoder-decoder Transformer ("Attention Is All You Need").

    `positional_layout`: "interleaved" (the paper: sin on even features, cos on odd ones) or
    "split" (MarianMT: the ceil(d/2) sines first, then the floor(d/2) cosines).
    `scale_embeddings` multiplies token embeddings by sqrt(d_model) before positions are added.
    `share_embeddings` uses one table for source and target tokens (needs equal vocabularies);
    `tie_output` computes logits with the (decoder) embedding table instead of `output/kernel`.

    Pretrained families (docs/interfaces.md "Families"); the defaults give the paper's model:
    `positional_encoding`: "sinusoidal" (a fixed table) or "learned" (param
    `{side}/embed/positions`).  `sinusoid_formula`: "paper" (angle p / 10000^(2i/d)) or
    "fairseq" (p / 10000^(i/(d//2 - 1)), FSMT and M2M100; needs the "split" layout).
    `position_offset`: the table row of the first token, so tables have max_len + offset rows
    (BART's learned table: 2; fairseq: pad_id + 1).  `zero_pad_positions`: pad tokens get no
    position vector (fairseq's zeroed padding row).  `embedding_norm`: a LayerNorm
    (`{side}/embed_norm`) on tokens + positions, before the embedding dropout (BART, mBART).
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    d_ff: int = 2048
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    max_len: int = 512
    layer_norm_eps: float = 1e-5
    norm_position: Literal["post", "pre"] = "post"
    activation: Literal["relu", "gelu", "swish"] = "relu"
    share_embeddings: bool = True
    tie_output: bool = True
    scale_embeddings: bool = True
    positional_layout: Literal["interleaved", "split"] = "interleaved"
    output_bias: bool = False
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    positional_encoding: Literal["sinusoidal", "learned"] = "sinusoidal"
    sinusoid_formula: Literal["paper", "fairseq"] = "paper"
    position_offset: int = 0
    zero_pad_positions: bool = False
    embedding_norm: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    # -- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """d_k = d_v = d_model / num_heads."""
        return self.d_model // self.num_heads

    # -- variants and presets ------------------------------------------------------------
    def replace(self, **changes: Any) -> TransformerConfig:
        """A copy with some fields changed (validated again)."""
        _check_known(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TransformerConfig:
        """`tiny` (tests), `small`, `base` (paper), `big` (paper), with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        _check_known(overrides)
        return cls(**{**PRESETS[name], **overrides})

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], complete: bool = False) -> TransformerConfig:
        """The config of `data`'s fields; the others keep their defaults unless `complete`.

        `complete=True` (a checkpoint's config.json, `parity.check --config`) requires every
        field: a missing one would otherwise silently become the base model's default.
        """
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        _check_known(data)
        missing = [name for name in _FIELDS if name not in data]
        if complete and missing:
            raise ValueError(f"config is missing field(s) {missing}: a complete config names "
                             f"every field (write one with TransformerConfig.to_json)")
        return cls(**data)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The config as JSON text; also written to `path` when one is given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike, complete: bool = False
                  ) -> TransformerConfig:
        """Read a config from JSON text or from a file holding it (`complete`: see from_dict)."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            if not os.path.exists(text):
                raise FileNotFoundError(f"config file not found: {text}")
            if os.path.isdir(text):
                raise ValueError(f"config file {text} is a folder: expected a JSON file")
            try:
                with open(text, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"config file {text_or_path} is unreadable: {e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(data, complete=complete)


_FIELDS = {f.name: f for f in dataclasses.fields(TransformerConfig)}


def _check_known(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known fields: {sorted(_FIELDS)}")


def _validate(c: TransformerConfig) -> None:
    def fail(field: str, expected: str) -> None:
        raise ValueError(f"config field {field}={getattr(c, field)!r} is invalid: expected {expected}")

    for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "num_heads",
                 "num_encoder_layers", "num_decoder_layers", "d_ff", "max_len"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int):
            fail(name, "an integer")
        if v <= 0:
            fail(name, "a positive integer")
    for name in ("pad_id", "bos_id", "eos_id"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int):
            fail(name, "an integer")
        vocab = min(c.src_vocab_size, c.tgt_vocab_size)
        if not 0 <= v < vocab:
            fail(name, f"an id inside both vocabularies, 0 <= id < {vocab}")
    for name in ("share_embeddings", "tie_output", "scale_embeddings", "output_bias"):
        if not isinstance(getattr(c, name), bool):
            fail(name, "true or false")
    for name in ("dropout_rate", "attention_dropout_rate", "layer_norm_eps"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(name, "a number")
        if not math.isfinite(v):
            fail(name, "a finite number")
    for name in ("dropout_rate", "attention_dropout_rate"):
        if not 0.0 <= getattr(c, name) < 1.0:
            fail(name, "a probability in [0, 1)")
    if not c.layer_norm_eps > 0:
        fail("layer_norm_eps", "a positive number")
    if c.eos_id == c.pad_id:
        raise ValueError(f"config fields eos_id={c.eos_id} and pad_id={c.pad_id} collide: the "
                         f"source's eos would be masked as padding (bos_id == pad_id is legal)")
    if c.d_model % c.num_heads:
        raise ValueError(f"config field d_model={c.d_model} is not divisible by "
                         f"num_heads={c.num_heads}: each head needs d_model / num_heads features")
    if c.activation not in ACTIVATIONS:
        fail("activation", f"one of {ACTIVATIONS}")
    if c.norm_position not in NORM_POSITIONS:
        fail("norm_position", f"one of {NORM_POSITIONS}")
    if c.positional_layout not in POSITIONAL_LAYOUTS:
        fail("positional_layout", f"one of {POSITIONAL_LAYOUTS}")
    _validate_positions(c, fail)
    if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
        raise ValueError(
            f"config field share_embeddings=True needs src_vocab_size == tgt_vocab_size, got "
            f"src_vocab_size={c.src_vocab_size} and tgt_vocab_size={c.tgt_vocab_size}")


def _validate_positions(c: TransformerConfig, fail: Callable[[str, str], None]) -> None:
    """The family fields (positions and the embedding norm); each defaults to the paper."""
    if c.positional_encoding not in POSITIONAL_ENCODINGS:
        fail("positional_encoding", f"one of {POSITIONAL_ENCODINGS}")
    if c.sinusoid_formula not in SINUSOID_FORMULAS:
        fail("sinusoid_formula", f"one of {SINUSOID_FORMULAS}")
    if c.sinusoid_formula == "fairseq":
        if c.positional_layout != "split":
            fail("positional_layout", "'split' with sinusoid_formula='fairseq' (sines, then "
                 "cosines, then a zero feature when d_model is odd)")
        if c.d_model < 4:
            fail("d_model", "at least 4 with sinusoid_formula='fairseq' (it divides by "
                 "d_model // 2 - 1)")
    v = c.position_offset
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        fail("position_offset", "a non-negative integer")
    for name in ("zero_pad_positions", "embedding_norm"):
        if not isinstance(getattr(c, name), bool):
            fail(name, "true or false")

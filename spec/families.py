"""Pretrained encoder-decoder families of Hugging Face transformers, framework-free (numpy only).

One table per family: what it fixes in the canonical config, and its state-dict names <->
canonical names (with the transposes).  `hf_bridge.convert` (HF model instances), and
`jax_model.from_pretrained` / `torch_model.from_pretrained` (a saved HF folder read with numpy)
both use it, so the three agree by construction.  Verified against the installed
`transformers/models/{marian,fsmt,bart,mbart,m2m_100,pegasus}/modeling_*.py`:

family   norm  positions                               embed_norm  logits bias  vocabularies
marian   post  sinusoid paper, split, offset 0 (saved)   no          yes          src, tgt
fsmt     post  sinusoid fairseq, offset pad+1, pad 0     no          no           src, tgt
bart     post  learned, offset 2                        yes         yes          one
mbart    pre   learned, offset 2                        yes         yes          one
m2m_100  pre   sinusoid fairseq, offset pad+1, pad 0     no          no           one
pegasus  pre   sinusoid paper, split, offset 0 (saved)   no          yes          one

"pre" families have a final LayerNorm on both stacks (`{side}/final_norm`, HF `layer_norm`).
"pad 0": pad tokens get no position vector (fairseq's `make_positions` sends them to the zeroed
padding row).  Saved sinusoid tables are checked, never converted (they are not canonical
parameters).  All LayerNorms are `nn.LayerNorm(d)`: eps 1e-5.  HF scales q before QK^T; that is
the same math as the canonical `scores = QK^T / sqrt(k)`.  The canonical decoder start token
`bos_id` is HF's `decoder_start_token_id` (eos when a config leaves it unset, as mBART does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from .config import TransformerConfig
from .names import SIDES, num_layers, param_shapes, sublayers
from .positions import position_table

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default; no family config can change it
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_python": "gelu", "swish": "swish",
               "silu": "swish"}  # HF ACT2FN name -> spec activation (exact erf GELU only)
TO_HF_ACTIVATION = {"relu": "relu", "gelu": "gelu", "swish": "swish"}
_ATTN = {"self_attn": "self_attn", "cross_attn": "encoder_attn"}
_NORM = {"self_attn": "self_attn_layer_norm", "cross_attn": "encoder_attn_layer_norm",
         "ffn": "final_layer_norm"}
_PROJ = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
BIAS_KEY = "final_logits_bias"


@dataclasses.dataclass(frozen=True)
class Family:
    """What one HF family fixes in the canonical config, and where its weights live."""

    name: str
    model_class: str             # transformers class of the seq2seq LM
    config_class: str
    norm_position: str
    positional_encoding: str
    sinusoid_formula: str
    positional_layout: str
    fairseq_offset: bool         # position_offset = pad_id + 1 and zero_pad_positions
    embedding_norm: bool
    saved_positions: bool        # a sinusoid table is in the state dict (checked, not canonical)
    logits_bias: bool            # `final_logits_bias` [1, v] buffer
    head: str                    # state-dict name of the output projection
    shared: bool                 # `model.shared.weight` exists

    def fixed(self, pad_id: int) -> dict[str, Any]:
        """The canonical config fields this family fixes."""
        offset = (pad_id + 1 if self.fairseq_offset
                  else 2 if self.positional_encoding == "learned" else 0)
        return dict(norm_position=self.norm_position, positional_encoding=self.positional_encoding,
                    sinusoid_formula=self.sinusoid_formula,
                    positional_layout=self.positional_layout, position_offset=offset,
                    zero_pad_positions=self.fairseq_offset, embedding_norm=self.embedding_norm,
                    layer_norm_eps=LAYER_NORM_EPS)


def _family(name, model_class, config_class, norm, encoding, formula, fairseq, embed_norm,
            saved, bias, head="lm_head.weight", shared=True) -> Family:
    return Family(name, model_class, config_class, norm, encoding, formula, "split", fairseq,
                  embed_norm, saved, bias, head, shared)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    _family("marian", "MarianMTModel", "MarianConfig", "post", "sinusoidal", "paper", False,
            False, True, True),
    _family("fsmt", "FSMTForConditionalGeneration", "FSMTConfig", "post", "sinusoidal",
            "fairseq", True, False, True, False, head="model.decoder.output_projection.weight",
            shared=False),
    _family("bart", "BartForConditionalGeneration", "BartConfig", "post", "learned", "paper",
            False, True, False, True),
    _family("mbart", "MBartForConditionalGeneration", "MBartConfig", "pre", "learned", "paper",
            False, True, False, True),
    _family("m2m_100", "M2M100ForConditionalGeneration", "M2M100Config", "pre", "sinusoidal",
            "fairseq", True, False, False, False),
    _family("pegasus", "PegasusForConditionalGeneration", "PegasusConfig", "pre", "sinusoidal",
            "paper", False, False, True, True),
)}
# BART's learned table ignores `positional_layout`; "split" is stored only to keep one value.


def get_family(family: str) -> Family:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not supported: expected one of {sorted(FAMILIES)}")
    return FAMILIES[family]


def family_of(hf_config: Mapping[str, Any]) -> Family:
    """The family of an HF config dict (config.json), by its `model_type`."""
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"config.json field model_type={model_type!r} is not supported: "
                         f"expected one of {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def family_compatible(config: TransformerConfig, family: str) -> TransformerConfig:
    """Return `config` if `family` can express it; else ValueError naming the field."""
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"config must be a spec.TransformerConfig, got {type(config).__name__}")
    fam = get_family(family)
    for field, want in fam.fixed(config.pad_id).items():
        if field == "positional_layout" and fam.positional_encoding == "learned":
            continue  # no sinusoid table
        if getattr(config, field) != want:
            raise ValueError(f"config field {field}={getattr(config, field)!r} cannot be "
                             f"expressed in {fam.model_class}: expected {want!r}")
    if config.output_bias and not fam.logits_bias:
        raise ValueError(f"config field output_bias=True cannot be expressed in "
                         f"{fam.model_class}: it has no output bias")
    if fam.name not in ("marian", "fsmt") and config.src_vocab_size != config.tgt_vocab_size:
        raise ValueError(f"config field tgt_vocab_size={config.tgt_vocab_size} cannot be "
                         f"expressed in {fam.model_class}: it has one vocabulary "
                         f"(src_vocab_size={config.src_vocab_size})")
    if fam.name != "marian" and config.tie_output and not config.share_embeddings:
        raise ValueError(f"config field share_embeddings=False cannot be expressed with "
                         f"tie_output=True in {fam.model_class}: tie_word_embeddings ties the "
                         f"source table too")
    return config


# -- weights ------------------------------------------------------------------------------
def weight_map(config: TransformerConfig, family: str) -> dict[str, tuple[str, bool]]:
    """HF state-dict name -> (canonical name, transposed?) for every canonical weight.

    A canonical table read by several HF names (shared or tied) appears once per name.  Not
    here: `model.shared.weight`, which the forward pass never reads (it is the source table's
    alias or copy, written by `to_state`, ignored when read), and `final_logits_bias`, a
    `[1, v]` buffer (see `to_state`).
    """
    fam = get_family(family)
    emb = {"encoder": "encoder/embedding/embedding", "decoder": "decoder/embedding/embedding"}
    if config.share_embeddings:
        emb = {"encoder": "shared_embedding/embedding", "decoder": "shared_embedding/embedding"}
    out: dict[str, tuple[str, bool]] = {}
    for side in SIDES:
        # nn.Embedding.weight is [v, d] like the canonical table: no transpose
        out[f"model.{side}.embed_tokens.weight"] = (emb[side], False)
        if config.positional_encoding == "learned":
            # BartLearnedPositionalEmbedding: [max_len + 2, d], row j + 2 is token j's
            out[f"model.{side}.embed_positions.weight"] = (f"{side}/embed/positions", False)
        if config.embedding_norm:
            out[f"model.{side}.layernorm_embedding.weight"] = (f"{side}/embed_norm/scale", False)
            out[f"model.{side}.layernorm_embedding.bias"] = (f"{side}/embed_norm/bias", False)
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
                        # columns h*k:(h+1)*k of the kernel (HF's view(b, l, h, k))
                        out[f"{dst}.{_ATTN[sub]}.{hf}.weight"] = (f"{src}/{canon}/kernel", True)
                        out[f"{dst}.{_ATTN[sub]}.{hf}.bias"] = (f"{src}/{canon}/bias", False)
                out[f"{dst}.{_NORM[sub]}.weight"] = (f"{src}_norm/scale", False)
                out[f"{dst}.{_NORM[sub]}.bias"] = (f"{src}_norm/bias", False)
        if config.norm_position == "pre":
            out[f"model.{side}.layer_norm.weight"] = (f"{side}/final_norm/scale", False)
            out[f"model.{side}.layer_norm.bias"] = (f"{side}/final_norm/bias", False)
    # the head is [v, d] (nn.Linear [out, in]): the decoder's table itself when tied, else
    # output/kernel [d, v] transposed
    out[fam.head] = (emb["decoder"], False) if config.tie_output else ("output/kernel", True)
    return out


def positions_keys(config: TransformerConfig, family: str) -> list[str]:
    """State-dict names of saved sinusoid tables (checked against spec, never converted)."""
    fam = get_family(family)
    return [f"model.{side}.embed_positions.weight" for side in SIDES] if fam.saved_positions else []


def check_positions(state: Mapping[str, np.ndarray], config: TransformerConfig, family: str
                    ) -> None:
    """A saved sinusoid table must be the spec's (HF may compute fairseq's in float32)."""
    names = positions_keys(config, family)
    if not names:
        return
    table = position_table(config)
    if config.zero_pad_positions:
        table = table.copy()
        table[config.pad_id] = 0.0  # fairseq zeroes the padding row, which pads read
    tol = 0.0 if config.sinusoid_formula == "paper" else 1e-7 * table.shape[0] + 1e-6
    for name in names:
        if name not in state:
            continue
        got = np.asarray(state[name], dtype=np.float32)
        if got.shape != table.shape:
            raise ValueError(f"{name}: shape {got.shape}, expected {table.shape} "
                             f"(max_len + position_offset rows)")
        diff = float(np.abs(got - table).max())
        if diff > tol:
            raise ValueError(f"{name} is not the {config.sinusoid_formula!r} sinusoid table of "
                             f"spec.position_table (max abs diff {diff:.3g}); positions are not "
                             f"learned in this family")


def to_state(flat: Mapping[str, np.ndarray], config: TransformerConfig, family: str,
             keys: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The HF state dict (numpy) of canonical weights, for an HF model with state `keys`
    (name -> shape).  Saved sinusoid tables are left out (the HF model computes them)."""
    family_compatible(config, family)
    wmap = weight_map(config, family)
    known = set(wmap) | set(positions_keys(config, family)) | {BIAS_KEY, "model.shared.weight"}
    unknown = sorted(set(keys) - known)
    missing = sorted(set(wmap) - set(keys))
    if unknown or missing:
        raise ValueError(f"{get_family(family).model_class} layout differs from the family "
                         f"table: unexpected {unknown}, missing {missing}")
    state: dict[str, np.ndarray] = {}
    for hf_name, (canon, transpose) in wmap.items():
        value = np.asarray(flat[canon], dtype=np.float32)
        state[hf_name] = np.ascontiguousarray(value.T if transpose else value)  # [in,out]->[out,in]
    if "model.shared.weight" in keys:  # get_input_embeddings' table: the source one
        state["model.shared.weight"] = state["model.encoder.embed_tokens.weight"]
    if BIAS_KEY in keys:
        bias = np.zeros(keys[BIAS_KEY], np.float32)
        if config.output_bias:
            bias[0] = np.asarray(flat["output/bias"], dtype=np.float32)  # [v] -> [1, v]
        state[BIAS_KEY] = bias
    for name, value in state.items():
        if tuple(value.shape) != tuple(keys[name]):
            raise ValueError(f"{name}: HF shape {tuple(keys[name])}, canonical gives "
                             f"{tuple(value.shape)}")
    return state


def tie_groups(hf_config: Mapping[str, Any], family: str) -> list[set[str]]:
    """State-dict names that are one tensor in HF (save_pretrained keeps only one of them)."""
    fam = get_family(family)
    enc, dec = "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"
    tie = bool(hf_config.get("tie_word_embeddings", True))
    if fam.name == "marian":
        groups = []
        if hf_config.get("share_encoder_decoder_embeddings", True):
            groups.append({"model.shared.weight", enc, dec} | ({fam.head} if tie else set()))
        elif tie:
            groups.append({dec, fam.head})
        return groups
    if not tie:
        return []
    return [{enc, dec, fam.head} | ({"model.shared.weight"} if fam.shared else set())]


def resolve_ties(state: Mapping[str, np.ndarray], hf_config: Mapping[str, Any], family: str
                 ) -> dict[str, np.ndarray]:
    """Fill the names save_pretrained dropped from a tied group with the one it kept."""
    state = dict(state)
    for group in tie_groups(hf_config, family):
        present = [name for name in sorted(group) if name in state]
        if present:
            for name in group - set(present):
                state[name] = state[present[0]]
    return state


# -- configs ------------------------------------------------------------------------------
def _single_id(field: str, value: Any) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"HF config field {field}={value!r} cannot be expressed in the "
                             f"canonical config: expected a single id")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"HF config field {field}={value!r} is invalid: expected an integer id")
    return value


def spec_config(hf_config: Mapping[str, Any], state: Mapping[str, np.ndarray],
                output_bias: bool | None = None, ignore_training_only: bool = False
                ) -> TransformerConfig:
    """The canonical config of what an HF model (config dict + numpy state) computes.

    ValueError naming the HF field for anything the canonical model cannot compute.  Dropout
    the canonical model lacks (`activation_dropout`, layer drop) only changes training: it is
    refused unless `ignore_training_only`, then dropped with a warning.
    """
    fam = family_of(hf_config)
    hc = dict(hf_config)

    def refuse(field: str, why: str) -> ValueError:
        return ValueError(f"HF config field {field}={hc.get(field)!r} cannot be expressed in the "
                          f"canonical config: {why}")

    for a, b in (("encoder_attention_heads", "decoder_attention_heads"),
                 ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hc.get(a) != hc.get(b):
            raise refuse(b, f"the canonical config has one value, and {a}={hc.get(a)!r}")
    if hc.get("activation_function") not in ACTIVATIONS:
        raise refuse("activation_function", f"expected one of {sorted(ACTIVATIONS)}")
    for field in ("activation_dropout", "encoder_layerdrop", "decoder_layerdrop"):
        if hc.get(field):
            if not ignore_training_only:
                raise refuse(field, "the canonical model has no such dropout (pass "
                             "ignore_training_only=True to drop it: it only changes training)")
            warnings.warn(f"HF config field {field}={hc[field]!r} dropped: the canonical model "
                          f"has no such dropout (inference is unchanged)", stacklevel=3)
    # fairseq-era flags some config.json files still carry (`normalize_before`,
    # `add_final_layer_norm`, `static_position_embeddings`, ...) are read by none of the
    # modeling files: each family's layout is fixed by its class, as the table above says.
    pad = _single_id("pad_token_id", hc.get("pad_token_id"))
    eos = _single_id("eos_token_id", hc.get("eos_token_id"))
    start = hc.get("decoder_start_token_id")
    bos = eos if start is None else _single_id("decoder_start_token_id", start)

    enc, dec = state["model.encoder.embed_tokens.weight"], state["model.decoder.embed_tokens.weight"]
    head = state[fam.head]
    share = enc.shape == dec.shape and bool(np.array_equal(enc, dec))
    if fam.name == "marian":
        share = share and bool(hc.get("share_encoder_decoder_embeddings", True))
    tie = bool(hc.get("tie_word_embeddings", True)) and head.shape == dec.shape \
        and bool(np.array_equal(head, dec))
    bias_nonzero = fam.logits_bias and BIAS_KEY in state and bool(np.any(state[BIAS_KEY]))
    if output_bias is None:
        output_bias = bias_nonzero
    elif not output_bias and bias_nonzero:
        raise ValueError("output_bias=False but the model's final_logits_bias is non-zero; "
                         "converting would drop it (pass output_bias=None or True)")
    if output_bias and not fam.logits_bias:
        raise ValueError(f"output_bias=True but {fam.model_class} has no output bias")
    fields = dict(
        src_vocab_size=int(enc.shape[0]), tgt_vocab_size=int(head.shape[0]),
        d_model=hc["d_model"], num_heads=hc["encoder_attention_heads"],
        num_encoder_layers=hc["encoder_layers"], num_decoder_layers=hc["decoder_layers"],
        d_ff=hc["encoder_ffn_dim"], dropout_rate=float(hc.get("dropout", 0.0)),
        attention_dropout_rate=float(hc.get("attention_dropout", 0.0)),
        max_len=hc["max_position_embeddings"],
        activation=ACTIVATIONS[hc["activation_function"]], share_embeddings=share,
        tie_output=tie, scale_embeddings=bool(hc.get("scale_embedding", False)),
        output_bias=bool(output_bias), pad_id=pad, bos_id=bos, eos_id=eos,
        **fam.fixed(pad))
    if fam.positional_encoding == "learned":
        fields["positional_layout"] = "split"
    try:
        return TransformerConfig(**fields)
    except ValueError as e:
        raise ValueError(f"{fam.model_class} config cannot be expressed canonically: {e}") from None


def hf_config_kwargs(config: TransformerConfig, family: str) -> dict[str, Any]:
    """Keyword arguments of the family's HF config class for `config` (eager attention, no
    forced tokens: the canonical decoding runs no logits processor)."""
    family_compatible(config, family)
    fam = get_family(family)
    kw: dict[str, Any] = dict(
        d_model=config.d_model, encoder_layers=config.num_encoder_layers,
        decoder_layers=config.num_decoder_layers, encoder_attention_heads=config.num_heads,
        decoder_attention_heads=config.num_heads, encoder_ffn_dim=config.d_ff,
        decoder_ffn_dim=config.d_ff, activation_function=TO_HF_ACTIVATION[config.activation],
        dropout=config.dropout_rate, attention_dropout=config.attention_dropout_rate,
        activation_dropout=0.0,  # the paper has no dropout inside the FFN
        encoder_layerdrop=0.0, decoder_layerdrop=0.0,
        max_position_embeddings=config.max_len, scale_embedding=config.scale_embeddings,
        pad_token_id=config.pad_id, eos_token_id=config.eos_id, bos_token_id=config.bos_id,
        decoder_start_token_id=config.bos_id, forced_eos_token_id=None,
        forced_bos_token_id=None, tie_word_embeddings=config.tie_output)
    if fam.name == "marian":
        kw.update(vocab_size=config.src_vocab_size, decoder_vocab_size=config.tgt_vocab_size,
                  share_encoder_decoder_embeddings=config.share_embeddings)
    elif fam.name == "fsmt":
        kw.update(src_vocab_size=config.src_vocab_size, tgt_vocab_size=config.tgt_vocab_size,
                  langs=["src", "tgt"])
    else:
        kw.update(vocab_size=config.src_vocab_size)
    return kw


# -- saved folders ------------------------------------------------------------------------
def read_hf_folder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """config.json and the safetensors weights (one file or an index of shards) of a folder
    saved with `save_pretrained`, as (config dict, {name: float32 array}); never pickle."""
    from safetensors.numpy import load_file

    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"HF model folder not found: {folder}")
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"{folder} holds no config.json: not a saved HF model folder")
    with open(config_path, encoding="utf-8") as f:
        hf_config = json.load(f)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{folder} holds no model.safetensors (pickled weights are not read)")
    state: dict[str, np.ndarray] = {}
    for name in files:
        for key, value in load_file(os.path.join(folder, name)).items():
            state[key] = value.astype(np.float32)
    return hf_config, state


def from_state(hf_config: Mapping[str, Any], state: Mapping[str, np.ndarray],
               output_bias: bool | None = None, ignore_training_only: bool = False
               ) -> tuple[dict[str, np.ndarray], TransformerConfig]:
    """(flat, config) of an HF config dict and numpy state dict of any supported family."""
    fam = family_of(hf_config)
    state = resolve_ties(state, hf_config, fam.name)
    for name in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                 fam.head):
        if name not in state:
            raise ValueError(f"{fam.model_class} weights lack {name}")
    config = spec_config(hf_config, state, output_bias, ignore_training_only)
    wmap = weight_map(config, fam.name)
    missing = sorted(set(wmap) - set(state))
    # M2M100's table is a non-persistent buffer now; older saves hold it as `...weights`
    stale = {f"model.{side}.embed_positions.weights" for side in SIDES}
    known = set(wmap) | set(positions_keys(config, fam.name)) | {BIAS_KEY, "model.shared.weight"}
    unknown = sorted(set(state) - known - stale)
    if missing or unknown:
        raise ValueError(f"{fam.model_class} weights do not match the family table: missing "
                         f"{missing}, unexpected {unknown}")
    check_positions(state, config, fam.name)
    flat: dict[str, np.ndarray] = {}
    for hf_name, (canon, transpose) in wmap.items():
        value = np.asarray(state[hf_name], dtype=np.float32)
        value = np.ascontiguousarray(value.T if transpose else value)  # [out, in] -> [in, out]
        if canon in flat and not np.array_equal(flat[canon], value):
            raise ValueError(f"{hf_name} differs from the tied {canon}")
        flat[canon] = value
    if config.output_bias:
        flat["output/bias"] = np.ascontiguousarray(state[BIAS_KEY][0], dtype=np.float32)  # [v]
    expected = param_shapes(config)
    bad = {n: (v.shape, expected.get(n)) for n, v in flat.items()
           if tuple(v.shape) != expected.get(n)}
    if bad or set(flat) != set(expected):
        raise ValueError(f"converted weights do not fit the canonical shapes: {bad}, missing "
                         f"{sorted(set(expected) - set(flat))}")
    return flat, config


def load_tokenizer(path: str | os.PathLike) -> Any | None:
    """The folder's `tokenizer.json` as a `tokenizers.Tokenizer` (no framework), else None."""
    file = os.path.join(os.fspath(path), "tokenizer.json")
    if not os.path.exists(file):
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(file)


def load_hf_folder(path: str | os.PathLike, output_bias: bool | None = None,
                   ignore_training_only: bool = True
                   ) -> tuple[dict[str, np.ndarray], TransformerConfig, Any | None]:
    """(flat, config, tokenizer or None) of a folder saved by an HF model's `save_pretrained`.

    Training-only dropout the canonical model lacks is dropped with a warning by default: a
    pretrained folder is opened to run and inspect it.
    """
    hf_config, state = read_hf_folder(path)
    flat, config = from_state(hf_config, state, output_bias, ignore_training_only)
    return flat, config, load_tokenizer(path)

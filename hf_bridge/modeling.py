"""`TransformerLabForConditionalGeneration`: a real transformers model over the torch mirror.

The model owns one `torch_model.Transformer` (`self.transformer`) and runs its modules, so the
HF model has the very same taps: `torch_model.capture(hf_model)` and `torch_model.patch(...)`
work on it with the canonical names, and its weights are the torch mirror's weights.  What this
class adds is the transformers side: `Seq2SeqLMOutput`, the loss, HF's own `EncoderDecoderCache`
(passed straight into the mirror's decoder), `output_attentions` / `output_hidden_states`,
`generate()`, `save_pretrained` / `from_pretrained` (safetensors) and the Auto classes.

Masks.  The model masks source keys equal to `pad_id` (the contract).  `attention_mask` is
therefore redundant; when given it must equal `input_ids != pad_id` (ValueError naming
`attention_mask` otherwise, never a silently different result).  With `encoder_outputs` and no
`input_ids` (generation after the first step) the mask comes from the encoder output's
`key_mask` (see `TransformerLabEncoderOutput`), or from `attention_mask` when the encoder
output is a plain tuple or `BaseModelOutput`.  The decoder self-attention is causal; a given
`decoder_attention_mask` ([b, t], or [b, cached + t] with a cache) also hides the target keys it
marks 0, as in BART.  Right padding (the contract's layout) changes no real position that way;
left padding works too.

Hidden states follow BART's convention: the embedding output, then each layer's output, the
last one after the pre-LN `final_norm` (so it equals `encoder/output` / `decoder/output`).

Inputs.  Ids are torch tensors; numpy arrays are accepted and converted (anything else raises
ValueError).  They are checked with torch ops, and the value checks (ids inside the vocabulary,
masks) are skipped while `torch.compile` / `torch.export` trace the model, so the graph has no
host round-trip: check ids once outside a compiled model.  `inputs_embeds` /
`decoder_inputs_embeds` [b, l, m] replace the ids with what the token table gives,
`get_input_embeddings()(ids)`, before the sqrt(m) scaling (the model scales them as it scales
its own); with `inputs_embeds` the source pad mask is `attention_mask` (None: no pad).

Attention.  `attn_implementation="eager"` (the default: the reference math, every tap filled)
or `"sdpa"` (torch's fused `scaled_dot_product_attention`, the same numbers up to summation
order).  SDPA never forms the scores and weights, so a layer whose `scores`/`weights` taps are
hooked (`torch_model.capture`, `patch`, `output_attentions=True`) runs eagerly for that call.
Caches: transformers' dynamic cache, and `cache_implementation="static"` (preallocated slots,
the empty ones masked).  Gradient checkpointing (`gradient_checkpointing_enable()`) recomputes
each layer in the backward pass: the layers are transformers' `GradientCheckpointingLayer`
(`benchmarks/hf_memory.py` measures the memory it saves).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

import torch_model
from spec import TransformerConfig, load_checkpoint
from torch_model.loss import smoothed_loss
from torch_model.model import init_module

from .config import TransformerLabConfig

# transformers 5 renamed the cache field and argument `past_key_values` -> `cache`
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"
IGNORE_INDEX = -100  # the HF convention for "no label here", treated like pad_id


def _tracing() -> bool:
    """True while torch.compile / torch.export trace: no data-dependent Python checks then."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def as_tensor(name: str, x: Any, device: torch.device) -> torch.Tensor | None:
    """A torch tensor as is, a numpy array converted onto `device` (integers as int64, the
    dtype of HF's ids), None as None."""
    if x is None or isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if np.issubdtype(x.dtype, np.integer):
            x = x.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)
    raise ValueError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}")


def check_ids(name: str, ids: torch.Tensor, vocab: int, max_len: int, cached: int = 0) -> None:
    """`[b, len]` integer ids inside [0, vocab), at most `max_len - cached` long.

    `spec.check_token_array`'s checks and messages in torch ops, so that a traced graph holds
    no numpy round-trip: shape and dtype always, the values only outside a compiled/exported
    graph.
    """
    if ids.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [batch, length] tensor of token ids, got shape "
                         f"{tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(ids.shape)}")
    if ids.shape[1] > max_len - cached:
        extra = f" with {cached} positions already cached" if cached else ""
        raise ValueError(f"{name} has length {ids.shape[1]}, over the config's "
                         f"max_len={max_len}{extra}")
    if _tracing():
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab})")


def check_embeds(name: str, embeds: torch.Tensor, d_model: int, max_len: int,
                 cached: int = 0) -> None:
    """`[b, len, d_model]` float vectors standing for ids, at most `max_len - cached` long."""
    if embeds.dim() != 3 or embeds.shape[-1] != d_model or not embeds.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float [batch, length, d_model={d_model}] tensor, got "
                         f"shape {tuple(embeds.shape)} and dtype {embeds.dtype}")
    if embeds.shape[1] > max_len - cached:
        raise ValueError(f"{name} has length {embeds.shape[1]}, over the config's "
                         f"max_len={max_len}" + (f" with {cached} cached" if cached else ""))


def shift_tokens_right(labels: torch.Tensor, pad_id: int, start_id: int) -> torch.Tensor:
    """labels [b, t] -> decoder input [b, t]: start token, then labels[:, :-1] (-100 -> pad)."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)


@dataclasses.dataclass
class TransformerLabEncoderOutput(BaseModelOutput):
    """`BaseModelOutput` plus `key_mask` [b, s] (True = real source token).

    transformers 5 `generate()` passes no `attention_mask` to an encoder-decoder unless the
    caller did, so the pad mask travels with the encoder output (and is expanded with it for
    beam search): every decoding step masks the same source keys as the full forward.
    """

    key_mask: torch.Tensor | None = None


class _Recorder:
    """Forward hooks that collect module outputs as tensors (gradients flow), only when asked."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}

    @contextlib.contextmanager
    def record(self, groups: dict[str, list[nn.Module]]) -> Iterator[_Recorder]:
        handles = []
        try:
            for key, modules in groups.items():
                self.values[key] = []
                for module in modules:
                    def hook(mod: nn.Module, args: tuple, out: torch.Tensor, key: str = key) -> None:
                        self.values[key].append(out)
                    handles.append(module.register_forward_hook(hook))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def get(self, key: str) -> tuple[torch.Tensor, ...] | None:
        return tuple(self.values[key]) if key in self.values else None


def _stack_points(stack: nn.Module, attn: tuple[str, ...]) -> dict[str, list[nn.Module]]:
    """Which modules give a stack's hidden states and attention weights, in execution order."""
    layers = stack.layers
    last = [stack.final_norm] if hasattr(stack, "final_norm") else []
    points = {"hidden": [stack.embed, *layers[:-1], *(last or layers[-1:])]}
    for sub in attn:
        points[sub] = [getattr(layer, sub).weights for layer in layers]  # taps [b, h, q, k]
    return points


class CheckpointedEncoderLayer(GradientCheckpointingLayer, torch_model.EncoderLayer):
    """The mirror's encoder layer as transformers' `GradientCheckpointingLayer`.

    The HF model swaps the class of its layers to this one (same parameters, same taps, same
    module paths), so `gradient_checkpointing_enable()` recomputes each layer in the backward.
    """


class CheckpointedDecoderLayer(GradientCheckpointingLayer, torch_model.DecoderLayer):
    """The mirror's decoder layer as transformers' `GradientCheckpointingLayer`."""


CHECKPOINTED = {torch_model.EncoderLayer: CheckpointedEncoderLayer,
                torch_model.DecoderLayer: CheckpointedDecoderLayer}


class TransformerLabPreTrainedModel(PreTrainedModel):
    """Weight init and loading glue shared by the transformer-lab HF models."""

    config_class = TransformerLabConfig
    config: TransformerLabConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CheckpointedEncoderLayer", "CheckpointedDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """The mirror's own init (`torch_model.model.init_module`), and the position tables.

        transformers calls this per module for whatever a checkpoint did not hold (and for
        everything after `__init__`); loaded parameters carry its `_is_hf_initialized` flag and
        the `nn.init` calls leave them alone.  The non-persistent position buffers are not
        saved, so they are refilled here (`Embed.reset_positions`, from `spec.position_table`).
        """
        cfg = self.config
        if isinstance(module, torch_model.Embed):
            module.reset_positions()  # a fixed table; a learned one is initialised below
        init_module(module, cfg.d_model)

    def get_correct_attn_implementation(self, requested_attention: str | None,
                                        is_init_check: bool = False) -> str:
        """Eager unless asked: the reference math, every tap filled (transformers would default
        to sdpa)."""
        requested = "eager" if requested_attention is None else requested_attention
        return super().get_correct_attn_implementation(requested, is_init_check)


class TransformerLabEncoder(nn.Module):
    """What `get_encoder()` returns: the encoder half, with transformers' encoder interface.

    It holds the full model without registering it as a submodule (so no weight is listed
    twice) and only forwards to `TransformerLabForConditionalGeneration.encode`.
    """

    def __init__(self, model: TransformerLabForConditionalGeneration) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, inputs_embeds: torch.Tensor | None = None
                ) -> TransformerLabEncoderOutput | tuple:
        """input_ids [b, s] -> TransformerLabEncoderOutput (a tuple when return_dict=False).

        No `**kwargs`: `generate()` passes the encoder only the arguments its signature names.
        """
        out = self._model.encode(input_ids, attention_mask, output_attentions,
                                 output_hidden_states, inputs_embeds)
        return out if return_dict is not False else out.to_tuple()


class TransformerLabForConditionalGeneration(TransformerLabPreTrainedModel, GenerationMixin):
    """The encoder-decoder Transformer as a transformers seq2seq LM (`generate()` included).

    Inputs are HF's: `input_ids` [b, s] (source, ending with eos), `decoder_input_ids` [b, t]
    (starting with `decoder_start_token_id` = bos_id) or `labels` [b, t] (then the decoder
    input is built by shifting right, as Marian does).  Logits are [b, t, tgt_vocab_size].
    """

    # the loss is a mean over this batch's non-pad labels and `num_items_in_batch` is not taken,
    # so a stock `Trainer` must divide by the accumulation steps itself (it does when False)
    accepts_loss_kwargs = False

    def __init__(self, config: TransformerLabConfig) -> None:
        if not isinstance(config, TransformerLabConfig):
            raise ValueError(f"config must be a TransformerLabConfig, got {type(config).__name__}")
        super().__init__(config)
        self.transformer = torch_model.Transformer(config.to_spec())
        for stack in (self.transformer.encoder, self.transformer.decoder):
            for layer in stack.layers:
                layer.__class__ = CHECKPOINTED[type(layer)]
        self.post_init()

    # -- canonical weights -------------------------------------------------------------------
    @classmethod
    def from_canonical(cls, flat: Any, config: TransformerConfig | TransformerLabConfig,
                       **config_kwargs: Any) -> TransformerLabForConditionalGeneration:
        """A model (eval mode) holding the canonical weights `flat`; `config_kwargs` are extra
        HF config settings such as `label_smoothing`."""
        if isinstance(config, TransformerConfig):
            config = TransformerLabConfig.from_spec(config, **config_kwargs)
        elif config_kwargs:
            raise ValueError(f"config_kwargs {sorted(config_kwargs)} need a spec config; set them "
                             f"on the TransformerLabConfig instead")
        model = cls(config)
        model.transformer.load_canonical(flat)
        return model.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any = None, *args: Any,
                        **kwargs: Any) -> Any:
        """transformers' `from_pretrained`, strict about weights, and for every folder kind.

        A canonical checkpoint folder (`spec.save_checkpoint`: `final/`, a torch trainer's
        `step_<N>/`) is loaded through `spec.load_checkpoint`; a folder of another kind is
        refused with the loader to use.  Weights missing from (or mis-shaped in) a checkpoint
        raise ValueError instead of transformers' warning over random weights, unless the
        caller asked for the report (`output_loading_info=True`) or gave the weights itself
        (`state_dict=`, or no path).
        """
        folder = _local_folder(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
        if folder is not None:
            kind = _folder_kind(folder)
            if kind == "canonical":
                return cls._from_canonical_folder(folder, *args, **kwargs)
            if kind != "hf":
                raise ValueError(kind)
        report = bool(kwargs.pop("output_loading_info", False))
        own_weights = pretrained_model_name_or_path is None or kwargs.get("state_dict") is not None
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args,
                                              output_loading_info=True, **kwargs)
        if not report and not own_weights:
            bad = {key: sorted(info.get(key) or ()) for key in ("missing_keys", "mismatched_keys")}
            if any(bad.values()):
                raise ValueError(f"checkpoint {pretrained_model_name_or_path} does not hold all "
                                 f"the weights of {cls.__name__}: {bad} (pass "
                                 f"output_loading_info=True to load it anyway and get the report)")
        return (model, info) if report else model

    @classmethod
    def _from_canonical_folder(cls, folder: Path, *args: Any, **kwargs: Any
                               ) -> TransformerLabForConditionalGeneration:
        if args:
            raise ValueError("a canonical checkpoint folder takes keyword arguments only")
        attn = kwargs.pop("attn_implementation", None)
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        report = kwargs.pop("output_loading_info", False)
        kwargs.pop("subfolder", None)
        config_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in ("label_smoothing",
                                                                        "use_cache")}
        if kwargs:
            raise ValueError(f"from_pretrained on the canonical checkpoint folder {folder} does "
                             f"not take {sorted(kwargs)}")
        flat, spec_cfg = load_checkpoint(folder)  # strict: every canonical weight, right shapes
        config = TransformerLabConfig.from_spec(spec_cfg, **config_kwargs)
        if attn is not None:
            config._attn_implementation = attn
        model = cls.from_canonical(flat, config)
        if dtype not in (None, "auto"):
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        info = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(),
                "error_msgs": []}
        return (model, info) if report else model

    def to_canonical(self) -> dict:
        """{canonical name: float32 numpy array}, Dense kernels [in, out]."""
        return self.transformer.to_canonical()

    @property
    def spec_config(self) -> TransformerConfig:
        return self.transformer.config

    # -- transformers plumbing ---------------------------------------------------------------
    def get_encoder(self, modality: str | None = None) -> TransformerLabEncoder:
        return TransformerLabEncoder(self)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.src_table

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the source token table (the shared one when the embeddings are shared)."""
        if self.transformer.config.share_embeddings:
            self.transformer.shared_embedding = value
        else:
            self.transformer.encoder.embedding = value

    def resize_token_embeddings(self, new_num_tokens: int | None = None,
                                pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """transformers' resize of the shared vocabulary; the untied output weight and the
        output bias follow (new rows: the old rows' mean, new biases 0).

        Separate source and target vocabularies (`share_embeddings=False`) are refused: one
        `vocab_size` cannot say which of them to resize.
        """
        if not self.transformer.config.share_embeddings:
            raise ValueError("resize_token_embeddings needs share_embeddings=True: this model has "
                             "separate source and target vocabularies; resize the canonical "
                             "weights (to_canonical / from_canonical) instead")
        table = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        vocab = table.weight.shape[0]
        self.config.vocab_size = vocab  # both vocabularies (TransformerLabConfig.__setattr__)
        out = self.transformer.output
        with torch.no_grad():
            for name in ("weight", "bias"):
                old = getattr(out, name)
                if old is None or old.shape[0] == vocab:
                    continue
                new = old.new_zeros((vocab, *old.shape[1:]))  # [v] or [v, m]
                n = min(vocab, old.shape[0])
                new[:n] = old[:n]
                if name == "weight" and vocab > n:
                    new[n:] = old.mean(dim=0)
                setattr(out, name, nn.Parameter(new))
        self.transformer.config = self.config.to_spec()
        return table

    def get_output_embeddings(self) -> None:
        """None: the head is the mirror's `Output` (tied or not), not an `nn.Linear` to resize."""
        return None

    def generate(self, inputs: Any = None, *args: Any, **kwargs: Any) -> Any:
        """transformers' `generate`; numpy ids and masks are converted to tensors first."""
        inputs = as_tensor("inputs", inputs, self.device)
        for key in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"):
            if key in kwargs:
                kwargs[key] = as_tensor(key, kwargs[key], self.device)
        return super().generate(inputs, *args, **kwargs)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_id, self.config.decoder_start_token_id)

    # -- checks ------------------------------------------------------------------------------
    def _sync_attention(self) -> None:
        """Point the mirror's attention modules at the configured implementation."""
        impl = self.config._attn_implementation or "eager"
        if impl not in ("eager", "sdpa"):
            raise ValueError(f"attn_implementation={impl!r} is not supported by "
                             f"{type(self).__name__}: use 'eager' or 'sdpa'")
        sdpa = impl == "sdpa"
        for module in self.transformer.modules():
            if isinstance(module, torch_model.Attention) and module.sdpa != sdpa:
                module.sdpa = sdpa

    def _source_mask(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                     known: torch.Tensor | None = None) -> torch.Tensor:
        """[b, s] True for real source tokens: `input_ids != pad_id`, or the mask `known` from
        the encoder output.  A given `attention_mask` must agree with it."""
        if input_ids is not None:
            known = self.transformer.source_mask(input_ids)
        if known is None:
            if attention_mask is None:
                raise ValueError("attention_mask is required with encoder_outputs that carry no "
                                 "key_mask and no input_ids: nothing else says which keys are pad")
            return attention_mask.bool()
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(known.shape):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                                 f"expected that of input_ids {tuple(known.shape)}")
            if not _tracing() and not torch.equal(attention_mask.bool(), known):
                raise ValueError(
                    f"attention_mask disagrees with input_ids != pad_id ({self.config.pad_id}): "
                    f"this model masks exactly the pad keys, so pass attention_mask=None or "
                    f"(input_ids != {self.config.pad_id})")
        return known

    @staticmethod
    def _decoder_mask(mask: torch.Tensor | None, target: torch.Tensor, cached: int
                      ) -> torch.Tensor | None:
        """decoder_attention_mask -> the key mask [b, cached + t] (True = real), or None."""
        if mask is None:
            return None
        b, t = target.shape[:2]
        if mask.dim() == 4 and mask.shape[0] == b and mask.shape[-1] >= cached + t:
            # transformers' own [b, 1, q, slots] mask (static caches): the last query's row says
            # which keys are real (bool, or 0 / -inf additive)
            row = mask[:, 0, -1, :cached + t]
            mask = row if row.dtype == torch.bool else row == 0
        if mask.dim() == 2 and mask.shape[0] == b and mask.shape[1] == t and cached:
            mask = torch.cat([mask.new_ones(b, cached), mask], dim=1)  # the cached keys count
        if mask.dim() != 2 or tuple(mask.shape) != (b, cached + t):
            raise ValueError(f"decoder_attention_mask has shape {tuple(mask.shape)}, expected "
                             f"({b}, {cached + t}) or ({b}, {t})")
        return mask.bool()

    # -- the two halves ----------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None,
               output_attentions: bool | None = None, output_hidden_states: bool | None = None,
               inputs_embeds: torch.Tensor | None = None) -> TransformerLabEncoderOutput:
        """input_ids [b, s] (or inputs_embeds [b, s, m]) -> last_hidden_state [b, s, m],
        key_mask [b, s], and per-layer hidden states and attention weights when asked."""
        output_attentions = self._flag(output_attentions, "output_attentions")
        output_hidden_states = self._flag(output_hidden_states, "output_hidden_states")
        self._sync_attention()
        cfg = self.config
        input_ids = as_tensor("input_ids", input_ids, self.device)
        attention_mask = as_tensor("attention_mask", attention_mask, self.device)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            check_ids("input_ids", input_ids, cfg.src_vocab_size, cfg.max_len)
            key_mask, source = self._source_mask(input_ids, attention_mask), input_ids
        else:
            check_embeds("inputs_embeds", inputs_embeds, cfg.d_model, cfg.max_len)
            key_mask = inputs_embeds.new_ones(inputs_embeds.shape[:2], dtype=torch.bool)
            if attention_mask is not None:  # no ids to compare it with: it is the pad mask
                if tuple(attention_mask.shape) != tuple(key_mask.shape):
                    raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                                     f"expected {tuple(key_mask.shape)} (that of inputs_embeds)")
                key_mask = attention_mask.bool()
            source = inputs_embeds
        groups = self._groups(self.transformer.encoder, ("self_attn",), output_attentions,
                              output_hidden_states)
        with _Recorder().record(groups) as rec:
            hidden = self.transformer.encode(source, key_mask)  # [b, s, m]
        return TransformerLabEncoderOutput(last_hidden_state=hidden,
                                           hidden_states=rec.get("hidden"),
                                           attentions=rec.get("self_attn"), key_mask=key_mask)

    def _flag(self, value: bool | None, name: str) -> bool:
        return bool(getattr(self.config, name, False) if value is None else value)

    @staticmethod
    def _groups(stack: nn.Module, attn: tuple[str, ...], attentions: bool, hidden: bool
                ) -> dict[str, list[nn.Module]]:
        points = _stack_points(stack, attn)
        wanted = (attn if attentions else ()) + (("hidden",) if hidden else ())
        return {key: points[key] for key in wanted}

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        cache: EncoderDecoderCache | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput | tuple:
        """Logits [b, t, v], the label-smoothed loss when `labels` are given, the cache.

        `cache` and `past_key_values` are the same argument (transformers 5 renamed it).
        The source and target batch sizes must be equal (ValueError naming both).
        """
        unused = sorted(k for k, v in kwargs.items() if v is not None)
        if unused:
            raise ValueError(f"unsupported argument(s) {unused} for {type(self).__name__}.forward")
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the cache as `cache` or `past_key_values`, not both")
        if past_key_values is not None and cache is None:
            warnings.warn("`past_key_values` is deprecated (transformers 5 calls it `cache`): "
                          "pass `cache`", FutureWarning, stacklevel=2)
        cache = cache if cache is not None else past_key_values
        output_attentions = self._flag(output_attentions, "output_attentions")
        output_hidden_states = self._flag(output_hidden_states, "output_hidden_states")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        cfg = self.config
        self._sync_attention()
        device = self.device
        input_ids = as_tensor("input_ids", input_ids, device)
        attention_mask = as_tensor("attention_mask", attention_mask, device)
        decoder_input_ids = as_tensor("decoder_input_ids", decoder_input_ids, device)
        decoder_attention_mask = as_tensor("decoder_attention_mask", decoder_attention_mask,
                                           device)
        labels = as_tensor("labels", labels, device)

        if labels is not None:
            # -100 is HF's "no label": checked and ignored like pad
            check_ids("labels", labels.masked_fill(labels == IGNORE_INDEX, cfg.pad_id),
                      cfg.tgt_vocab_size, cfg.max_len)
            use_cache = False  # a training forward: no cache to build
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if (decoder_input_ids is None) == (decoder_inputs_embeds is None):
            raise ValueError("pass exactly one of decoder_input_ids (or labels) and "
                             "decoder_inputs_embeds")
        use_cache = self._flag(use_cache, "use_cache")
        checkpointing = any(layer.gradient_checkpointing for stack in (
            self.transformer.encoder, self.transformer.decoder) for layer in stack.layers)
        if checkpointing and self.training and torch.is_grad_enabled():
            use_cache, cache = False, None  # the backward replay would write the cache twice
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))
        offset = 0 if cache is None else cache.get_seq_length()  # a 0-d tensor for static ones
        if not isinstance(offset, int):
            offset = 0 if _tracing() else int(offset)
        if decoder_input_ids is not None:
            check_ids("decoder_input_ids", decoder_input_ids, cfg.tgt_vocab_size, cfg.max_len,
                      offset)
            target = decoder_input_ids
        else:
            check_embeds("decoder_inputs_embeds", decoder_inputs_embeds, cfg.d_model, cfg.max_len,
                         offset)
            target = decoder_inputs_embeds
        tgt_mask = self._decoder_mask(decoder_attention_mask, target, offset)

        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, attention_mask, output_attentions,
                                          output_hidden_states, inputs_embeds)
            key_mask = encoder_outputs.key_mask
        else:
            if not isinstance(encoder_outputs, BaseModelOutput):
                encoder_outputs = BaseModelOutput(*encoder_outputs)
            key_mask = self._source_mask(input_ids, attention_mask,
                                         getattr(encoder_outputs, "key_mask", None))
        memory = encoder_outputs.last_hidden_state  # [b, s, m]
        if memory.shape[:2] != key_mask.shape:
            raise ValueError(f"attention_mask shape {tuple(key_mask.shape)} does not match the "
                             f"encoder output {tuple(memory.shape[:2])}")
        if memory.shape[0] != target.shape[0]:
            source = "input_ids" if input_ids is not None else (
                "inputs_embeds" if inputs_embeds is not None else "encoder_outputs")
            name = "decoder_input_ids" if decoder_input_ids is not None else \
                "decoder_inputs_embeds"
            raise ValueError(f"batch sizes differ: {source} has {memory.shape[0]} rows, {name} "
                             f"has {target.shape[0]}")

        groups = self._groups(self.transformer.decoder, ("self_attn", "cross_attn"),
                              output_attentions, output_hidden_states)
        with _Recorder().record(groups) as rec:
            logits = self.transformer.decode(target, memory, key_mask, cache,
                                             tgt_mask)  # [b, t, v]

        loss = None
        if labels is not None:
            if tuple(labels.shape) != tuple(logits.shape[:2]):
                raise ValueError(f"labels has shape {tuple(labels.shape)}, expected "
                                 f"{tuple(logits.shape[:2])} (that of decoder_input_ids)")
            targets = labels.masked_fill(labels == IGNORE_INDEX, cfg.pad_id)
            # mean over non-pad labels (spec.loss semantics); no real label gives 0, not NaN
            loss = smoothed_loss(logits, targets, cfg.pad_id, cfg.label_smoothing,
                                 reduction="sum") / (targets != cfg.pad_id).sum().clamp(min=1)

        out = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            decoder_hidden_states=rec.get("hidden"),
            decoder_attentions=rec.get("self_attn"),
            cross_attentions=rec.get("cross_attn"),
            encoder_last_hidden_state=memory,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            **{CACHE_FIELD: cache if use_cache else None},
        )
        return out if return_dict else out.to_tuple()


def _local_folder(path: Any, subfolder: str = "") -> Path | None:
    if path is None or not isinstance(path, (str, os.PathLike)):
        return None
    folder = Path(path) / subfolder if subfolder else Path(path)
    return folder if folder.is_dir() else None


def _folder_kind(folder: Path) -> str:
    """"hf", "canonical", or the reason (naming the loader to use) why this class cannot load it.
    """
    config = folder / "config.json"
    if config.is_file():
        try:
            fields = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config} is not valid JSON: {e}") from e
        model_type = fields.get("model_type") if isinstance(fields, dict) else None
        if model_type == TransformerLabConfig.model_type:
            return "hf"
        if model_type is None and isinstance(fields, dict) and "src_vocab_size" in fields:
            return "canonical"
        if model_type is None:
            return "hf"  # let transformers say what is wrong with it
        return (f"{folder} holds a {model_type!r} model, not a transformer_lab one: open it with "
                f"transformers' own AutoModelForSeq2SeqLM, or convert it with "
                f"hf_bridge.marian.from_pretrained_marian (MarianMT)")
    if (folder / "final" / "config.json").is_file():
        return f"{folder} is a run folder: load its final checkpoint, {folder / 'final'}"
    if (folder / "checkpoints").is_dir():
        return f"{folder} is a run folder without final/: load one of {folder / 'checkpoints'}"
    if any(folder.glob("*/_CHECKPOINT_METADATA")) or (folder / "_CHECKPOINT_METADATA").exists():
        return (f"{folder} is an orbax (JAX) checkpoint: restore it with "
                f"jax_model.checkpointing.Checkpointer, or load the run's final/ folder")
    inner = sorted(p.parent.name for p in folder.glob("*/config.json"))
    if inner:
        return f"{folder} holds checkpoint folders: load one of them, e.g. {folder / inner[-1]}"
    return "hf"


AutoModelForSeq2SeqLM.register(TransformerLabConfig, TransformerLabForConditionalGeneration,
                               exist_ok=True)

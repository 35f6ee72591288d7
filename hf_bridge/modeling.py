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
output is a plain tuple or `BaseModelOutput`.  The decoder self-attention is causal only; `decoder_attention_mask` may only mark right padding
(ones, then zeros), which cannot change a real position, and anything else raises ValueError.

Hidden states follow BART's convention: the embedding output, then each layer's output, the
last one after the pre-LN `final_norm` (so it equals `encoder/output` / `decoder/output`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

import torch_model
from spec import TransformerConfig, check_token_array, sinusoidal_positions
from torch_model.loss import smoothed_loss

from .config import TransformerLabConfig

# transformers 5 renamed the cache field and argument `past_key_values` -> `cache`
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"
IGNORE_INDEX = -100  # the HF convention for "no label here", treated like pad_id


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


class TransformerLabPreTrainedModel(PreTrainedModel):
    """Weight init and loading glue shared by the transformer-lab HF models."""

    config_class = TransformerLabConfig
    config: TransformerLabConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EncoderLayer", "DecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """The mirror's own init, and the position tables.

        `from_pretrained` builds the model on the meta device and only loads the saved
        parameters; the non-persistent position buffers come back empty, so they are refilled
        here from `spec.sinusoidal_positions`.  Loaded parameters carry transformers'
        `_is_hf_initialized` flag and `reset_parameters` (whose `nn.init` calls transformers
        guards during loading) leaves them alone.
        """
        if isinstance(module, torch_model.Embed):
            cfg = self.config
            table = sinusoidal_positions(cfg.max_len, cfg.d_model, cfg.positional_layout)
            with torch.no_grad():
                module.positions.copy_(torch.from_numpy(table))
        elif isinstance(module, torch_model.Transformer):
            module.reset_parameters()


class TransformerLabEncoder(nn.Module):
    """What `get_encoder()` returns: the encoder half, with transformers' encoder interface.

    It holds the full model without registering it as a submodule (so no weight is listed
    twice) and only forwards to `TransformerLabForConditionalGeneration.encode`.
    """

    def __init__(self, model: TransformerLabForConditionalGeneration) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> TransformerLabEncoderOutput | tuple:
        """input_ids [b, s] -> TransformerLabEncoderOutput (a tuple when return_dict=False).

        No `**kwargs`: `generate()` passes the encoder only the arguments its signature names.
        """
        out = self._model.encode(input_ids, attention_mask, output_attentions,
                                 output_hidden_states)
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

    def get_output_embeddings(self) -> None:
        """None: the head is the mirror's `Output` (tied or not), not an `nn.Linear` to resize."""
        return None

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_id, self.config.decoder_start_token_id)

    # -- checks ------------------------------------------------------------------------------
    def _check_ids(self, name: str, ids: torch.Tensor, vocab: int, offset: int = 0) -> None:
        check_token_array(name, ids, vocab, self.config.max_len - offset)

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
            if not torch.equal(attention_mask.bool(), known):
                raise ValueError(
                    f"attention_mask disagrees with input_ids != pad_id ({self.config.pad_id}): "
                    f"this model masks exactly the pad keys, so pass attention_mask=None or "
                    f"(input_ids != {self.config.pad_id})")
        return known

    @staticmethod
    def _check_decoder_mask(decoder_attention_mask: torch.Tensor | None) -> None:
        if decoder_attention_mask is None:
            return
        mask = decoder_attention_mask.bool()
        # right padding: once a row has a 0 it stays 0, i.e. the mask never rises
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError(
                "decoder_attention_mask must only mark right padding (ones, then zeros): the "
                "decoder self-attention is causal only, so other patterns would be ignored")

    # -- the two halves ----------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               output_attentions: bool | None = None, output_hidden_states: bool | None = None
               ) -> TransformerLabEncoderOutput:
        """input_ids [b, s] -> last_hidden_state [b, s, m], key_mask [b, s], and per-layer
        hidden states and attention weights when asked."""
        output_attentions = self._flag(output_attentions, "output_attentions")
        output_hidden_states = self._flag(output_hidden_states, "output_hidden_states")
        self._check_ids("input_ids", input_ids, self.config.src_vocab_size)
        key_mask = self._source_mask(input_ids, attention_mask)
        groups = self._groups(self.transformer.encoder, ("self_attn",), output_attentions,
                              output_hidden_states)
        with _Recorder().record(groups) as rec:
            hidden = self.transformer.encode(input_ids, key_mask)  # [b, s, m]
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
        **kwargs: Any,
    ) -> Seq2SeqLMOutput | tuple:
        """Logits [b, t, v], the label-smoothed loss when `labels` are given, the cache.

        `cache` and `past_key_values` are the same argument (transformers 5 renamed it).
        """
        unused = sorted(k for k, v in kwargs.items() if v is not None)
        if unused:
            raise ValueError(f"unsupported argument(s) {unused} for {type(self).__name__}.forward")
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the cache as `cache` or `past_key_values`, not both")
        cache = cache if cache is not None else past_key_values
        output_attentions = self._flag(output_attentions, "output_attentions")
        output_hidden_states = self._flag(output_hidden_states, "output_hidden_states")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        cfg = self.config

        if labels is not None:
            # -100 is HF's "no label": checked and ignored like pad
            check_token_array("labels", labels.masked_fill(labels == IGNORE_INDEX, cfg.pad_id),
                              cfg.tgt_vocab_size, cfg.max_len)
            use_cache = False  # a training forward: no cache to build
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids (or labels) is required")
        use_cache = self._flag(use_cache, "use_cache")
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))
        offset = cache.get_seq_length() if cache is not None else 0
        self._check_ids("decoder_input_ids", decoder_input_ids, cfg.tgt_vocab_size, offset)
        self._check_decoder_mask(decoder_attention_mask)

        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, attention_mask, output_attentions,
                                          output_hidden_states)
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

        groups = self._groups(self.transformer.decoder, ("self_attn", "cross_attn"),
                              output_attentions, output_hidden_states)
        with _Recorder().record(groups) as rec:
            logits = self.transformer.decode(decoder_input_ids, memory, key_mask, cache)  # [b, t, v]

        loss = None
        if labels is not None:
            if tuple(labels.shape) != tuple(logits.shape[:2]):
                raise ValueError(f"labels has shape {tuple(labels.shape)}, expected "
                                 f"{tuple(logits.shape[:2])} (that of decoder_input_ids)")
            targets = labels.masked_fill(labels == IGNORE_INDEX, cfg.pad_id)
            # mean over non-pad labels of the smoothed cross-entropy (spec.loss semantics)
            loss = smoothed_loss(logits, targets, cfg.pad_id, cfg.label_smoothing)

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


AutoModelForSeq2SeqLM.register(TransformerLabConfig, TransformerLabForConditionalGeneration,
                               exist_ok=True)

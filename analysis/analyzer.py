"""`TransformerAnalyzer(model)`: the seed's analysis API over any implementation.

The model is resolved to an adapter (`analysis.models`), so the same numbers come out for the
Flax, torch and Hugging Face models.  Inputs (see `analysis.inputs` for the full rules):
`input_ids` [b, s] or [s]; `target_ids` is the decoder input (starts with bos) and defaults to
the copy task's `[bos, src[:-1]]`; labels default to `target_ids` shifted left with eos;
`attention_mask` must equal `input_ids != pad_id` (ValueError otherwise).  `tokens` labels the
positions: a list of strings (source of a one-row batch), a list of such lists (one per row),
or `{"src": ..., "tgt": ...}`; token strings in `DELIMITER_TOKENS` count as delimiters for the
pattern classes, as does `eos_id`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spec import files
from spec.files import json_safe

from .attention import THRESHOLDS, attention_patterns
from .contributions import (
    direct_logit_effects,
    direct_logit_summary,
    layer_contributions,
)
from .gradients import gradient_flow
from .inputs import masks_for, prepare_inputs
from .models import resolve_model
from .qkv import qkv_statistics
from .schema import load_schema, validate

SCHEMA_VERSION = 1
DELIMITER_TOKENS = frozenset({".", ",", ";", ":", "!", "?", "</s>", "<eos>", "[SEP]", "<sep>"})
DLA_APPROXIMATION = (
    "direct path only: every LayerNorm on the residual path is replaced by the affine map it "
    "applied on this input (gamma * (x - mean) / sigma, sigma frozen per token); norm biases "
    "form their own piece, so the pieces sum to the logits; in post-LN the later sublayers' "
    "reaction to a piece (indirect effect) is excluded")


class TransformerAnalyzer:
    """QKV statistics, attention patterns, layer contributions and gradient flow of one model.

    `model`: an adapter, a `(params, config)` pair, a `torch_model.Transformer`, a `hf_bridge`
    model or a checkpoint folder (`analysis.models.resolve_model`).
    """

    def __init__(self, model: object, config=None, label_smoothing: float = 0.1) -> None:
        self.adapter = resolve_model(model, config)
        self.config = self.adapter.config
        self.label_smoothing = float(label_smoothing)
        self._capture_key: tuple | None = None
        self._capture: dict | None = None

    # -- inputs and capture ----------------------------------------------------------------
    def inputs(self, input_ids, target_ids=None, attention_mask=None, labels=None):
        """(src, tgt, labels, target_source) as validated numpy arrays (`analysis.inputs`)."""
        return prepare_inputs(self.config, input_ids, target_ids, attention_mask, labels)

    def capture(self, input_ids, target_ids=None, attention_mask=None) -> dict[str, np.ndarray]:
        """The canonical intermediates of one deterministic forward (the last one is cached)."""
        src, tgt, _, _ = self.inputs(input_ids, target_ids, attention_mask)
        return self._captured(src, tgt)

    def _captured(self, src: np.ndarray, tgt: np.ndarray) -> dict[str, np.ndarray]:
        key = (src.shape, src.tobytes(), tgt.shape, tgt.tobytes())
        if key != self._capture_key:
            self._capture = self.adapter.capture(src, tgt)
            self._capture_key = key
        return self._capture

    def _masks(self, inter: dict, src: np.ndarray, tgt: np.ndarray):
        return masks_for(inter, src, tgt, self.config.pad_id)

    # -- the seed's analyses ---------------------------------------------------------------
    def analyze_qkv_statistics(self, input_ids, target_ids=None, attention_mask=None) -> dict:
        """{attn prefix: {"kind", "q"|"k"|"v": {"mean", "std", "norm": per-head lists}}}."""
        src, tgt, _, _ = self.inputs(input_ids, target_ids, attention_mask)
        inter = self._captured(src, tgt)
        return qkv_statistics(inter, self._masks(inter, src, tgt))

    def analyze_attention_patterns(self, input_ids, tokens=None, target_ids=None,
                                   attention_mask=None) -> dict:
        """{"thresholds", "blocks": {attn prefix: {"kind", "heads": [...], "counts"}}}: per head
        its entropy, masses and class (`analysis.attention`)."""
        src, tgt, _, source = self.inputs(input_ids, target_ids, attention_mask)
        inter = self._captured(src, tgt)
        toks = self.tokens(tokens, src, tgt, source)
        blocks = attention_patterns(inter, self._masks(inter, src, tgt), src, tgt,
                                    self._delimiters(toks, src, tgt))
        return {"thresholds": dict(THRESHOLDS), "blocks": blocks}

    def analyze_layer_contributions(self, input_ids, target_ids=None, attention_mask=None,
                                    labels=None, target: str = "labels") -> dict:
        """{"sublayers": {prefix: norm ratio, cosine, ...}, "direct_logit_effects": {...}}.

        `target` picks the token the direct logit attribution is measured on: "labels" or
        "predictions" (the model's argmax)."""
        if target not in ("labels", "predictions"):
            raise ValueError(f"target={target!r} is invalid: expected 'labels' or 'predictions'")
        src, tgt, lab, _ = self.inputs(input_ids, target_ids, attention_mask, labels)
        inter = self._captured(src, tgt)
        masks = self._masks(inter, src, tgt)
        effects, error = direct_logit_effects(inter, self.adapter.params(), self.config)
        ids = lab if target == "labels" else np.asarray(inter["logits"]).argmax(-1)
        real = masks.tgt_real & (lab != self.config.pad_id) if target == "labels" \
            else masks.tgt_real
        return {
            "sublayers": layer_contributions(inter, self.config, masks.src_real, masks.tgt_real),
            "direct_logit_effects": {
                "approximation": DLA_APPROXIMATION, "target": target,
                "reconstruction_error": error,
                "pieces": direct_logit_summary(effects, ids, real),
            },
        }

    def analyze_gradient_flow(self, input_ids, target_ids=None, labels=None,
                              attention_mask=None) -> dict:
        """Gradient norms per parameter, sublayer and layer of the label-smoothed loss, with
        vanishing / exploding warnings (`analysis.gradients`)."""
        src, tgt, lab, _ = self.inputs(input_ids, target_ids, attention_mask, labels)
        loss, grads = self.adapter.gradients(src, tgt, lab, self.label_smoothing)
        return gradient_flow(grads, loss)

    def comprehensive_analysis(self, input_ids, target_ids=None, attention_mask=None,
                               tokens=None, save_path: str | os.PathLike | None = None,
                               labels=None) -> dict:
        """Everything above as one report (`report_schema.json`), validated; written as JSON
        to `save_path` when given."""
        src, tgt, lab, source = self.inputs(input_ids, target_ids, attention_mask, labels)
        flow = self.analyze_gradient_flow(src, tgt, lab)
        report = {
            "schema_version": SCHEMA_VERSION,
            "model": {"implementation": self.adapter.name, "config": self.config.to_dict()},
            "inputs": {"src": src.tolist(), "tgt": tgt.tolist(), "labels": lab.tolist(),
                       "target_source": source, "tokens": self.tokens(tokens, src, tgt, source)},
            "loss": flow["loss"],
            "qkv_statistics": self.analyze_qkv_statistics(src, tgt),
            "attention_patterns": self.analyze_attention_patterns(src, tokens, tgt),
            "layer_contributions": self.analyze_layer_contributions(src, tgt, labels=lab),
            "gradient_flow": flow,
        }
        report = json_safe(report)
        validate(report, load_schema())
        if save_path is not None:
            write_json(save_path, report)
        return report

    # -- tokens ------------------------------------------------------------------------------
    def tokens(self, tokens, src: np.ndarray, tgt: np.ndarray, source: str = "given") -> dict:
        """Normalise `tokens` to {"src": rows | None, "tgt": rows | None} (lists of strings),
        checking every length.  A copy-task target gets ["<s>"] + the source tokens[:-1]."""
        if tokens is None:
            return {"src": None, "tgt": None}
        if isinstance(tokens, dict):
            unknown = sorted(set(tokens) - {"src", "tgt"})
            if unknown:
                raise ValueError(f"tokens has unknown keys {unknown}: expected 'src' and 'tgt'")
            out = {"src": _rows("tokens['src']", tokens.get("src"), src),
                   "tgt": _rows("tokens['tgt']", tokens.get("tgt"), tgt)}
        else:
            out = {"src": _rows("tokens", tokens, src), "tgt": None}
        if out["tgt"] is None and out["src"] is not None and source == "copy":
            out["tgt"] = [["<s>"] + row[:-1] for row in out["src"]]
        return out

    def _delimiters(self, toks: dict, src: np.ndarray, tgt: np.ndarray) -> tuple[int, ...]:
        ids = {self.config.eos_id}
        for side, arr in (("src", src), ("tgt", tgt)):
            for row_tokens, row_ids in zip(toks[side] or [], arr):
                ids.update(int(i) for t, i in zip(row_tokens, row_ids)
                           if t in DELIMITER_TOKENS)
        ids.discard(self.config.pad_id)
        return tuple(sorted(ids))


def _rows(name: str, tokens, ids: np.ndarray) -> list[list[str]] | None:
    if tokens is None:
        return None
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise ValueError(f"{name} must be a list of token strings (or one list per row), got "
                         f"{type(tokens).__name__}")
    rows = [list(tokens)] if all(isinstance(t, str) for t in tokens) else [list(r) for r in tokens]
    if len(rows) != ids.shape[0] or any(len(r) != ids.shape[1] for r in rows):
        raise ValueError(f"{name} has {len(rows)} row(s) of lengths {[len(r) for r in rows]}, "
                         f"expected {ids.shape[0]} row(s) of length {ids.shape[1]} (the ids' "
                         f"shape)")
    return [[str(t) for t in r] for r in rows]


def write_json(path: str | os.PathLike, doc: dict) -> Path:
    """Strict JSON (the report schema has no NaN), written atomically."""
    return files.write_json(path, doc)

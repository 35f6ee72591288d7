"""`python main.py --version analysis --checkpoint PATH`: look inside a saved model instead of
training the demo.

PATH is a folder written by `save_pretrained` of a Marian, FSMT, BART, mBART, M2M100 or
Pegasus model (config.json with a `model_type`), or a `spec` checkpoint folder.  The model is
opened in the Flax reference (`jax_model.from_pretrained`; torch when jax is not importable),
diffed against the torch mirror when both are, and analysed on a probe: the `--translate`
texts through the folder's `tokenizer.json` when it has one, else a fixed batch of ordinary
ids.  The decoder input is the model's own greedy translation, so the figures show what the
pretrained model attends to while it translates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from spec import TransformerConfig, load_checkpoint

PROBE_LEN = 12


def is_hf_folder(path: str | os.PathLike) -> bool:
    config = Path(path) / "config.json"
    if not config.exists():
        return False
    return "model_type" in json.loads(config.read_text(encoding="utf-8"))


def open_folder(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], TransformerConfig,
                                                 Any | None]:
    """(flat, config, tokenizer or None) of an HF folder or a spec checkpoint folder."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"--checkpoint folder not found: {path}")
    if is_hf_folder(path):
        from spec.families import load_hf_folder

        return load_hf_folder(path)
    flat, config = load_checkpoint(path)
    return flat, config, None


def probe_sources(config: TransformerConfig, tokenizer: Any | None,
                  texts: list[str] | None) -> np.ndarray:
    """[b, s] source ids: the texts through the tokenizer (eos-terminated), else two fixed
    rows of ordinary ids (the second shorter and padded)."""
    if texts and tokenizer is not None:
        rows = [list(tokenizer.encode(t).ids) for t in texts]
        rows = [r if r and r[-1] == config.eos_id else r + [config.eos_id] for r in rows]
        rows = [r[: config.max_len - 1] + ([config.eos_id] if len(r) >= config.max_len else [])
                for r in rows]
        width = max(len(r) for r in rows)
        return np.array([r + [config.pad_id] * (width - len(r)) for r in rows], np.int64)
    special = {config.pad_id, config.bos_id, config.eos_id}
    ordinary = [i for i in range(config.src_vocab_size) if i not in special]
    rng = np.random.default_rng(0)
    length = min(PROBE_LEN, config.max_len)
    src = np.full((2, length), config.pad_id, np.int64)
    for row, n in enumerate((length, max(2, length // 2))):
        src[row, : n - 1] = rng.choice(ordinary, n - 1)
        src[row, n - 1] = config.eos_id
    return src


def analyse(path: str | os.PathLike, output_dir: str | os.PathLike,
            texts: list[str] | None = None) -> dict:
    """Analyse the folder's model on a probe; returns `write_outputs`'s result + "framework"."""
    from analysis.analyzer import TransformerAnalyzer
    from analysis.models import adapter_from_canonical
    from analysis.outputs import write_outputs

    flat, config, tokenizer = open_folder(path)
    order = ("jax", "torch")
    adapter = adapter_from_canonical(flat, config, order)
    framework = adapter.name
    other = None
    try:
        second = [f for f in order if f != framework]
        other = TransformerAnalyzer(adapter_from_canonical(flat, config, tuple(second)))
    except ImportError:
        other = None
    src = probe_sources(config, tokenizer, texts)
    tgt = greedy_targets(adapter, config, src)
    vocab = None
    if tokenizer is not None:
        vocab = {i: tokenizer.id_to_token(i) or str(i) for i in range(config.tgt_vocab_size)}
    result = write_outputs(TransformerAnalyzer(adapter), output_dir, src, tgt, other=other,
                           vocab=vocab)
    result["framework"] = framework
    return result


def greedy_targets(adapter: Any, config: TransformerConfig, src: np.ndarray) -> np.ndarray:
    """[b, t] decoder input: the start token, then the model's greedy translation (pad after
    its eos), so the probe is what the model itself produces (the adapter's own `decode`)."""
    steps = min(PROBE_LEN, config.max_len - 1)
    tokens = adapter.decode(src, steps)
    tokens = np.asarray(tokens, np.int64)
    tgt = np.concatenate([np.full((src.shape[0], 1), config.bos_id, np.int64),
                          tokens[:, :-1]], axis=1)  # [b, steps]
    after_eos = np.cumsum(tgt[:, 1:] == config.eos_id, axis=1) > 0
    tgt[:, 1:][after_eos] = config.pad_id  # right-padded, as the analysis expects
    return tgt

"""`generate()` in the contract's token layout (docs/interfaces.md "Decoding").

HF `generate` returns `[b, 1 + n]` with the start token first and n <= max_new_tokens; beam
search fills the unused tail with `pad_token_id or eos_token_id` (so with eos when pad_id is
0).  The contract returns `[b, max_len]`: start token excluded, eos included, `pad_id` after
eos and after the end.  `generate_tokens` runs `generate` with exactly the contract's settings
and converts, so its tokens can be compared with `torch_model.greedy_decode` / `beam_search`
and the jax ones.  `patch=` (as in `torch_model.forward`) is applied at every generation step by
`patched_generation`, a context manager that also works around a plain `model.generate()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from spec import check_tokens
from torch_model import full_precision
from torch_model.api import mode
from torch_model.decoding import decode_patch

from .modeling import TransformerLabForConditionalGeneration


def pad_after_eos(tokens: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """[b, n] tokens: everything after a row's first eos becomes pad_id."""
    is_eos = (tokens == eos_id).long()
    after = (torch.cumsum(is_eos, dim=1) - is_eos) > 0  # [b, n] strictly after the first eos
    return tokens.masked_fill(after, pad_id)


@contextlib.contextmanager
def patched_generation(model: TransformerLabForConditionalGeneration, patch: Mapping | None,
                       src: Any, max_len: int, beam_size: int = 1) -> Iterator[None]:
    """Apply `patch` through `model.generate(input_ids=src, max_new_tokens=max_len,
    num_beams=beam_size, ...)` run inside: the encoder's taps once, the decoder's at every step
    (cut to the step's query position; torch_model.decoding.decode_patch)."""
    src_np, _ = check_tokens(src, None, model.spec_config)
    with decode_patch(model.transformer, patch, src_np, max_len, beam_size):
        yield


@torch.no_grad()
def generate_tokens(model: TransformerLabForConditionalGeneration, src: Any, max_len: int,
                    beam_size: int = 1, alpha: float = 1.0,
                    early_stopping: bool | str = False, patch: Mapping | None = None,
                    **generate_kwargs: Any) -> torch.Tensor:
    """src [b, s] -> tokens [b, max_len] (int64), HF `generate` with the contract's settings.

    Greedy when `beam_size == 1`; otherwise beam search with `length_penalty=alpha`.  No
    logits processor runs (the model's generation config sets none); `generate_kwargs` are
    passed on (e.g. `output_attentions`), but may not change the contract's settings.
    Deterministic (dropout off, whatever the model's mode) at full float32 precision.
    """
    cfg = model.config
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= cfg.max_len:
        raise ValueError(f"max_len={max_len!r} is invalid: expected an integer in "
                         f"[1, {cfg.max_len}] (the config's max_len)")
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size={beam_size!r} is invalid: expected a positive integer")
    fixed = {"max_new_tokens", "num_beams", "length_penalty", "early_stopping", "do_sample",
             "num_return_sequences", "decoder_start_token_id", "eos_token_id", "pad_token_id"}
    clash = sorted(fixed & set(generate_kwargs))
    if clash:
        raise ValueError(f"generate_kwargs may not set {clash}: they are the contract's")
    src_np, _ = check_tokens(src, None, model.spec_config)
    src_t = torch.as_tensor(src_np, dtype=torch.int64, device=model.device)
    with full_precision(), mode(model, False), \
            patched_generation(model, patch, src_np, max_len, beam_size):
        out = model.generate(
            input_ids=src_t, max_new_tokens=max_len, num_beams=beam_size, length_penalty=alpha,
            early_stopping=early_stopping, do_sample=False, num_return_sequences=1,
            decoder_start_token_id=cfg.bos_id, eos_token_id=cfg.eos_id, pad_token_id=cfg.pad_id,
            **generate_kwargs)
    sequences = out.sequences if hasattr(out, "sequences") else out  # [b, 1 + n]
    tokens = torch.full((src_t.shape[0], max_len), cfg.pad_id, dtype=torch.int64,
                        device=sequences.device)
    tokens[:, :sequences.shape[1] - 1] = sequences[:, 1:]
    return pad_after_eos(tokens, cfg.eos_id, cfg.pad_id)

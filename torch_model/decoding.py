"""Greedy and beam-search decoding with the KV cache, token for token as HF `generate`.

Both return `[b, max_len]` int64 tokens: bos excluded, eos included, `pad_id` after eos and after
the end when every row stopped early.  The semantics are those of
`generate(decoder_start_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
max_new_tokens=max_len, num_beams=beam_size, length_penalty=alpha,
early_stopping=early_stopping, do_sample=False)` with no logits processors; `beam_search`
follows `GenerationMixin._beam_search` (transformers 5) step by step, with its constants, so
ties and rounding come out the same.  One deliberate difference: HF fills the unused tail of
beam outputs with `pad_token_id or eos_token_id`, i.e. with eos when pad_id == 0; here it is
always pad_id.

`capture=True` also returns `{name: [steps, rows, ...]}` for every decoder tap and `logits`
(rows = b, or b * beam_size for beam search, beams of one sentence adjacent).  Self-attention
keys grow by one per step; their axis is padded with zeros to the last step's length
(`weights` [steps, rows, h, 1, steps], future positions 0).

`patch` (the mapping of `forward`) is applied at every step (spec/patching.py): a function
gets one step's value (`[rows, h, 1, d]` for a decoder context; the whole cache
`[rows, h, step + 1, d]` for decoder self-attention k/v); an Intervention's position
selections refer to the step's query position (and, for self-attention k/v, to cache slots).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from spec import check_tokens
from spec.patching import decode_plan, in_decoder, step_slice

from .api import affine, as_ids, full_precision, mode, model_device, patched
from .cache import EncoderDecoderCache
from .model import Transformer
from .taps import capture as capture_taps
from .taps import named_taps

NEG = -1.0e9  # HF's "impossible" score, added rather than replacing, as HF does


def _check(model: Transformer, src: object, max_len: object, beam_size: object = 1,
           early_stopping: object = False) -> np.ndarray:
    src_np, _ = check_tokens(src, None, model.config)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len={max_len!r} is invalid: expected a positive integer")
    if max_len > model.config.max_len:
        raise ValueError(f"max_len={max_len} is over the config's max_len={model.config.max_len}: "
                         f"decoder positions would run past the position table")
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size={beam_size!r} is invalid: expected a positive integer")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping={early_stopping!r} is invalid: "
                         f"expected True, False or 'never'")
    return src_np


class _Steps:
    """Per-step captures of the decoder taps, stacked on a leading step axis at the end."""

    def __init__(self, model: Transformer, on: bool) -> None:
        self.model = model
        self.names = [n for n in named_taps(model) if n.startswith("decoder/") or n == "logits"] if on else []
        self.steps: list[dict[str, np.ndarray]] = []

    def run(self, fn: Any) -> Any:
        if not self.names:
            return fn()
        with capture_taps(self.model, self.names) as got:
            out = fn()
        self.steps.append(dict(got))
        return out

    def stacked(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self.names:
            arrays = [step[name] for step in self.steps]
            axis = -2 if name.endswith(("/k", "/v")) else -1  # the self-attention key axis
            longest = max(a.shape[axis] for a in arrays)
            padded = []
            for a in arrays:
                width = [(0, 0)] * a.ndim
                width[axis] = (0, longest - a.shape[axis])
                padded.append(np.pad(a, width))
            out[name] = np.stack(padded)
        return out


@contextlib.contextmanager
def decode_patch(model: Transformer, patch: Mapping | None, src: np.ndarray, max_len: int,
                 beams: int = 1) -> Iterator[None]:
    """Apply `patch` through a whole decode (this module's searches, or HF `generate`).

    A pre-hook on the decoder reads which query positions the call feeds (the cache length,
    plus the new ids) and each decoder tap cuts its coefficients to them (spec.patching);
    the encoder's taps use the full ones.  Nothing is registered when `patch` is empty."""
    fns, coeffs = decode_plan(patch, model.config, src.shape[0], src.shape[1], max_len, beams)
    if not fns and not coeffs:
        yield
        return
    device = model_device(model)
    window = [0, 1]  # query positions start..stop-1 of the running decoder call

    signature = inspect.signature(model.decoder.forward)

    def feed(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        cache = signature.bind(*args, **kwargs).arguments.get("cache")
        window[0] = cache.get_seq_length() if cache is not None else 0
        window[1] = window[0] + args[0].shape[1]

    def cut(name: str, scale: np.ndarray, shift: np.ndarray) -> Any:
        if not in_decoder(name):
            return affine(scale, shift, device)
        return lambda value: affine(step_slice(name, scale, *window),
                                    step_slice(name, shift, *window), device)(value)

    handle = model.decoder.register_forward_pre_hook(feed, with_kwargs=True)
    try:
        with patched(model, {**fns, **{n: cut(n, *c) for n, c in coeffs.items()}}):
            yield
    finally:
        handle.remove()


def _finish(tokens: torch.Tensor, max_len: int, pad_id: int) -> torch.Tensor:
    """[b, n] generated tokens (bos excluded) -> [b, max_len], right-padded with pad_id."""
    out = torch.full((tokens.shape[0], max_len), pad_id, dtype=torch.int64, device=tokens.device)
    out[:, :tokens.shape[1]] = tokens
    return out


@torch.no_grad()
def greedy_decode(model: Transformer, src: object, max_len: int, patch: Mapping | None = None,
                  capture: bool = False
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Argmax decoding: src [b, s] -> tokens [b, max_len] (and per-step captures)."""
    src_np = _check(model, src, max_len)
    c = model.config
    device = model_device(model)
    recorder = _Steps(model, capture)
    with full_precision(), mode(model, False), decode_patch(model, patch, src_np, max_len):
        src_t = as_ids(src_np, device)
        src_mask = model.source_mask(src_t)                                     # [b, s]
        memory = model.encode(src_t, src_mask)                                 # [b, s, m]
        b = src_t.shape[0]
        cache = EncoderDecoderCache()
        tokens = torch.full((b, 1), c.bos_id, dtype=torch.int64, device=device)  # [b, 1]
        unfinished = torch.ones(b, dtype=torch.int64, device=device)
        for _ in range(max_len):
            step = tokens[:, -1:]
            logits = recorder.run(lambda step=step: model.decode(step, memory, src_mask, cache))
            next_tokens = torch.argmax(logits[:, -1].float(), dim=-1)          # [b]
            next_tokens = next_tokens * unfinished + c.pad_id * (1 - unfinished)
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
            unfinished = unfinished & (next_tokens != c.eos_id).long()
            if unfinished.max() == 0:
                break
    out = _finish(tokens[:, 1:], max_len, c.pad_id)
    return (out, recorder.stacked()) if capture else out


@dataclasses.dataclass
class BeamState:
    """The search's state between steps, the fields of jax_model.beam_search.BeamState
    (b batch, K beams, L = 1 + max_len: torch keeps the start token in column 0)."""

    running: torch.Tensor          # [b, K, L] running beams' tokens
    running_scores: torch.Tensor   # [b, K] their summed log-probs (beams 1.. start at -1e9)
    finished_seqs: torch.Tensor    # [b, K, L] finished hypotheses
    finished_scores: torch.Tensor  # [b, K] their length-penalised scores (-1e9: empty slot)
    is_finished: torch.Tensor      # [b, K] which finished slots hold a hypothesis
    can_improve: torch.Tensor      # [b, 1] HF's is_early_stop_heuristic_unsatisfied


def _gather_beams(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [b, beams, ...], idx [b, k] -> [b, k, ...] (HF `_gather_beams`)."""
    while idx.ndim < x.ndim:
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(x, idx, dim=1)


@torch.no_grad()
def beam_search(model: Transformer, src: object, beam_size: int, max_len: int,
                alpha: float = 1.0, early_stopping: bool | str = False, capture: bool = False,
                patch: Mapping | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Beam search as HF `generate(num_beams=beam_size, length_penalty=alpha, ...)`.

    Each step keeps the top 2*beams continuations of all beams by summed log-probability;
    those ending in eos (or reaching max_len) become finished hypotheses scored
    sum / generated_len**alpha (generated_len counts eos), the rest continue as the running
    beams (ranked by the raw sum).  Only beam 0's continuations count on the first step (the
    others start at -1e9).  `early_stopping`: True stops a sentence once `beams` hypotheses
    finished; False stops when the best running beam, at its current length, cannot beat the
    worst finished one; "never" uses the longest possible length for that bound when alpha > 0.
    At max_len every running continuation counts as finished, so a row always has an answer.
    """
    src_np = _check(model, src, max_len, beam_size, early_stopping)
    if (isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer))
            or not np.isfinite(alpha)):
        raise ValueError(f"alpha={alpha!r} is invalid: expected a finite real number (the "
                         f"length penalty; negative favours short hypotheses, as in HF)")
    c = model.config
    device = model_device(model)
    recorder = _Steps(model, capture)
    n = beam_size
    keep = 2 * n                 # (one eos id + 1) * beams candidates per step
    max_length = 1 + max_len     # HF counts the decoder start token
    prompt = 1
    with full_precision(), mode(model, False), decode_patch(model, patch, src_np, max_len, n):
        src_t = as_ids(src_np, device)                                         # [b, s]
        src_mask = model.source_mask(src_t).repeat_interleave(n, dim=0)      # [b*n, s]
        # encode the b sources once (as HF generate does), then one copy per beam
        memory = model.encode(src_t).repeat_interleave(n, dim=0)               # [b*n, s, m]
        b = src_np.shape[0]
        cache = EncoderDecoderCache()
        running = torch.full((b, n, max_length), c.pad_id, dtype=torch.int64, device=device)
        running[:, :, 0] = c.bos_id
        running_scores = torch.zeros((b, n), dtype=torch.float, device=device)
        running_scores[:, 1:] = NEG
        state = BeamState(
            running=running, running_scores=running_scores, finished_seqs=running.clone(),
            finished_scores=torch.full((b, n), NEG, dtype=torch.float, device=device),
            is_finished=torch.zeros((b, n), dtype=torch.bool, device=device),
            can_improve=torch.ones((b, 1), dtype=torch.bool, device=device))
        hits = torch.zeros((b, n), dtype=torch.bool, device=device)
        running_idx = torch.full((b, n, max_length - prompt), -1, dtype=torch.int32, device=device)
        indices = running_idx.clone()
        top_n = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(keep - n, dtype=torch.bool)]
                          ).to(device)
        cur_len = prompt
        while True:
            step = state.running[:, :, cur_len - 1].reshape(b * n, 1)          # [b*n, 1]
            logits = recorder.run(lambda step=step: model.decode(step, memory, src_mask, cache))
            log_probs = torch.log_softmax(logits[:, -1].float(), dim=-1)       # [b*n, v]
            v = log_probs.shape[-1]
            log_probs = log_probs.reshape(b, n, v) + state.running_scores[:, :, None]
            log_probs = log_probs.reshape(b, n * v)                            # [b, n*v]

            # top-k continuations over all beams  --> [b, 2n]
            top_log_probs, top_flat = torch.topk(log_probs, k=keep)
            top_beam = top_flat // v
            top_ids = top_flat % v
            top_seqs = _gather_beams(state.running, top_beam)                  # [b, 2n, L]
            top_seqs[:, :, cur_len] = top_ids
            top_idx = _gather_beams(running_idx, top_beam)
            offset = torch.arange(b, device=device).view(-1, 1) * n
            top_idx[:, :, cur_len - prompt] = (top_beam + offset).to(top_idx.dtype)
            hits = (top_ids == c.eos_id) | (cur_len + 1 >= max_length)         # [b, 2n]

            # running beams for the next step: the best continuations that did not finish
            top_running = top_log_probs + hits.to(torch.float32) * NEG
            nxt = torch.topk(top_running, k=n)[1]                              # [b, n]
            state.running = _gather_beams(top_seqs, nxt)
            state.running_scores = _gather_beams(top_running, nxt)
            running_idx = _gather_beams(top_idx, nxt)

            # finished hypotheses: merge the new ones (among the top n) by length-penalised score
            just_finished = hits & top_n[None, :]
            candidate = top_log_probs / ((cur_len + 1 - prompt) ** alpha)
            full = torch.all(state.is_finished, dim=-1, keepdim=True) & (early_stopping is True)
            candidate += full.to(torch.float32) * NEG
            candidate += (~state.can_improve).to(torch.float32) * NEG
            candidate += (~just_finished) * NEG
            merged_scores = torch.cat((state.finished_scores, candidate), dim=1)  # [b, 3n]
            best = torch.topk(merged_scores, k=n)[1]
            state.finished_seqs = _gather_beams(
                torch.cat((state.finished_seqs, top_seqs), dim=1), best)
            state.finished_scores = _gather_beams(merged_scores, best)
            indices = _gather_beams(torch.cat((indices, top_idx), dim=1), best)
            state.is_finished = _gather_beams(
                torch.cat((state.is_finished, just_finished), dim=1), best)

            cache.reorder_cache(running_idx[..., cur_len - prompt].reshape(b * n).long())
            cur_len += 1

            # can a running beam still beat the worst finished hypothesis?
            if early_stopping == "never" and alpha > 0.0:
                best_len = max_length - prompt
            else:
                best_len = cur_len - prompt
            best_running = state.running_scores[:, :1] / (best_len ** alpha)
            worst = torch.where(state.is_finished,
                                torch.min(state.finished_scores, dim=1, keepdim=True)[0], NEG)
            state.can_improve = state.can_improve & torch.any(best_running > worst, dim=-1,
                                                              keepdim=True)
            keep_going = (torch.any(state.can_improve)
                          & ~(torch.all(state.is_finished) & (early_stopping is True))
                          & ~torch.all(hits))
            if not keep_going:
                break

        generated = int(((indices[:, 0] + 1).bool()).sum(dim=1).max())
        tokens = state.finished_seqs[:, 0, prompt:prompt + generated]        # [b, generated]
    out = _finish(tokens, max_len, c.pad_id)
    return (out, recorder.stacked()) if capture else out

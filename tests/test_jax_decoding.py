"""jax_model decoding: the cache, greedy search, and beam search against HF's own beam logic.

The beam-search reference is transformers' real `GenerationMixin._beam_search`, driven by a
small host object whose "model" is this Flax model's full (uncached) forward, so every HF
detail (top-2K, -1e9 offsets, length penalty, early-stop heuristic, early_stopping modes) is
checked token for token without any torch model.  The weights are chosen (untied output, eos
column scaled up) so that rows end at different steps and beams beat greedy on some rows.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import jax_model as jm  # noqa: E402
import spec  # noqa: E402
from jax_model.decoding import decode_step, start_cache  # noqa: E402

B, S, L = 4, 7, 8      # batch, source length, tokens to generate
ROWS = 16              # the reference forward always runs 16 rows (B * largest beam)
BASE = dict(src_vocab_size=37, tgt_vocab_size=37, d_model=24, num_heads=3, d_ff=40,
            num_encoder_layers=1, num_decoder_layers=2, max_len=12)
SEARCH = spec.TransformerConfig(**BASE, share_embeddings=True, tie_output=False,
                                output_bias=True)
PRE = spec.TransformerConfig(**{**BASE, "tgt_vocab_size": 43}, norm_position="pre",
                             positional_layout="split", share_embeddings=False,
                             activation="gelu", output_bias=True)


def eos_in(tokens: np.ndarray, eos: int) -> list[int]:
    """Position of each row's eos, -1 when none."""
    return [list(row).index(eos) if eos in row else -1 for row in tokens]


@pytest.fixture(scope="module")
def model():
    """Weights and sources with varied endings: eos logit made position dependent."""
    config = SEARCH
    rng = np.random.default_rng(4)
    flat = jm.to_canonical(jm.init(config, 4))
    for name in flat:
        flat[name] = (flat[name] + rng.normal(0.0, 0.1, flat[name].shape)).astype(np.float32)
    flat["output/bias"] = rng.normal(0.0, 1.0, config.tgt_vocab_size).astype(np.float32)
    flat["output/bias"][config.eos_id] = 0.0
    flat["output/kernel"][:, config.eos_id] *= 6.0
    src = rng.integers(3, config.src_vocab_size, (B, S))
    src[1, 3], src[1, 4:] = config.eos_id, config.pad_id
    return jm.from_canonical(flat, config), config, src


def full_logits(params, config, src_rows: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """Uncached forward: logits `[n, len, v]` for `n <= 16` decoder prefixes (one compile)."""
    n, length = prefixes.shape
    tgt = np.full((ROWS, L), config.pad_id)
    tgt[:n, :length] = prefixes
    src = np.full((ROWS, src_rows.shape[1]), config.eos_id)
    src[:n] = src_rows
    logits, _ = jm.forward(params, config, src, tgt, capture=False)
    return np.asarray(logits)[:n, :length]


def naive_greedy(params, config, src: np.ndarray) -> np.ndarray:
    """argmax over full forwards, HF style: finished rows emit pad, stop when all finished."""
    prefix = np.full((src.shape[0], 1), config.bos_id)
    out = np.full((src.shape[0], L), config.pad_id)
    finished = np.zeros(src.shape[0], bool)
    for i in range(L):
        token = full_logits(params, config, src, prefix)[:, -1].argmax(-1)
        token = np.where(finished, config.pad_id, token)
        out[:, i] = token
        finished |= token == config.eos_id
        if finished.all():
            break
        prefix = np.concatenate([prefix, token[:, None]], axis=1)
    return out


def hf_beam_search(params, config, src: np.ndarray, beams: int, alpha: float,
                   early_stopping) -> np.ndarray:
    """transformers' own `_beam_search` with this model's logits, as generate() calls it."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import GenerationConfig
    from transformers.generation.logits_process import LogitsProcessorList
    from transformers.generation.stopping_criteria import (
        EosTokenCriteria,
        MaxLengthCriteria,
        StoppingCriteriaList,
    )
    from transformers.generation.utils import GenerationMixin

    class Host(GenerationMixin):
        """Just enough of a model for `_beam_search` (no cache: full prefixes each step)."""

        config = SimpleNamespace(is_encoder_decoder=False)
        src_rows = np.repeat(src, beams, axis=0)  # HF expands row b to rows b*K .. b*K+K-1

        def _prefill(self, input_ids, generation_config, model_kwargs, is_first_iteration=True):
            return self(input_ids)

        def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, **_):
            return {"input_ids": input_ids}

        def _update_model_kwargs_for_generation(self, outputs, model_kwargs, **_):
            return model_kwargs

        def __call__(self, input_ids, return_dict=True):
            logits = full_logits(params, config, self.src_rows, input_ids.numpy())
            return SimpleNamespace(logits=torch.from_numpy(logits.copy()))

    generation = GenerationConfig(
        num_beams=beams, num_return_sequences=1, length_penalty=alpha,
        early_stopping=early_stopping, max_length=1 + L, do_sample=False,
        pad_token_id=config.pad_id, eos_token_id=config.eos_id)
    generation._pad_token_tensor = torch.tensor(config.pad_id)
    generation._eos_token_tensor = torch.tensor([config.eos_id])
    start = torch.full((src.shape[0] * beams, 1), config.bos_id)
    criteria = StoppingCriteriaList([MaxLengthCriteria(1 + L), EosTokenCriteria(config.eos_id)])
    sequences = GenerationMixin._beam_search(
        Host(), start, LogitsProcessorList(), criteria, generation, synced_gpus=False,
        use_cache=False).numpy()[:, 1:]
    # HF fills unused slots with eos when pad_id is 0 (`pad or eos`); the contract says pad
    out = np.full((src.shape[0], L), config.pad_id)
    for row, tokens in enumerate(sequences):
        for i, token in enumerate(tokens):
            out[row, i] = token
            if token == config.eos_id:
                break
    return out


# -- the cache -----------------------------------------------------------------------------

@pytest.mark.parametrize("config", [SEARCH, PRE], ids=["post_shared", "pre_split_gelu"])
def test_cached_steps_equal_the_full_causal_forward(config):
    rng = np.random.default_rng(0)
    flat = {n: (v + rng.normal(0.0, 0.1, v.shape)).astype(np.float32)
            for n, v in jm.to_canonical(jm.init(config, 0)).items()}
    params = jm.from_canonical(flat, config)
    src = rng.integers(3, config.src_vocab_size, (B, S))
    src[2, 5:] = config.pad_id
    tgt = rng.integers(3, config.tgt_vocab_size, (B, L))
    tgt[:, 0] = config.bos_id
    expected, inter = jm.forward(params, config, src, tgt)
    expected = np.asarray(expected)
    model = jm.Transformer(config)
    with jax.default_matmul_precision("highest"):
        encoded = jnp.asarray(inter["encoder/output"])
        cache = jax.jit(lambda p, e, s: start_cache(model, p, e, s, config.max_len))(
            params, encoded, src)
        step = jax.jit(lambda p, c, e, s, t: decode_step(model, p, c, e, s, t, False)[:2])
        for i in range(L):
            logits, cache = step(params, cache, encoded, src, tgt[:, i])
            diff = np.abs(np.asarray(logits) - expected[:, i]).max()
            assert diff / max(1.0, np.abs(expected[:, i]).max()) <= 1e-5, (i, diff)
    # the cross-attention keys were projected once, from the encoder output
    cached = cache["decoder"]["layer_1"]["cross_attn"]["cached_key"]
    np.testing.assert_allclose(np.asarray(cached), inter["decoder/layer_1/cross_attn/k"],
                               rtol=0, atol=1e-5)


# -- greedy --------------------------------------------------------------------------------

def test_greedy_equals_argmax_over_full_forwards(model):
    params, config, src = model
    tokens = jm.greedy_decode(params, config, src, L)
    assert tokens.shape == (B, L) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, naive_greedy(params, config, src))
    ends = eos_in(tokens, config.eos_id)
    assert len(set(ends)) >= 3 and any(0 < e < L - 1 for e in ends), ends  # varied endings
    for row, end in enumerate(ends):
        if end >= 0:
            assert (tokens[row, end + 1:] == config.pad_id).all()


def test_greedy_stops_early_with_pad_after_every_row():
    """When all rows finish before max_len the remaining columns are pad."""
    config = SEARCH
    flat = jm.to_canonical(jm.init(config, 0))
    flat["output/bias"][config.eos_id] = 100.0
    params = jm.from_canonical(flat, config)
    src = np.full((2, 3), 5)
    tokens = jm.greedy_decode(params, config, src, L)
    expected = np.full((2, L), config.pad_id)
    expected[:, 0] = config.eos_id
    np.testing.assert_array_equal(tokens, expected)


# -- beam search ------------------------------------------------------------------------------

def test_beam_size_one_is_greedy(model):
    params, config, src = model
    np.testing.assert_array_equal(jm.beam_search(params, config, src, 1, L),
                                  jm.greedy_decode(params, config, src, L))


@pytest.mark.parametrize("beams, alpha, early_stopping", [
    (3, 1.0, False),
    (2, 0.5, True),
    (4, 2.0, "never"),
    pytest.param(3, 0.0, False, marks=pytest.mark.slow),
    pytest.param(3, -1.0, "never", marks=pytest.mark.slow),
    pytest.param(4, 1.0, True, marks=pytest.mark.slow),
])
def test_beam_search_matches_hf_beam_search(model, beams, alpha, early_stopping):
    params, config, src = model
    expected = hf_beam_search(params, config, src, beams, alpha, early_stopping)
    tokens = jm.beam_search(params, config, src, beams, L, alpha=alpha,
                            early_stopping=early_stopping)
    assert tokens.shape == (B, L) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, expected)


def test_fixture_makes_beams_differ_from_greedy(model):
    """Guards the fixture: with these weights search matters, so the HF comparison above
    exercises beams that overtake the greedy path."""
    params, config, src = model
    beam = jm.beam_search(params, config, src, 3, L, alpha=1.0)
    greedy = jm.greedy_decode(params, config, src, L)
    assert (beam != greedy).any(axis=1).sum() >= 1


# -- capture during decoding --------------------------------------------------------------------

def test_greedy_capture_records_each_step(model):
    params, config, src = model
    tokens, inter = jm.greedy_decode(params, config, src, L, capture=True)
    np.testing.assert_array_equal(tokens, jm.greedy_decode(params, config, src, L))
    ends = eos_in(tokens, config.eos_id)
    steps = L if -1 in ends else max(ends) + 1
    h = config.num_heads
    # the same step intermediates as the full forward on the generated prefix
    prefix = np.concatenate([np.full((B, 1), config.bos_id), tokens[:, :L - 1]], axis=1)
    _, full = jm.forward(params, config, src, prefix)
    for i in range(config.num_decoder_layers):
        self_w = inter[f"decoder/layer_{i}/self_attn/weights"]
        cross_w = inter[f"decoder/layer_{i}/cross_attn/weights"]
        assert self_w.shape == (steps, B, h, 1, steps)
        assert cross_w.shape == (steps, B, h, 1, S)
        for t in range(steps):
            assert (self_w[t, :, :, 0, t + 1:] == 0.0).all()      # future slots
            np.testing.assert_allclose(self_w[t, :, :, 0, : t + 1],
                                       full[f"decoder/layer_{i}/self_attn/weights"][:, :, t, : t + 1],
                                       rtol=0, atol=1e-5)
            np.testing.assert_allclose(cross_w[t, :, :, 0],
                                       full[f"decoder/layer_{i}/cross_attn/weights"][:, :, t],
                                       rtol=0, atol=1e-5)
    assert inter["logits"].shape == (steps, B, 1, config.tgt_vocab_size)
    assert not any(n.endswith(("_attn/k", "_attn/v")) for n in inter)
    assert all(n.startswith("decoder/") or n == "logits" for n in inter)


def test_beam_capture_has_a_row_per_beam(model):
    params, config, src = model
    tokens, inter = jm.beam_search(params, config, src, 2, L, capture=True)
    np.testing.assert_array_equal(tokens, jm.beam_search(params, config, src, 2, L))
    w = inter["decoder/layer_0/self_attn/weights"]
    steps = w.shape[0]
    assert 1 <= steps <= L
    assert w.shape == (steps, B * 2, config.num_heads, 1, steps)
    future = np.triu(np.ones((steps, steps), bool), k=1)[:, None, None, None, :]  # key > step
    assert (w[np.broadcast_to(future, w.shape)] == 0.0).all()
    assert inter["decoder/layer_1/cross_attn/weights"].shape == (steps, B * 2, config.num_heads,
                                                                   1, S)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-6)


# -- arguments -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(beam_size=0), "beam_size must be a positive integer, got 0"),
    (dict(beam_size=2.0), "beam_size must be a positive integer"),
    (dict(beam_size=True), "beam_size must be a positive integer"),
    (dict(max_len=0), "max_len must be a positive integer, got 0"),
    (dict(max_len=13), "max_len=13 is over the config's max_len=12"),
    (dict(alpha="1"), "alpha must be a finite real number"),
    (dict(early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
    (dict(src=np.array([[5, 40]])), "src holds token id 40"),
    (dict(src=np.array([5, 6])), "src must be a 2-D"),
])
def test_beam_search_rejects_bad_arguments(model, kwargs, message):
    params, config, src = model
    args = dict(src=src, beam_size=2, max_len=L) | kwargs
    with pytest.raises(ValueError, match=message):
        jm.beam_search(params, config, **args)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_len=-1), "max_len must be a positive integer"),
    (dict(max_len=4.0), "max_len must be a positive integer"),
    (dict(src=np.ones((2, 3), np.float32)), "src must hold integer"),
])
def test_greedy_rejects_bad_arguments(model, kwargs, message):
    params, config, src = model
    with pytest.raises(ValueError, match=message):
        jm.greedy_decode(params, config, **(dict(src=src, max_len=L) | kwargs))

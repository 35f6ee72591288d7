"""torch_model decoding: the KV cache against the full causal forward, greedy against a naive
argmax loop, beam search against a per-sentence reference written in the legacy HF style
(`BeamHypotheses`), and per-step captures.

Same sizes as test_torch_model.py: d_model 24, 3 heads, d_ff 40, 2 + 3 layers, vocab 37, source 7.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import normalised

import spec
import torch_model as tm
from torch_model.decoding import beam_search, greedy_decode

S = 7
BASE = dict(src_vocab_size=37, tgt_vocab_size=37, d_model=24, num_heads=3, d_ff=40,
            num_encoder_layers=2, num_decoder_layers=3, max_len=16, dropout_rate=0.0)
CONFIGS = {
    "post_interleaved_shared": spec.TransformerConfig(**BASE, output_bias=True),
    "pre_split_untied_bias": spec.TransformerConfig(
        **{**BASE, "tgt_vocab_size": 43}, norm_position="pre", positional_layout="split",
        share_embeddings=False, tie_output=False, output_bias=True, activation="gelu"),
}


# (seed, weight std, eos bias boost) per config, chosen so that greedy rows end with eos at
# different steps, and some never do: random models otherwise repeat one token or stop at once
ENDING = {"post_interleaved_shared": (1, 0.1, 1.5), "pre_split_untied_bias": (0, 0.15, 2.0)}


def make_model(config: spec.TransformerConfig, seed: int = 0, eos_boost: float = 0.0,
               std: float = 0.4) -> tm.Transformer:
    """Random canonical weights; `eos_boost` raises eos's output bias so hypotheses end at
    varied steps (both configs have `output/bias`)."""
    rng = np.random.default_rng(seed)
    flat = {n: rng.normal(0.0, std if len(s) == 2 else 0.1, s).astype(np.float32)
            for n, s in spec.param_shapes(config).items()}
    for n in flat:
        if n.endswith("/scale"):
            flat[n] += 1.0
    model = tm.Transformer(config).load_canonical(flat)
    with torch.no_grad():
        model.output.bias[config.eos_id] += eos_boost
    return model


def ending_model(name: str) -> tm.Transformer:
    seed, std, boost = ENDING[name]
    return make_model(CONFIGS[name], seed=seed, eos_boost=boost, std=std)


def sources(config: spec.TransformerConfig, b: int = 3, seed: int = 0) -> np.ndarray:
    """[b, 7] sources ending in eos, row 1 padded after 4 tokens."""
    rng = np.random.default_rng(seed)
    src = rng.integers(3, config.src_vocab_size, (b, S))
    src[:, -1] = config.eos_id
    src[1, 3], src[1, 4:] = config.eos_id, config.pad_id
    return src




# -- the cache --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("first", [1, 3])
def test_cached_steps_equal_full_causal_forward(name, first):
    """Feed `first` tokens at once (multi-token first step: the causal mask under a cache), then
    one per step; every step's logits equal the full forward's at the same positions."""
    config = CONFIGS[name]
    model = make_model(config)
    src = sources(config)
    rng = np.random.default_rng(1)
    tgt = rng.integers(3, config.tgt_vocab_size, (3, 6))
    tgt[:, 0] = config.bos_id
    full, _ = tm.forward(model, src, tgt, capture=False)
    src_t, tgt_t = torch.as_tensor(src), torch.as_tensor(tgt)
    cache = tm.EncoderDecoderCache()
    with torch.no_grad():
        mask = model.source_mask(src_t)
        memory = model.encode(src_t, mask)
        pieces = [model.decode(tgt_t[:, :first], memory, mask, cache)]
        for t in range(first, tgt.shape[1]):
            assert cache.get_seq_length() == t
            pieces.append(model.decode(tgt_t[:, t:t + 1], memory, mask, cache))
    stepped = torch.cat(pieces, dim=1)
    # float32, summed in a different order (one query row at a time): round-off only
    assert normalised(stepped.numpy(), full.detach().numpy()) < 1e-5
    assert all(cache.is_updated[i] for i in range(config.num_decoder_layers))
    assert cache.cross_attention_cache.layers[0].keys.shape == (3, 3, S, 8)  # computed once
    assert cache.self_attention_cache.layers[2].keys.shape == (3, 3, 6, 8)


def test_transformers_cache_passes_straight_through():
    """hf_bridge hands HF's own EncoderDecoderCache to these modules: same logits as ours."""
    cache_utils = pytest.importorskip("transformers.cache_utils")
    config = CONFIGS["pre_split_untied_bias"]
    model = make_model(config)
    src_t = torch.as_tensor(sources(config))
    tgt_t = torch.tensor([[1, 5, 9, 4]] * 3)
    ours, theirs = tm.EncoderDecoderCache(), cache_utils.EncoderDecoderCache(
        cache_utils.DynamicCache(), cache_utils.DynamicCache())
    with torch.no_grad():
        mask = model.source_mask(src_t)
        memory = model.encode(src_t, mask)
        for t in range(tgt_t.shape[1]):
            a = model.decode(tgt_t[:, t:t + 1], memory, mask, ours)
            b = model.decode(tgt_t[:, t:t + 1], memory, mask, theirs)
            assert torch.equal(a, b)
    assert theirs.get_seq_length() == 4 and all(theirs.is_updated.values())


def test_cache_reorder_follows_beams():
    config = CONFIGS["post_interleaved_shared"]
    cache = tm.EncoderDecoderCache()
    keys = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 8)
    cache.self_attention_cache.update(keys, keys + 10, 0)
    cache.cross_attention_cache.update(keys, keys, 0)
    cache.reorder_cache(torch.tensor([2, 2, 0, 3]))
    assert cache.self_attention_cache.layers[0].keys[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0, 3.0]
    assert cache.self_attention_cache.layers[0].values[:, 0, 0, 0].tolist() == [12.0, 12.0, 10.0, 13.0]
    assert cache.cross_attention_cache.layers[0].keys[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0, 3.0]
    assert cache.get_seq_length() == 2 and config.num_heads == 3


# -- greedy -----------------------------------------------------------------------------------
def naive_greedy(model, src, max_len):
    """Full (uncached) forwards, one more token each time; pad after eos."""
    c = model.config
    tokens = np.full((src.shape[0], 1), c.bos_id)
    done = np.zeros(src.shape[0], bool)
    for _ in range(max_len):
        logits, _ = tm.forward(model, src, tokens, capture=False)
        nxt = logits[:, -1].argmax(-1).numpy()
        nxt = np.where(done, c.pad_id, nxt)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        done |= nxt == c.eos_id
    return tokens[:, 1:]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_naive_argmax_loop(name):
    config = CONFIGS[name]
    model = ending_model(name)
    src = sources(config, b=4)
    got = greedy_decode(model, src, 9)
    ref = naive_greedy(model, src, 9)
    assert got.dtype == torch.int64 and got.shape == (4, 9)
    np.testing.assert_array_equal(got.numpy(), ref)
    ends = {int(np.argmax(row == config.eos_id)) if (row == config.eos_id).any() else 9
            for row in got.numpy()}
    assert len(ends) >= 2 and min(ends) > 0  # rows stop at different steps, all after step 0


def test_greedy_pads_after_eos_and_stops_early():
    config = CONFIGS["post_interleaved_shared"]
    model = make_model(config, eos_boost=30.0)  # eos always wins: every row ends at once
    got = greedy_decode(model, sources(config), 6)
    assert got[:, 0].tolist() == [config.eos_id] * 3
    assert (got[:, 1:] == config.pad_id).all()


# -- beam search ------------------------------------------------------------------------------
def reference_beam(model, src_row, n, max_len, alpha, early_stopping):
    """One sentence, full forwards, in the style of the legacy HF `BeamSearchScorer` /
    `BeamHypotheses`: keep the best `n` finished hypotheses scored sum / len**alpha."""
    c = model.config
    max_length = 1 + max_len
    beams = [(0.0, [c.bos_id])] + [(-1e9, [c.bos_id])] * (n - 1)
    hyps: list[tuple[float, list[int]]] = []
    for cur_len in range(1, max_length):
        tokens = np.array([b[1] for b in beams])
        logits, _ = tm.forward(model, np.repeat(src_row[None], n, 0), tokens, capture=False)
        logp = torch.log_softmax(logits[:, -1].detach(), -1).double().numpy()  # [n, v]
        total = np.array([b[0] for b in beams])[:, None] + logp
        order = np.argsort(-total, axis=None, kind="stable")[: 2 * n]
        running = []
        for rank, flat in enumerate(order):
            beam, tok = divmod(int(flat), logp.shape[1])
            seq, score = beams[beam][1] + [tok], float(total[beam, tok])
            if tok == c.eos_id or cur_len + 1 >= max_length:
                full = len(hyps) == n and early_stopping is True
                if rank < n and not full:
                    hyps = sorted(hyps + [(score / cur_len ** alpha, seq)], key=lambda h: -h[0])[:n]
            elif len(running) < n:
                running.append((score, seq))
        if cur_len + 1 >= max_length:
            break
        beams = running
        if len(hyps) == n:
            if early_stopping is True:
                break
            length = max_len if early_stopping == "never" and alpha > 0 else cur_len
            if beams[0][0] / length ** alpha <= min(h[0] for h in hyps):
                break
    best = hyps[0][1][1:]
    return best + [c.pad_id] * (max_len - len(best))


@pytest.mark.parametrize("n, alpha, early_stopping", [
    (3, 1.0, False), (2, 0.6, True), (4, 1.5, "never"), (3, 0.0, False), (3, -0.5, "never")])
def test_beam_search_equals_reference(n, alpha, early_stopping):
    config = CONFIGS["pre_split_untied_bias"]
    model = ending_model("pre_split_untied_bias")
    src = sources(config)
    got = beam_search(model, src, n, 7, alpha=alpha, early_stopping=early_stopping)
    assert got.shape == (3, 7) and got.dtype == torch.int64
    ref = [reference_beam(model, src[r], n, 7, alpha, early_stopping) for r in range(3)]
    np.testing.assert_array_equal(got.numpy(), np.array(ref))


def test_beam_outputs_pad_after_eos():
    config = CONFIGS["pre_split_untied_bias"]
    model = ending_model("pre_split_untied_bias")
    got = beam_search(model, sources(config, b=4), 3, 8, alpha=0.0).numpy()
    for row in got:
        eos = np.flatnonzero(row == config.eos_id)
        if len(eos):
            assert (row[eos[0] + 1:] == config.pad_id).all() and (row[:eos[0]] != config.pad_id).all()
    assert (got[:, :-1] == config.eos_id).any()  # some hypothesis ended before max_len


@pytest.mark.parametrize("name", list(CONFIGS))
def test_beam_one_equals_greedy(name):
    config = CONFIGS[name]
    model = ending_model(name)
    src = sources(config, b=4)
    assert torch.equal(beam_search(model, src, 1, 9), greedy_decode(model, src, 9))


# -- captures ---------------------------------------------------------------------------------
def test_greedy_capture_steps_match_the_full_forward():
    config = CONFIGS["post_interleaved_shared"]
    model = make_model(config)
    src = sources(config)
    tokens, inter = greedy_decode(model, src, 5, capture=True)
    assert not tm.has_hooks(model)
    steps = 5 if (tokens != config.eos_id).all() else None
    assert steps == 5  # no early stop with these weights, so every step ran
    h = config.num_heads
    for i in range(config.num_decoder_layers):
        w = inter[f"decoder/layer_{i}/self_attn/weights"]
        assert w.shape == (5, 3, h, 1, 5)
        assert inter[f"decoder/layer_{i}/cross_attn/weights"].shape == (5, 3, h, 1, S)
        for step in range(5):
            assert np.all(w[step, ..., step + 1:] == 0.0)  # future positions
    assert inter["logits"].shape == (5, 3, 1, 37)
    assert inter["decoder/layer_1/self_attn/k"].shape == (5, 3, h, 5, 8)
    # stacked per-step rows are the rows of the full causal forward on the same inputs
    tgt = np.concatenate([np.full((3, 1), config.bos_id), tokens.numpy()[:, :-1]], axis=1)
    _, full = tm.forward(model, src, tgt)
    for name in ("decoder/layer_2/self_attn/weights", "decoder/layer_0/cross_attn/weights"):
        stepped = inter[name][:, :, :, 0].transpose(1, 2, 0, 3)          # [b, h, steps, lk]
        assert normalised(stepped, full[name]) < 1e-5
    assert normalised(inter["logits"][:, :, 0].transpose(1, 0, 2), full["logits"]) < 1e-5


def test_beam_capture_shapes():
    config = CONFIGS["pre_split_untied_bias"]
    model = make_model(config)
    tokens, inter = beam_search(model, sources(config, b=2), 3, 4, capture=True)
    steps = inter["logits"].shape[0]
    assert 1 <= steps <= 4 and tokens.shape == (2, 4)
    assert inter["decoder/layer_0/self_attn/weights"].shape == (steps, 6, 3, 1, steps)
    assert inter["decoder/layer_2/cross_attn/weights"].shape == (steps, 6, 3, 1, S)
    np.testing.assert_allclose(inter["decoder/layer_1/cross_attn/weights"].sum(-1), 1.0, rtol=1e-6)
    assert beam_search(model, sources(config, b=2), 3, 4, capture=False).shape == (2, 4)


# -- arguments --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(max_len=0), "max_len=0"),
    (dict(max_len=17), "max_len=17 is over"),
    (dict(max_len=3, beam_size=0), "beam_size=0"),
    (dict(max_len=3, early_stopping="sometimes"), "early_stopping='sometimes'"),
])
def test_bad_decoding_arguments(kwargs, match):
    config = CONFIGS["post_interleaved_shared"]
    model = tm.Transformer(config)
    with pytest.raises(ValueError, match=match):
        beam_search(model, sources(config), kwargs.pop("beam_size", 2), **kwargs)


def test_bad_source_is_rejected():
    model = tm.Transformer(CONFIGS["post_interleaved_shared"])
    with pytest.raises(ValueError, match="src holds token id 40"):
        greedy_decode(model, np.array([[3, 40, 2]]), 3)
    with pytest.raises(ValueError, match="src must be a 2-D"):
        beam_search(model, np.array([3, 4, 2]), 2, 3)


def test_decoding_restores_mode():
    config = CONFIGS["post_interleaved_shared"].replace(dropout_rate=0.5)
    model = make_model(config).train()
    a = greedy_decode(model, sources(config), 4)
    b = greedy_decode(model, sources(config), 4)
    assert torch.equal(a, b) and model.training and math.isfinite(float(a.sum()))

"""The contract (docs/architecture.md), tested once against every implementation.

Each test below runs unchanged on the JAX reference, the torch mirror and the HF model: what the
names are, what a causal decoder and a padding mask promise, and that a checkpoint folder opens
with its weights anywhere.  Per-framework details live in each framework's own test file.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import padded_ids, random_flat

import spec

IMPLEMENTATIONS = ("jax", "torch", "hf")
CONFIGS = {
    "post": spec.TransformerConfig.preset("tiny", src_vocab_size=19, tgt_vocab_size=23,
                                          share_embeddings=False, tie_output=False,
                                          output_bias=True),
    "pre": spec.TransformerConfig.preset("tiny", norm_position="pre", activation="gelu"),
}


class Implementation:
    """One implementation seen through the public entry points only."""

    def __init__(self, name: str, flat: dict, config: spec.TransformerConfig) -> None:
        self.name, self.config = name, config
        if name == "jax":
            jax_model = pytest.importorskip("jax_model")
            self.params = jax_model.from_canonical(flat, config)
        elif name == "torch":
            torch_model = pytest.importorskip("torch_model")
            self.model = torch_model.Transformer(config).load_canonical(flat)
        else:
            hf_bridge = pytest.importorskip("hf_bridge")
            cls = hf_bridge.TransformerLabForConditionalGeneration
            self.model = cls.from_canonical(flat, config)

    def run(self, src: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(logits [b, t, v], {canonical name: array}) of one deterministic forward."""
        if self.name == "jax":
            import jax_model
            logits, inter = jax_model.forward(self.params, self.config, src, tgt)
            return np.asarray(logits), inter
        import torch

        import torch_model
        with torch.no_grad():
            if self.name == "torch":
                logits, inter = torch_model.forward(self.model, src, tgt)
                return logits.numpy(), inter
            with torch_model.capture(self.model.transformer) as inter:
                out = self.model(input_ids=torch.as_tensor(src), decoder_input_ids=torch.as_tensor(tgt))
            return out.logits.numpy(), dict(inter)

    def params_out(self) -> dict[str, np.ndarray]:
        if self.name == "jax":
            import jax_model
            return jax_model.to_canonical(self.params)
        return self.model.to_canonical()


@pytest.fixture(params=[(i, c) for i in IMPLEMENTATIONS for c in CONFIGS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def impl(request) -> Implementation:
    name, kind = request.param
    config = CONFIGS[kind]
    return Implementation(name, random_flat(config, seed=3), config)


def test_capture_names_and_shapes_are_the_contracts_in_order(impl):
    src, tgt = padded_ids(impl.config, b=3, s=6, t=4)
    logits, inter = impl.run(src, tgt)
    expected = spec.intermediate_shapes(impl.config, 3, 6, 4)
    assert list(inter) == list(expected)
    assert {n: tuple(v.shape) for n, v in inter.items()} == expected
    np.testing.assert_array_equal(inter["logits"], logits)
    assert all(v.dtype == np.float32 for v in inter.values())


def test_decoder_is_causal(impl):
    """Changing target token j changes nothing at positions before j, anywhere in the decoder."""
    src, tgt = padded_ids(impl.config, b=2, s=6, t=5)
    changed = tgt.copy()
    changed[:, 3] = (changed[:, 3] + 1) % impl.config.tgt_vocab_size
    _, before = impl.run(src, tgt)
    _, after = impl.run(src, changed)
    for name, value in before.items():
        if not (name.startswith("decoder/") or name == "logits"):
            np.testing.assert_array_equal(after[name], value, err_msg=name)
            continue
        axis = 2 if value.ndim == 4 else 1  # [b, h, t, *] or [b, t, *]
        keep = [slice(None)] * value.ndim
        keep[axis] = slice(0, 3)
        if "/self_attn/" in name and name.endswith("/scores"):
            keep[3] = slice(0, 3)  # scores are recorded before the causal mask
        np.testing.assert_allclose(after[name][tuple(keep)], value[tuple(keep)], rtol=0,
                                   atol=1e-6, err_msg=name)
    assert not np.allclose(after["logits"][:, 3:], before["logits"][:, 3:])


def test_padded_source_keys_get_no_weight_and_extra_padding_changes_nothing(impl):
    cfg = impl.config
    src, tgt = padded_ids(cfg, b=4, s=6, t=4)  # row 2 is all pad
    logits, inter = impl.run(src, tgt)
    pad = src == cfg.pad_id                                           # [b, s]
    for name in inter:
        if name.endswith("/weights") and ("encoder/" in name or "cross_attn" in name):
            w = inter[name]                                           # [b, h, q, s]
            real_rows = ~pad.all(axis=1)
            assert (w[real_rows][np.broadcast_to(pad[real_rows, None, None, :],
                                                 w[real_rows].shape)] == 0).all(), name
            np.testing.assert_allclose(w[~real_rows], 1.0 / src.shape[1], rtol=1e-6)
    assert np.isfinite(logits).all()
    wider = np.concatenate([src, np.full((4, 3), cfg.pad_id, src.dtype)], axis=1)
    logits_wide, _ = impl.run(wider, tgt)
    real = ~pad.all(axis=1)  # an all-pad row attends uniformly over more keys
    np.testing.assert_allclose(logits_wide[real], logits[real], rtol=0, atol=1e-5)


def test_checkpoint_folder_opens_with_its_weights(impl, tmp_path):
    flat = impl.params_out()
    spec.save_checkpoint(tmp_path / "ckpt", flat, impl.config)
    loaded, config = spec.load_checkpoint(tmp_path / "ckpt")
    assert config == impl.config
    again = Implementation(impl.name, loaded, config)
    for name, value in again.params_out().items():
        np.testing.assert_array_equal(value, flat[name], err_msg=name)
    src, tgt = padded_ids(config, b=2, s=5, t=3)
    np.testing.assert_array_equal(again.run(src, tgt)[0], impl.run(src, tgt)[0])


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_every_implementation_computes_the_same_logits(kind):
    config = CONFIGS[kind]
    flat = random_flat(config, seed=5)
    src, tgt = padded_ids(config, b=3, s=7, t=5)
    runs = {}
    for name in IMPLEMENTATIONS:
        try:
            runs[name] = Implementation(name, flat, config).run(src, tgt)
        except pytest.skip.Exception:
            continue
    reference = runs.get("jax") or next(iter(runs.values()))
    for name, (logits, inter) in runs.items():
        assert list(inter) == list(reference[1]), name
        for point, value in {**inter, "returned logits": logits}.items():
            ref = reference[1]["logits" if point == "returned logits" else point]
            diff = np.abs(value - ref).max() / max(1.0, np.abs(ref).max())
            assert diff < 1e-5, f"{name} {point}: normalised diff {diff:.2e}"


def test_jax_decode_cache_has_the_documented_layout():
    jax_model = pytest.importorskip("jax_model")
    import jax.numpy as jnp
    from flax import traverse_util

    from jax_model.decoding import cache_layout, start_cache

    config = CONFIGS["post"]
    params = jax_model.from_canonical(random_flat(config), config)
    src, _ = padded_ids(config, b=2, s=6, t=3)
    model = jax_model.Transformer(config)
    memory = model.apply({"params": params}, jnp.asarray(src), method=jax_model.Transformer.encode)
    cache = start_cache(model, params, memory, jnp.asarray(src), 5)
    got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(cache, sep="/").items()}
    assert got == cache_layout(config, 2, 6, 5)


def test_every_einsum_letter_is_in_the_one_axis_legend():
    """jax_model and torch_model write their einsums with spec/names.py's axes only."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    letters = set()
    for folder in ("jax_model", "torch_model"):
        for path in (root / folder).glob("*.py"):
            for spec_string in re.findall(r"einsum\(\s*\"([a-z,\->.]+)\"", path.read_text()):
                letters |= set(spec_string) - set(",->.")
    assert letters, "no einsum found: the pattern above is stale"
    assert letters <= set(spec.names.AXES), sorted(letters - set(spec.names.AXES))

"""The error catalogue: each case is an argv or a call and the message it must give."""

from __future__ import annotations

import json

import numpy as np
import pytest

import spec


# == the HF model (issue 14: loading folders, batch sizes, numpy inputs) =======================
# `TransformerLabForConditionalGeneration.from_pretrained(folder)` opens every folder the project
# writes with its weights (an HF folder, a canonical `spec` checkpoint such as `results_*/final`)
# or refuses it naming the loader to use; weights missing from a checkpoint are an error, not
# transformers' warning over random weights.  Source and target batch sizes must agree; numpy
# ids are accepted (converted), other containers are refused.
def _hf_model_and_flat(seed: int = 0):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_bridge import TransformerLabForConditionalGeneration

    config = spec.TransformerConfig.preset("tiny", max_len=16)
    flat = spec.random_params(config, seed)
    return TransformerLabForConditionalGeneration, config, flat


def test_hf_from_pretrained_opens_a_canonical_folder_with_its_weights(tmp_path):
    model_cls, config, flat = _hf_model_and_flat(1)
    spec.save_checkpoint(tmp_path / "final", flat, config)  # what every trainer writes
    model = model_cls.from_pretrained(tmp_path / "final")
    assert model.config.to_spec() == config and not model.training
    for name, value in model.to_canonical().items():
        np.testing.assert_array_equal(value, flat[name], err_msg=name)
    sdpa = model_cls.from_pretrained(tmp_path / "final", attn_implementation="sdpa",
                                     label_smoothing=0.0)
    assert sdpa.config._attn_implementation == "sdpa" and sdpa.config.label_smoothing == 0.0
    with pytest.raises(ValueError, match=r"does not take \['device_map'\]"):
        model_cls.from_pretrained(tmp_path / "final", device_map="cpu")


def test_hf_from_pretrained_refuses_a_canonical_folder_with_a_missing_weight(tmp_path):
    from safetensors.numpy import load_file, save_file

    model_cls, config, flat = _hf_model_and_flat(2)
    spec.save_checkpoint(tmp_path, flat, config)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["decoder/layer_1/ffn/w2/kernel"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing.*decoder/layer_1/ffn/w2/kernel"):
        model_cls.from_pretrained(tmp_path)


def test_hf_from_pretrained_refuses_an_hf_folder_with_a_missing_weight(tmp_path):
    from safetensors.torch import load_file, save_file

    model_cls, config, flat = _hf_model_and_flat(3)
    model_cls.from_canonical(flat, config).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    key = "transformer.decoder.layer_0.ffn.w1.weight"
    del weights[key]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"does not hold all the weights.*{key}"):
        model_cls.from_pretrained(tmp_path)
    # asking for the report is taking responsibility for it: the model loads, the report names it
    _, info = model_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert key in info["missing_keys"]


def test_hf_from_pretrained_names_the_loader_for_other_folders(tmp_path):
    model_cls, config, flat = _hf_model_and_flat(4)
    run = tmp_path / "results_run"
    spec.save_checkpoint(run / "final", flat, config)
    with pytest.raises(ValueError, match=r"is a run folder: load its final checkpoint.*final"):
        model_cls.from_pretrained(run)
    spec.save_checkpoint(run / "checkpoints" / "step_2", flat, config)  # the torch trainer's
    with pytest.raises(ValueError, match=r"holds checkpoint folders: load one of them.*step_2"):
        model_cls.from_pretrained(run / "checkpoints")
    assert model_cls.from_pretrained(run / "checkpoints" / "step_2").config.to_spec() == config
    orbax = tmp_path / "jax_run" / "checkpoints" / "4"
    orbax.mkdir(parents=True)
    (orbax / "_CHECKPOINT_METADATA").write_text("{}")  # the file orbax writes in each step
    with pytest.raises(ValueError, match=r"orbax \(JAX\) checkpoint.*jax_model\.checkpointing"):
        model_cls.from_pretrained(orbax.parent)
    marian = tmp_path / "marian"
    marian.mkdir()
    (marian / "config.json").write_text(json.dumps({"model_type": "marian", "d_model": 8}))
    with pytest.raises(ValueError, match=r"'marian' model.*hf_bridge\.marian"):
        model_cls.from_pretrained(marian)


def test_hf_forward_refuses_different_batch_sizes_naming_both():
    torch = pytest.importorskip("torch")
    model_cls, config, flat = _hf_model_and_flat(5)
    model = model_cls.from_canonical(flat, config)
    src = torch.full((3, 5), 7)
    tgt = torch.full((2, 4), 8)
    with pytest.raises(ValueError, match=r"batch sizes differ: input_ids has 3 rows, "
                                         r"decoder_input_ids has 2"):
        model(input_ids=src, decoder_input_ids=tgt)
    memory = model.get_encoder()(input_ids=src)
    with pytest.raises(ValueError, match=r"encoder_outputs has 3 rows, decoder_input_ids has 2"):
        model(encoder_outputs=memory, decoder_input_ids=tgt)


def test_hf_forward_takes_numpy_ids_and_refuses_lists():
    torch = pytest.importorskip("torch")
    model_cls, config, flat = _hf_model_and_flat(6)
    model = model_cls.from_canonical(flat, config)
    src = np.array([[5, 6, 7, config.eos_id], [9, config.eos_id, 0, 0]], dtype=np.int32)
    tgt = np.array([[config.bos_id, 5, 6], [config.bos_id, 9, 0]])
    with torch.no_grad():
        from_numpy = model(input_ids=src, decoder_input_ids=tgt, labels=tgt).logits
        from_torch = model(input_ids=torch.as_tensor(src, dtype=torch.long),
                           decoder_input_ids=torch.as_tensor(tgt)).logits
    assert torch.equal(from_numpy, from_torch)
    with pytest.raises(ValueError, match=r"input_ids must be a torch tensor or a numpy array, "
                                         r"got list"):
        model(input_ids=src.tolist(), decoder_input_ids=tgt)
    with pytest.raises(ValueError, match=r"decoder_input_ids must hold integer token ids"):
        model(input_ids=src, decoder_input_ids=tgt.astype(np.float32))


def test_hf_generate_takes_numpy_ids():
    torch = pytest.importorskip("torch")
    model_cls, config, flat = _hf_model_and_flat(7)
    model = model_cls.from_canonical(flat, config)
    src = np.array([[5, 6, 7, config.eos_id], [9, config.eos_id, 0, 0]], dtype=np.int32)
    kwargs = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(src, **kwargs),
                       model.generate(torch.as_tensor(src, dtype=torch.long), **kwargs))
    assert torch.equal(model.generate(input_ids=src, **kwargs), model.generate(src, **kwargs))
    with pytest.raises(ValueError, match=r"inputs must be a torch tensor or a numpy array"):
        model.generate(src.tolist(), **kwargs)

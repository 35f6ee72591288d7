"""Patching, intermediate gradients and patched decoding in every implementation.

Hand-checkable cases run on each adapter (patching a value with itself changes nothing,
replacing every site with a corrupted run's values reproduces the corrupted logits, zero-
ablating the only head leaves the out bias, finite differences); cross-implementation cases
compare each adapter with the torch one at the parity tolerance.
"""

import numpy as np
import pytest
from helpers import padded_ids, random_flat

import spec
from spec import interventions as iv

torch = pytest.importorskip("torch")
import torch_model  # noqa: E402
from torch_model.adapter import TorchAdapter  # noqa: E402

CONFIG = spec.TransformerConfig.preset("tiny")
FLAT = random_flat(CONFIG, seed=3)
SRC, TGT = padded_ids(CONFIG, seed=1, b=3, s=6, t=5)
CORRUPT_SRC, _ = padded_ids(CONFIG, seed=2, b=3, s=6, t=5)
LABELS = np.concatenate([TGT[:, 1:], np.full((3, 1), CONFIG.eos_id)], axis=1)
TOL = 1e-5  # the parity suite's float32 normalised tolerance (parity/tolerances.py)


def normalised(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def make(kind, flat=FLAT, config=CONFIG):
    if kind == "torch":
        return TorchAdapter(torch_model.Transformer(config).load_canonical(flat))
    if kind == "jax":
        pytest.importorskip("jax")
        import jax_model
        from jax_model.adapter import JaxAdapter
        return JaxAdapter(jax_model.from_canonical(flat, config), config)
    pytest.importorskip("transformers")
    import hf_bridge
    from hf_bridge.adapter import HFAdapter
    return HFAdapter(hf_bridge.TransformerLabForConditionalGeneration.from_canonical(flat, config))


KINDS = ["torch", "jax", "hf"]


@pytest.fixture(scope="module", params=KINDS)
def adapter(request):
    return make(request.param)


@pytest.fixture(scope="module")
def clean(adapter):
    return adapter.run(SRC, TGT)


@pytest.fixture(scope="module")
def corrupt(adapter):
    return adapter.run(CORRUPT_SRC, TGT)


def test_patching_a_value_with_itself_changes_nothing(adapter, clean):
    logits, inter = clean
    names = ("encoder/layer_1/self_attn/weights", "decoder/layer_0/cross_attn/context",
             "decoder/layer_1/ffn_norm/input", "logits")
    out, got = adapter.run(SRC, TGT, [iv.patch_from(name, inter[name]) for name in names])
    # exact on CPU; 1e-6 leaves room for a compiler that fuses the patched program differently
    assert normalised(out, logits) < 1e-6
    assert all(normalised(got[name], inter[name]) < 1e-6 for name in inter)


def test_replacing_every_site_with_the_corrupted_run_reproduces_its_logits(adapter, clean,
                                                                           corrupt):
    corrupt_logits, corrupt_inter = corrupt
    sites = [iv.patch_from(n, v) for n, v in corrupt_inter.items() if n != "logits"]
    logits, inter = adapter.run(SRC, TGT, sites)
    assert normalised(logits, corrupt_logits) < TOL
    assert normalised(clean[0], corrupt_logits) > 0.01  # the corruption does change the output
    for name in ("encoder/output", "decoder/layer_1/self_attn/scores"):
        np.testing.assert_array_equal(inter[name], corrupt_inter[name])


@pytest.mark.parametrize("kind", KINDS)
def test_zero_ablating_the_only_head_leaves_the_out_bias(kind):
    config = spec.TransformerConfig.preset("tiny", num_heads=1)
    flat = random_flat(config, seed=4)
    name = "decoder/layer_1/cross_attn"
    _, inter = make(kind, flat, config).run(SRC, TGT, [iv.zero_ablate(f"{name}/context",
                                                                      heads=[0])])
    bias = flat[f"{name}/out/bias"]
    np.testing.assert_allclose(inter[f"{name}/output"], np.broadcast_to(bias, (3, 5, 32)),
                               rtol=0, atol=1e-6)


def test_selections_rewrite_only_the_selected_entries(adapter, clean):
    logits, inter = clean
    name = "decoder/layer_0/self_attn/weights"  # [b, h, t, t]
    spec_ = iv.scale(name, 0.5, heads=[1, 3], positions=[2], keys=[0, 1])
    out, got = adapter.run(SRC, TGT, [spec_])
    np.testing.assert_allclose(got[name], spec_.apply_numpy(inter[name]), rtol=0, atol=1e-7)
    # causal: query positions before the patched one are untouched downstream
    np.testing.assert_allclose(out[:, :2], logits[:, :2], rtol=0, atol=1e-6)
    assert np.abs(out[:, 2] - logits[:, 2]).max() > 1e-4


def test_steering_a_residual_point(adapter, clean):
    name = "encoder/layer_0/ffn_norm/output"
    vector = np.linspace(-1, 1, CONFIG.d_model).astype(np.float32)
    _, got = adapter.run(SRC, TGT, [iv.add(name, vector, positions=[0, 3])])
    want = clean[1][name].copy()
    want[:, [0, 3]] += vector
    np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-6)


def test_a_bad_intervention_is_a_value_error_naming_it(adapter):
    with pytest.raises(ValueError, match="decoder/layer_9/ffn/output"):
        adapter.run(SRC, TGT, [iv.zero_ablate("decoder/layer_9/ffn/output")])
    with pytest.raises(ValueError, match="heads \\[4\\] out of range"):
        adapter.run(SRC, TGT, [iv.zero_ablate("encoder/layer_0/self_attn/q", heads=[4])])
    with pytest.raises(ValueError, match="shape"):
        adapter.run(SRC, TGT, [iv.patch_from("logits", np.zeros((3, 4, 64), np.float32))])


def test_metric_under_equals_one_run_per_list(adapter):
    metric = iv.target_logprob(LABELS, CONFIG.tgt_vocab_size, CONFIG.pad_id)
    sweep = [[]] + [[iv.zero_ablate("decoder/layer_0/self_attn/context", heads=[h])]
                    for h in range(4)]
    values = adapter.metric_under(SRC, TGT, metric, sweep)
    assert values.shape == (5,)
    for value, interventions in zip(values, sweep):
        logits, _ = adapter.run(SRC, TGT, interventions, capture=False)
        assert abs(value - metric.value_numpy(logits)) < 1e-4
    assert len(set(np.round(values, 4))) == 5  # every head matters


def test_intermediate_grads_cover_every_name_and_match_finite_differences(adapter, clean):
    metric = iv.loss_metric(LABELS, CONFIG.tgt_vocab_size, CONFIG.pad_id)
    value, grads = adapter.intermediate_grads(SRC, TGT, metric)
    shapes = spec.intermediate_shapes(CONFIG, 3, 6, 5)
    assert list(grads) == list(shapes)
    assert all(grads[n].shape == shapes[n] for n in shapes)
    loss, _ = adapter.gradients(SRC, TGT, LABELS)
    assert abs(value - loss) < 1e-5
    name = "decoder/layer_1/ffn/activation"
    direction = np.random.default_rng(0).normal(size=shapes[name]).astype(np.float32)
    eps = 1e-2
    up, down = adapter.metric_under(SRC, TGT, metric, [[iv.add(name, eps * direction)],
                                                       [iv.add(name, -eps * direction)]])
    assert abs((up - down) / (2 * eps) - float((grads[name] * direction).sum())) < 2e-3
    # d loss / d logits by hand: (softmax - q) / count at non-pad labels
    logits = clean[0].astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.full(p.shape, 0.1 / 64)
    np.put_along_axis(q, LABELS[..., None], 0.9 + 0.1 / 64, axis=-1)
    keep = (LABELS != CONFIG.pad_id)[..., None]
    np.testing.assert_allclose(grads["logits"], (p - q) * keep / keep.sum(), atol=1e-6)


def test_gradients_are_taken_after_the_intervention(adapter):
    metric = iv.target_logprob(LABELS, CONFIG.tgt_vocab_size, CONFIG.pad_id)
    name = "decoder/layer_0/self_attn/q"
    _, grads = adapter.intermediate_grads(SRC, TGT, metric, names=[name, "decoder/embed/output"],
                                          interventions=[iv.zero_ablate(name)])
    assert list(grads) == [name, "decoder/embed/output"]
    assert np.abs(grads[name]).max() > 1e-4  # the zeroed value still reaches the metric
    with pytest.raises(ValueError, match="encoder/nothing"):
        adapter.intermediate_grads(SRC, TGT, metric, names=["encoder/nothing"])


def test_patched_greedy_decoding_equals_patched_forwards_on_its_prefix(adapter):
    patch = [iv.zero_ablate("decoder/layer_1/self_attn/k", positions=[0]),
             iv.scale("decoder/layer_0/cross_attn/weights", 0.0, heads=[0], keys=[1]),
             iv.add("decoder/embed/output", np.float32(0.5), positions=[2]),
             iv.zero_ablate("encoder/layer_1/ffn/output", positions=[1])]
    max_len = 5
    tokens = adapter.decode(SRC, max_len, interventions=patch)
    assert tokens.shape == (3, max_len)
    plain = adapter.decode(SRC, max_len)
    assert not np.array_equal(tokens, plain)
    prefix = np.concatenate([np.full((3, 1), CONFIG.bos_id), tokens[:, :-1]], axis=1)
    logits, _ = adapter.run(SRC, prefix, patch, capture=False)
    argmax = logits.argmax(-1)
    for row in range(3):
        n = max_len
        if CONFIG.eos_id in tokens[row]:
            n = int(np.argmax(tokens[row] == CONFIG.eos_id)) + 1
        np.testing.assert_array_equal(tokens[row, :n], argmax[row, :n])


def test_an_identity_patch_leaves_decoding_unchanged(adapter, clean):
    full = clean[1]
    name = "encoder/layer_0/self_attn/output"
    for beams in (1, 3):
        same = adapter.decode(SRC, 5, beam_size=beams, alpha=0.8,
                              interventions=[iv.patch_from(name, full[name]),
                                             iv.scale("decoder/layer_1/ffn/output", 1.0)])
        np.testing.assert_array_equal(same, adapter.decode(SRC, 5, beam_size=beams, alpha=0.8))


def test_torch_forward_patch_takes_functions_and_checks_their_shapes():
    model = torch_model.Transformer(CONFIG).load_canonical(FLAT)
    name = "decoder/layer_0/ffn/activation"
    by_fn, inter = torch_model.forward(model, SRC, TGT, patch={name: lambda v: 2 * v})
    by_spec, _ = torch_model.forward(model, SRC, TGT, patch={name: iv.scale(name, 2.0)})
    torch.testing.assert_close(by_fn, by_spec, rtol=0, atol=0)
    assert not torch_model.has_hooks(model)
    with pytest.raises(ValueError, match=f"patch for {name} returned"):
        torch_model.forward(model, SRC, TGT, patch={name: lambda v: v[:, :1]})
    with pytest.raises(ValueError, match="'decoder/layer_0/ffn/act'"):
        torch_model.forward(model, SRC, TGT, patch={"decoder/layer_0/ffn/act": lambda v: v})
    with pytest.raises(ValueError, match="key must be the intervention's name"):
        torch_model.forward(model, SRC, TGT, patch={name: iv.scale("logits", 2.0)})
    assert not torch_model.has_hooks(model)
    # a decode step's function sees one step's value
    seen = []
    torch_model.greedy_decode(model, SRC, 3, patch={
        "decoder/layer_0/self_attn/context": lambda v: seen.append(tuple(v.shape)) or v})
    assert seen[0] == (3, 4, 1, 8)


# -- the same numbers in every implementation --------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    return make("torch")


def every_kind(corrupt_inter):
    """One intervention of each builder kind, with head, position and key selections."""
    vector = np.linspace(-2, 2, CONFIG.d_model).astype(np.float32)
    return [
        iv.zero_ablate("encoder/layer_0/self_attn/weights", heads=[1], positions=[2],
                       keys=[0, 3]),
        iv.mean_ablate("encoder/layer_1/ffn/activation",
                       corrupt_inter["encoder/layer_1/ffn/activation"], positions=[1]),
        iv.resample_ablate("decoder/layer_0/cross_attn/v",
                           corrupt_inter["decoder/layer_0/cross_attn/v"], seed=1, heads=[0, 2]),
        iv.patch_from("decoder/layer_1/self_attn/context",
                      corrupt_inter["decoder/layer_1/self_attn/context"], heads=[3],
                      positions=[1, 4]),
        iv.scale("decoder/layer_0/self_attn/scores", 3.0, heads=[2], keys=[0]),
        iv.add("decoder/layer_1/ffn_norm/output", vector, positions=[3]),
        iv.zero_ablate("decoder/layer_1/self_attn/k", heads=[1], positions=[0]),
    ]


@pytest.fixture(scope="module")
def kinds(reference):
    return every_kind(reference.run(CORRUPT_SRC, TGT)[1])


@pytest.mark.parametrize("kind", ["jax", "hf"])
def test_every_kind_gives_the_same_downstream_values_everywhere(kind, reference, kinds):
    other = make(kind)
    want_logits, want = reference.run(SRC, TGT, kinds)
    logits, got = other.run(SRC, TGT, kinds)
    assert normalised(logits, want_logits) < TOL
    assert list(got) == list(want)
    bad = {n: normalised(got[n], want[n]) for n in want if normalised(got[n], want[n]) >= TOL}
    assert not bad
    plain, _ = reference.run(SRC, TGT, capture=False)
    assert normalised(plain, want_logits) > 1e-3  # the interventions do change the output


@pytest.mark.parametrize("kind", ["jax", "hf"])
def test_intermediate_gradients_agree_for_every_name(kind, reference, kinds):
    metric = iv.loss_metric(LABELS, CONFIG.tgt_vocab_size, CONFIG.pad_id)
    want_value, want = reference.intermediate_grads(SRC, TGT, metric, interventions=kinds[:3])
    value, got = make(kind).intermediate_grads(SRC, TGT, metric, interventions=kinds[:3])
    assert abs(value - want_value) < TOL
    assert list(got) == list(want)
    bad = {n: normalised(got[n], want[n]) for n in want if normalised(got[n], want[n]) >= TOL}
    assert not bad
    # a pre-LN norm input is also the residual stream; its gradient counts the norm path only
    config = spec.TransformerConfig.preset("tiny", norm_position="pre")
    flat = random_flat(config, seed=5)
    names = ["decoder/layer_0/ffn_norm/input", "encoder/embed/output"]
    _, want = make("torch", flat, config).intermediate_grads(SRC, TGT, metric, names=names)
    _, got = make(kind, flat, config).intermediate_grads(SRC, TGT, metric, names=names)
    assert all(normalised(got[n], want[n]) < TOL for n in names)


@pytest.mark.parametrize("kind", ["jax", "hf"])
def test_metric_sweeps_agree(kind, reference, kinds):
    metric = iv.logit_diff(3, 5, CONFIG.tgt_vocab_size, position=2, correct=5, wrong=[6, 7, 8])
    sweep = [[k] for k in kinds[:2]] + [[iv.zero_ablate("decoder/layer_0/self_attn/context",
                                                        heads=[h])] for h in range(4)]
    want = reference.metric_under(SRC, TGT, metric, sweep)
    got = make(kind).metric_under(SRC, TGT, metric, sweep)
    assert normalised(got, want) < TOL


@pytest.mark.parametrize("kind", ["jax", "hf"])
@pytest.mark.parametrize("beams", [1, 3])
def test_patched_decoding_agrees(kind, beams, reference, kinds):
    want = reference.decode(SRC, 5, beam_size=beams, alpha=0.8, interventions=kinds)
    got = make(kind).decode(SRC, 5, beam_size=beams, alpha=0.8, interventions=kinds)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(want, reference.decode(SRC, 5, beam_size=beams, alpha=0.8))


# -- jax specifics -------------------------------------------------------------------------------
def test_jax_patch_functions_and_their_errors():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import jax_model

    params = jax_model.from_canonical(FLAT, CONFIG)
    name = "decoder/layer_0/ffn/activation"
    by_fn, _ = jax_model.forward(params, CONFIG, SRC, TGT, capture=False,
                                 patch={name: lambda v: 2 * v})
    by_spec, _ = jax_model.forward(params, CONFIG, SRC, TGT, capture=False,
                                   patch={name: iv.scale(name, 2.0)})
    np.testing.assert_array_equal(np.asarray(by_fn), np.asarray(by_spec))
    with pytest.raises(ValueError, match=f"patch for {name} returned"):
        jax_model.forward(params, CONFIG, SRC, TGT, patch={name: lambda v: v[:, :1]})
    with pytest.raises(ValueError, match="'decoder/layer_0/ffn/act'"):
        jax_model.forward(params, CONFIG, SRC, TGT, patch={"decoder/layer_0/ffn/act": jnp.abs})
    seen = []
    jax_model.greedy_decode(params, CONFIG, SRC, 3, patch={
        "decoder/layer_0/self_attn/context": lambda v: seen.append(v.shape) or v})
    assert seen and set(seen) == {(3, 4, 1, 8)}  # traced on one step's value
    del jax


def test_jax_capture_off_and_patch_off_add_no_operation():
    jax = pytest.importorskip("jax")
    import jax_model
    from jax_model.api import forward_body
    from jax_model.capture import coefficient_tree

    params = jax_model.from_canonical(FLAT, CONFIG)

    def eqns(capture, tree):
        body = forward_body(CONFIG, capture, True)
        jaxpr = jax.make_jaxpr(lambda p, s, t: body(p, s, t, None, tree))(params, SRC, TGT)
        return [str(e.primitive) for e in jaxpr.jaxpr.eqns]

    bare = jax.make_jaxpr(lambda p, s, t: jax_model.apply(p, CONFIG, s, t))(params, SRC, TGT)
    plain = eqns(False, None)
    assert plain == [str(e.primitive) for e in bare.jaxpr.eqns]
    assert eqns(True, None) == plain  # sowing adds outputs, no operation
    name = "decoder/layer_0/ffn/activation"
    tree = coefficient_tree({name: iv.scale(name, 2.0).coefficients((3, 5, 64))})
    assert len(eqns(False, tree)) == len(plain) + 2  # one multiply, one add


# -- the registry and the parity section -------------------------------------------------------
def test_one_registry_names_every_implementation():
    from spec import implementations as registry

    assert registry.NAMES == ("jax", "torch", "hf")
    assert [registry.canonical_name(a) for a in ("pytorch", "huggingface", "JAX")] == \
        ["torch", "hf", "jax"]
    with pytest.raises(ValueError, match="'mxnet'.*'jax', 'torch', 'hf'"):
        registry.canonical_name("mxnet")
    for name in registry.importable():
        adapter = registry.from_canonical(name, FLAT, CONFIG)
        assert adapter.name == name
        assert isinstance(adapter, registry.Adapter)
        assert registry.package_of(getattr(adapter, "model", None)) in (None, name)
    from analysis.models import resolve_model

    model = torch_model.Transformer(CONFIG).load_canonical(FLAT)
    assert resolve_model(model).name == "torch"
    assert resolve_model((FLAT, CONFIG)).name in registry.NAMES


def test_a_decode_patch_is_checked_against_the_decode_length():
    model = torch_model.Transformer(CONFIG).load_canonical(FLAT)
    with pytest.raises(ValueError, match="positions \\[4\\] out of range"):
        torch_model.greedy_decode(model, SRC, 3, patch={
            "logits": iv.zero_ablate("logits", positions=[4])})
    assert not torch_model.has_hooks(model)


def test_the_parity_section_runs_clean():
    pytest.importorskip("jax")
    pytest.importorskip("transformers")
    from parity import interventions
    from parity.batch import make_batch

    batch = make_batch(CONFIG, 0, 3, 7, 5)
    checks = interventions.quick(CONFIG, FLAT, batch)
    names = {c.name for c in checks}
    assert {"patched/logits", "patched/encoder/layer_0/self_attn/weights"} <= names
    assert {c.pair for c in checks} == {"torch~jax", "hf~jax"}
    assert all(c.ok for c in checks), [c for c in checks if not c.ok][:3]


def test_jax_sweeps_in_padded_chunks_give_the_same_numbers(monkeypatch, reference):
    pytest.importorskip("jax")
    import jax_model.adapter

    monkeypatch.setattr(jax_model.adapter, "SWEEP_CHUNK", 3)  # 4 lists: a full chunk, a padded one
    metric = iv.target_logprob(LABELS, CONFIG.tgt_vocab_size, CONFIG.pad_id)
    sweep = [[iv.zero_ablate("encoder/layer_1/self_attn/context", heads=[h])] for h in range(4)]
    sweep.insert(2, [])
    got = make("jax").metric_under(SRC, TGT, metric, sweep)
    assert normalised(got, reference.metric_under(SRC, TGT, metric, sweep)) < TOL

"""The catalogue of user mistakes and faults: each one ends in one clear error, never in lost
data, silently wrong weights or a traceback (issue 14).

Every table row is `(case id, what to run, expected exception type or exit status, regex)`;
the regex must match the message and names what is wrong (the field, flag, path or value).
One test function runs each table:

- `SPEC`: `spec.TransformerConfig` / `spec.TrainConfig` fields and token inputs;
- `CHECKPOINTS`: `spec.save_checkpoint` / `spec.load_checkpoint` (callables get a tmp folder
  prepared by `_prepare`);
- `DECODING`: the arguments of `jax_model` / `torch_model` greedy and beam decoding;
- `MAIN_CLI`: `main.py` flags; exit status 2 and one `main.py: error: argument --flag: ...`
  line on stderr, no traceback (`{tmp}` in an argv is the prepared folder);
- `PARITY_CLI`: `python -m parity.check` flags; exit status 2 (1 stays "parity failed").

Below the tables, the behaviours around them: a refused save leaves the user's files intact,
a previous checkpoint of ours is still replaced, a diverged run writes its `summary.json`, the
analysis report tolerates non-finite statistics.  To add a section (HF model, resume), append
a table and one test function that runs it, in the same shape.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main
import spec
import tasks.numbers
import training
from spec import TrainConfig, TransformerConfig

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")
TINY = TransformerConfig.preset("tiny")


def tiny(**changes):
    return TransformerConfig.preset("tiny", **changes)


def partial(data):
    return lambda: TransformerConfig.from_dict(data, complete=True)


# -- spec: config fields and token inputs ----------------------------------------------------
SPEC = [
    ("eps-inf", lambda: tiny(layer_norm_eps=INF), r"layer_norm_eps=inf .*finite"),
    ("eps-nan", lambda: tiny(layer_norm_eps=NAN), r"layer_norm_eps=nan"),
    ("eps-zero", lambda: tiny(layer_norm_eps=0.0), r"layer_norm_eps=0.0 .*positive"),
    ("eps-string", lambda: tiny(layer_norm_eps="1e-5"), r"layer_norm_eps='1e-5' .*number"),
    ("dropout-nan", lambda: tiny(dropout_rate=NAN), r"dropout_rate=nan"),
    ("dropout-inf", lambda: tiny(dropout_rate=INF), r"dropout_rate=inf"),
    ("attention-dropout-one", lambda: tiny(attention_dropout_rate=1.0),
     r"attention_dropout_rate=1.0 .*\[0, 1\)"),
    ("eos-equals-pad", lambda: tiny(pad_id=2, eos_id=2), r"eos_id=2 and pad_id=2 collide"),
    ("eos-equals-pad-zero", lambda: tiny(pad_id=0, eos_id=0, bos_id=1),
     r"eos_id=0 and pad_id=0 collide"),
    ("eos-outside-vocab", lambda: tiny(eos_id=64), r"eos_id=64 .*0 <= id < 64"),
    ("pad-negative", lambda: tiny(pad_id=-1), r"pad_id=-1"),
    ("bos-float", lambda: tiny(bos_id=1.0), r"bos_id=1.0 .*integer"),
    ("d-model-bool", lambda: tiny(d_model=True), r"d_model=True .*integer"),
    ("d-model-string", lambda: tiny(d_model="32"), r"d_model='32' .*integer"),
    ("heads-zero", lambda: tiny(num_heads=0), r"num_heads=0 .*positive"),
    ("heads-not-dividing", lambda: tiny(num_heads=5), r"d_model=32 .*num_heads=5"),
    ("vocab-zero", lambda: tiny(src_vocab_size=0), r"src_vocab_size=0"),
    ("activation-unknown", lambda: tiny(activation="tanh"), r"activation='tanh'"),
    ("norm-position-unknown", lambda: tiny(norm_position="mid"), r"norm_position='mid'"),
    ("layout-unknown", lambda: tiny(positional_layout="rotary"), r"positional_layout='rotary'"),
    ("share-different-vocabs", lambda: tiny(tgt_vocab_size=80),
     r"share_embeddings=True .*src_vocab_size=64 and tgt_vocab_size=80"),
    ("tie-output-string", lambda: tiny(tie_output="yes"), r"tie_output='yes' .*true or false"),
    ("unknown-field", lambda: tiny(hidden=3), r"unknown config field\(s\) \['hidden'\]"),
    ("unknown-preset", lambda: TransformerConfig.preset("huge"), r"'huge'.*tiny, small"),
    ("complete-config-missing-field",
     partial({k: v for k, v in TINY.to_dict().items() if k != "eos_id"}),
     r"missing field\(s\) \['eos_id'\]"),
    ("complete-config-partial", partial({"d_model": 32, "num_heads": 4}),
     r"missing field\(s\) \['src_vocab_size', 'tgt_vocab_size', 'num_encoder_layers'"),
    ("config-not-object", lambda: TransformerConfig.from_dict([1, 2]), r"JSON object, got list"),
    ("config-json-invalid", lambda: TransformerConfig.from_json("{d_model: 3"),
     r"not valid JSON"),
    ("train-lr-inf", lambda: TrainConfig(learning_rate=INF), r"learning_rate=inf .*finite"),
    ("train-lr-nan", lambda: TrainConfig(learning_rate=NAN), r"learning_rate=nan"),
    ("train-lr-zero", lambda: TrainConfig(learning_rate=0.0), r"learning_rate=0.0 .*positive"),
    ("train-lr-string", lambda: TrainConfig(learning_rate="1"), r"learning_rate='1' .*number"),
    ("train-adam-eps-inf", lambda: TrainConfig(adam_eps=INF), r"adam_eps=inf .*finite"),
    ("train-adam-b2-one", lambda: TrainConfig(adam_b2=1.0), r"adam_b2=1.0"),
    ("train-adam-b1-nan", lambda: TrainConfig(adam_b1=NAN), r"adam_b1=nan"),
    ("train-clip-inf", lambda: TrainConfig(clip_norm=INF), r"clip_norm=inf .*finite"),
    ("train-clip-nan", lambda: TrainConfig(clip_norm=NAN), r"clip_norm=nan"),
    ("train-smoothing-nan", lambda: TrainConfig(label_smoothing=NAN), r"label_smoothing=nan"),
    ("train-batch-bool", lambda: TrainConfig(batch_size=True), r"batch_size=True .*boolean"),
    ("train-batch-float", lambda: TrainConfig(batch_size=2.0), r"batch_size=2.0"),
    ("train-seed-negative", lambda: TrainConfig(seed=-1), r"seed=-1 .*>= 0"),
    ("train-warmup-bool", lambda: TrainConfig(warmup_steps=True), r"warmup_steps=True"),
    ("train-cooldown-without-max-steps", lambda: TrainConfig(cooldown_steps=5),
     r"cooldown_steps=5 .*max_steps=0"),
    ("train-keep-no-checkpoint", lambda: TrainConfig(keep_checkpoints=0),
     r"keep_checkpoints=0 .*>= 1"),
    ("train-schedule-unknown", lambda: TrainConfig(schedule="cosine"), r"schedule='cosine'"),
    ("train-fp8", lambda: TrainConfig(mixed_precision="fp8"), r"mixed_precision='fp8'"),
    ("train-from-list", lambda: TrainConfig.from_dict([1]), r"train config must be a JSON obj"),
    ("train-unknown-field", lambda: TrainConfig.from_dict({"lr": 1}), r"\['lr'\]"),
    ("tokens-ragged", lambda: spec.check_tokens([[5, 6], [7]], None, TINY),
     r"src must be a 2-D .*list"),
    ("tokens-float", lambda: spec.check_tokens(np.ones((1, 3)), None, TINY),
     r"src must hold integer .*float64"),
    ("tokens-outside-vocab", lambda: spec.check_tokens(np.array([[5, 64]]), None, TINY),
     r"src holds token id 64, outside the vocabulary \[0, 64\)"),
    ("tokens-negative", lambda: spec.check_tokens(np.array([[5, 6]]), np.array([[-1]]), TINY),
     r"tgt holds token id -1"),
    ("tokens-too-long", lambda: spec.check_tokens(np.zeros((1, 129), np.int64), None, TINY),
     r"src has length 129, over the config's max_len=128"),
    ("tokens-3d", lambda: spec.check_tokens(np.zeros((1, 2, 3), np.int64), None, TINY),
     r"src must be a 2-D .*\(1, 2, 3\)"),
    ("tokens-batch-mismatch",
     lambda: spec.check_tokens(np.ones((2, 3), np.int64), np.ones((3, 3), np.int64), TINY),
     r"src has 2 rows, tgt has 3"),
]


@pytest.mark.parametrize("call, pattern", [c[1:] for c in SPEC], ids=[c[0] for c in SPEC])
def test_spec_errors(call, pattern):
    with pytest.raises(ValueError) as info:
        call()
    assert re.search(pattern, str(info.value)), str(info.value)


def test_legal_neighbours_of_the_spec_cases_stay_legal():
    assert tiny(bos_id=0, pad_id=0).bos_id == 0  # Marian: decoder start = pad
    assert tiny(bos_id=2, eos_id=2).eos_id == 2  # BART / mBART: decoder start = eos
    assert TransformerConfig.from_dict(TINY.to_dict(), complete=True) == TINY
    assert TransformerConfig.from_dict({"d_model": 64}).d_model == 64  # defaults allowed here
    assert TrainConfig(clip_norm=0.0).clip_norm == 0.0


# -- checkpoints -------------------------------------------------------------------------------
def _weights(config=TINY, **set_values):
    flat = spec.random_params(config, seed=0)
    for name, value in set_values.items():
        flat[name.replace("__", "/")] = np.full_like(flat[name.replace("__", "/")], value)
    return flat


def _prepare(tmp: Path) -> Path:
    """A user's folder with a file of theirs, a good checkpoint, a file path, broken ones."""
    tmp.mkdir(exist_ok=True)
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("my notes\n")
    spec.save_checkpoint(tmp / "good", _weights(), TINY)
    (tmp / "afile").write_text("x\n")
    spec.save_checkpoint(tmp / "partial", _weights(), TINY)
    config = json.loads((tmp / "partial" / "config.json").read_text())
    del config["d_ff"]
    (tmp / "partial" / "config.json").write_text(json.dumps(config))
    spec.save_checkpoint(tmp / "eospad", _weights(), TINY)
    config["d_ff"], config["eos_id"] = 64, 0
    (tmp / "eospad" / "config.json").write_text(json.dumps(config))
    from safetensors.numpy import save_file

    for name, value in (("nan", NAN), ("inf", INF)):
        spec.save_checkpoint(tmp / name, _weights(), TINY)
        flat = _weights()
        flat["decoder/layer_1/ffn/w2/bias"][3] = value
        flat["encoder/layer_0/self_attn/query/kernel"][0, 0] = value
        save_file(flat, str(tmp / name / "model.safetensors"))
    spec.save_checkpoint(tmp / "corrupt", _weights(), TINY)
    (tmp / "corrupt" / "model.safetensors").write_bytes(b"not a safetensors file")
    spec.save_checkpoint(tmp / "badjson", _weights(), TINY)
    (tmp / "badjson" / "config.json").write_text("{oops")
    spec.save_checkpoint(tmp / "noweights", _weights(), TINY)
    (tmp / "noweights" / "model.safetensors").unlink()
    return tmp


CHECKPOINTS = [
    ("save-onto-user-folder", lambda t: spec.save_checkpoint(t / "mine", _weights(), TINY),
     ValueError, r"mine: the folder holds files this project did not write \(\['notes.txt'\]"),
    ("save-onto-file", lambda t: spec.save_checkpoint(t / "good" / "config.json", _weights(),
                                                      TINY),
     ValueError, r"good/config.json: it is a file"),
    ("save-under-file", lambda t: spec.save_checkpoint(t / "afile" / "ckpt", _weights(), TINY),
     ValueError, r"afile/ckpt: .*afile is a file"),
    ("save-nan-weights", lambda t: spec.save_checkpoint(
        t / "new", _weights() | {"decoder/layer_0/ffn/w1/bias": np.full(64, NAN, np.float32)},
        TINY),
     ValueError, r"non-finite weights: decoder/layer_0/ffn/w1/bias \(64 NaN"),
    ("save-inf-weights", lambda t: spec.save_checkpoint(t / "new", _weights(
        shared_embedding__embedding=INF), TINY),
     ValueError, r"shared_embedding/embedding \(0 NaN, 2048 inf"),
    ("save-float64-overflow", lambda t: spec.save_checkpoint(t / "new", _weights() | {
        "encoder/layer_0/ffn/w2/bias": np.full(32, 1e300)}, TINY),
     ValueError, r"encoder/layer_0/ffn/w2/bias \(0 NaN, 32 inf"),
    ("save-wrong-shape", lambda t: spec.save_checkpoint(t / "new", _weights() | {
        "encoder/layer_0/ffn/w2/bias": np.zeros(3, np.float32)}, TINY),
     ValueError, r"encoder/layer_0/ffn/w2/bias: expected \(32,\), got \(3,\)"),
    ("load-nan-weights", lambda t: spec.load_checkpoint(t / "nan"), ValueError,
     r"non-finite weights: .*decoder/layer_1/ffn/w2/bias \(1 NaN.*"
     r"encoder/layer_0/self_attn/query/kernel \(1 NaN"),
    ("load-inf-weights", lambda t: spec.load_checkpoint(t / "inf"), ValueError,
     r"inf/model.safetensors holds non-finite weights: .*\(0 NaN, 1 inf of 32\)"),
    ("load-config-missing-field", lambda t: spec.load_checkpoint(t / "partial"), ValueError,
     r"partial/config.json: config is missing field\(s\) \['d_ff'\]"),
    ("load-config-eos-pad", lambda t: spec.load_checkpoint(t / "eospad"), ValueError,
     r"eospad/config.json: .*eos_id=0 and pad_id=0 collide"),
    ("load-a-file", lambda t: spec.load_checkpoint(t / "good" / "config.json"), ValueError,
     r"good/config.json is a file: expected a folder"),
    ("load-missing", lambda t: spec.load_checkpoint(t / "nope"), FileNotFoundError,
     r"checkpoint folder not found: .*nope"),
    ("load-no-weights", lambda t: spec.load_checkpoint(t / "noweights"), ValueError,
     r"incomplete: model.safetensors is missing"),
    ("load-corrupt-weights", lambda t: spec.load_checkpoint(t / "corrupt"), ValueError,
     r"unreadable .*corrupt/model.safetensors"),
    ("load-bad-json", lambda t: spec.load_checkpoint(t / "badjson"), ValueError,
     r"unreadable .*badjson/config.json"),
]


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return _prepare(tmp_path_factory.mktemp("checkpoints"))


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in CHECKPOINTS],
                         ids=[c[0] for c in CHECKPOINTS])
def test_checkpoint_errors(call, error, pattern, ckpt_dir):
    with pytest.raises(error) as info:
        call(ckpt_dir)
    assert re.search(pattern, str(info.value)), str(info.value)


def test_a_refused_save_destroys_nothing(tmp_path):
    _prepare(tmp_path)
    before = (tmp_path / "good" / "config.json").read_bytes()
    for target in ("mine", "good/config.json", "afile/ckpt"):
        with pytest.raises(ValueError):
            spec.save_checkpoint(tmp_path / target, _weights(), TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my notes\n"
    assert (tmp_path / "good" / "config.json").read_bytes() == before
    assert spec.load_checkpoint(tmp_path / "good")[1] == TINY
    assert (tmp_path / "afile").read_text() == "x\n"
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob(".*old*"))


def test_a_previous_checkpoint_of_ours_is_still_replaced(tmp_path):
    folder = tmp_path / "final"
    spec.save_checkpoint(folder, _weights(), TINY)
    (folder / "tokenizer.json").write_text("{}")  # what the trainers put beside the weights
    other = tiny(d_ff=48)
    new = spec.random_params(other, seed=1)
    spec.save_checkpoint(folder, new, other)
    flat, config = spec.load_checkpoint(folder)
    assert config == other
    np.testing.assert_array_equal(flat["encoder/layer_0/ffn/w1/kernel"],
                                  new["encoder/layer_0/ffn/w1/kernel"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temporary left
    (tmp_path / "empty").mkdir()
    spec.save_checkpoint(tmp_path / "empty", new, other)  # an empty folder loses nothing


# -- decoding arguments --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    jax_model = pytest.importorskip("jax_model")
    torch_model = pytest.importorskip("torch_model")
    flat = spec.random_params(TINY, seed=0)
    return {"jax": jax_model.from_canonical(flat, TINY),
            "torch": torch_model.Transformer(TINY).load_canonical(flat)}


SRC = np.array([[5, 6, 7, 2], [8, 9, 2, 0]], np.int32)


def _jax(fn, *args, **kwargs):
    import jax_model

    return lambda m: getattr(jax_model, fn)(m["jax"], TINY, SRC, *args, **kwargs)


def _torch(fn, *args, **kwargs):
    import torch_model

    return lambda m: getattr(torch_model, fn)(m["torch"], SRC, *args, **kwargs)


DECODING = [
    ("jax-greedy-max-len-zero", _jax("greedy_decode", 0), r"max_len must be a positive .*0"),
    ("jax-greedy-max-len-float", _jax("greedy_decode", 2.5), r"max_len .*2.5"),
    ("jax-greedy-max-len-over", _jax("greedy_decode", 200), r"max_len=200 is over .*128"),
    ("jax-beam-size-zero", _jax("beam_search", 0, 4), r"beam_size must be a positive .*0"),
    ("jax-beam-alpha-nan", _jax("beam_search", 2, 4, NAN), r"alpha must be a finite .*nan"),
    ("jax-beam-alpha-inf", _jax("beam_search", 2, 4, -INF), r"alpha must be a finite .*-inf"),
    ("jax-beam-alpha-string", _jax("beam_search", 2, 4, "1"), r"alpha .*'1'"),
    ("jax-beam-early-stopping", _jax("beam_search", 2, 4, 1.0, "yes"), r"early_stopping.*yes"),
    ("torch-greedy-max-len-zero", _torch("greedy_decode", 0), r"max_len=0 is invalid"),
    ("torch-greedy-max-len-over", _torch("greedy_decode", 129), r"max_len=129 is over"),
    ("torch-beam-size-zero", _torch("beam_search", 0, 4), r"beam_size=0 is invalid"),
    ("torch-beam-alpha-nan", _torch("beam_search", 2, 4, NAN), r"alpha=nan is invalid.*finite"),
    ("torch-beam-alpha-inf", _torch("beam_search", 2, 4, INF), r"alpha=inf is invalid"),
    ("torch-beam-alpha-string", _torch("beam_search", 2, 4, "1"), r"alpha='1' is invalid"),
]


@pytest.mark.parametrize("call, pattern", [c[1:] for c in DECODING],
                         ids=[c[0] for c in DECODING])
def test_decoding_errors(call, pattern, models):
    with pytest.raises(ValueError) as info:
        call(models)
    assert re.search(pattern, str(info.value)), str(info.value)


def test_negative_alpha_is_hf_semantics_not_an_error(models):
    import torch_model

    # HF's length_penalty < 0 favours short hypotheses: legal, so not in the table above.
    tokens = torch_model.beam_search(models["torch"], SRC, 2, 4, alpha=-0.5)
    assert tuple(tokens.shape) == (2, 4)


# -- main.py -------------------------------------------------------------------------------------
def _prepare_cli(tmp: Path) -> Path:
    (tmp / "afile").write_text("x\n")
    (tmp / "adir").mkdir()
    (tmp / "pairs.tsv").write_text("".join(f"a{i}\tb{i}\n" for i in range(40)))
    (tmp / "pairs").write_text("a\tb\n")
    (tmp / "oldrun" / "final").mkdir(parents=True)
    (tmp / "partial.json").write_text(json.dumps({"d_model": 32, "num_heads": 4}))
    _prepare(tmp / "ckpts")
    return tmp


CLI_BASE = ["--task", "reverse", "--max_len", "12", "--train_size", "16", "--eval_size", "4",
            "--hidden_size", "16", "--num_heads", "2", "--num_layers", "1", "--quiet"]
MAIN_CLI = [
    ("lr-inf", ["--lr", "inf"], r"--lr: 'inf' is invalid: expected a finite number"),
    ("lr-nan", ["--lr", "nan"], r"--lr: 'nan' is invalid"),
    ("lr-overflow", ["--lr", "1e400"], r"--lr: '1e400' is invalid"),
    ("lr-underflow", ["--lr", "1e-400"], r"--lr: 0.0 is invalid"),
    ("lr-word", ["--lr", "fast"], r"--lr: 'fast' is not a number"),
    ("dropout-nan", ["--dropout", "nan"], r"--dropout: 'nan'"),
    ("smoothing-inf", ["--label_smoothing", "inf"], r"--label_smoothing: 'inf'"),
    ("clip-inf", ["--clip_norm", "inf"], r"--clip_norm: 'inf'"),
    ("cooldown-nan", ["--cooldown", "nan"], r"--cooldown: 'nan'"),
    ("output-dir-is-file", ["--output_dir", "{tmp}/afile"], r"--output_dir: '.*afile' is a file"),
    ("output-dir-under-file", ["--output_dir", "{tmp}/afile/run"],
     r"--output_dir: '.*afile/run' cannot be created: '.*afile' is a file"),
    ("output-dir-unwritable", ["--output_dir", "/proc/no_such_lab/run"],
     r"--output_dir: cannot create '/proc/no_such_lab/run'"),
    ("output-dir-holds-a-run", ["--output_dir", "{tmp}/oldrun"],
     r"--output_dir: '.*oldrun' already holds a run \(final\).*--resume"),
    ("data-missing", ["--task", "corpus", "--data", "{tmp}/none.tsv"],
     r"--data: '.*none.tsv' does not exist"),
    ("data-folder", ["--task", "corpus", "--data", "{tmp}/adir"], r"--data: '.*adir' is a folder"),
    ("data-no-suffix", ["--task", "corpus", "--data", "{tmp}/pairs"],
     r"--data: cannot tell the format of .*pairs"),
    ("eval-data-folder", ["--task", "corpus", "--data", "{tmp}/pairs.tsv", "--eval_data",
                          "{tmp}/adir"], r"--eval_data: '.*adir' is a folder"),
    ("data-without-corpus", ["--data", "{tmp}/pairs.tsv"], r"--data: only --task corpus"),
    ("seed-negative", ["--seed", "-1"], r"--seed: -1 is invalid"),
    ("seed-float", ["--seed", "1.5"], r"--seed: '1.5' is not an integer"),
    ("batch-zero", ["--batch_size", "0"], r"--batch_size: 0 is invalid"),
    ("accumulation-zero", ["--gradient_accumulation_steps", "0"],
     r"--gradient_accumulation_steps: 0"),
    ("heads-not-dividing", ["--num_heads", "3"], r"--hidden_size/--num_heads: .*d_model=16"),
    ("max-len-one", ["--max_len", "1"], r"--max_len: 1 is invalid"),
    ("vocab-size-small", ["--vocab_size", "4"], r"--vocab_size: 4 is invalid"),
    ("vocab-size-below-alphabet", ["--task", "numbers", "--tokenizer", "bpe", "--vocab_size",
                                   "10"],
     r"--vocab_size: vocab_size=10 is too small for these texts: the bpe alphabet alone needs "
     r"\d+ tokens"),
    ("beam-zero", ["--beam_size", "0"], r"--beam_size: 0 is invalid"),
    ("ig-tolerance-above-one", ["--ig_tolerance", "1.5"],
     r"--ig_tolerance: 1.5 is invalid: expected a value in \[0.0, 1.0\]"),
    ("ig-tolerance-nan", ["--ig_tolerance", "nan"], r"--ig_tolerance: 'nan' is invalid"),
    ("track-every-zero", ["--track_every", "0"], r"--track_every: 0"),
    ("warmup-negative", ["--warmup_steps", "-3"], r"--warmup_steps: -3"),
    ("workers-negative", ["--dataloader_num_workers", "-1"], r"--dataloader_num_workers: -1"),
    ("epochs-float", ["--epochs", "1e3"], r"--epochs: '1e3' is not an integer"),
    ("tgt-lang-empty", ["--tgt_lang", ","], r"--tgt_lang: ',' names no language"),
    ("src-lang-unknown", ["--src_lang", "xx"], r"--src_lang: language='xx'"),
    ("schedule-unknown", ["--schedule", "linear"], r"--schedule: invalid choice: 'linear'"),
    ("versions-without-both", ["--versions", "pytorch"], r"--versions: only used with"),
    ("translate-too-long", ["--translate", "x" * 40],
     r"--translate: 'x+' is \d+ tokens with eos, over the model's max_len=12"),
    ("fp16-with-jax", ["--mixed_precision", "fp16"], r"--mixed_precision: .*fp16"),
]


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    return _prepare_cli(tmp_path_factory.mktemp("cli"))


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in MAIN_CLI], ids=[c[0] for c in MAIN_CLI])
def test_main_cli_errors(argv, pattern, cli_dir):
    import main

    argv = [a.replace("{tmp}", str(cli_dir)) for a in argv]
    if "--output_dir" not in argv:
        argv += ["--output_dir", str(cli_dir / "results")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(SystemExit) as info:
            main.main(CLI_BASE + argv)
    assert info.value.code == 2
    text = err.getvalue()
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("main.py: error: argument --"), last
    assert re.search(pattern, last), last


# -- python -m parity.check ------------------------------------------------------------------------
PARITY_CLI = [
    ("json-missing-folder", ["--json", "{tmp}/none/report.json"],
     r"--json: '.*none/report.json': the folder '.*none' does not exist"),
    ("json-is-folder", ["--json", "{tmp}/adir"], r"--json: '.*adir' is a folder"),
    ("config-partial", ["--config", "{tmp}/partial.json"],
     r"--config: config is missing field\(s\) \['src_vocab_size'"),
    ("config-folder", ["--config", "{tmp}/adir"], r"--config: '.*adir' is a folder"),
    ("config-missing", ["--config", "{tmp}/none.json"], r"--config: '.*none.json' does not"),
    ("config-not-json", ["--config", "{tmp}/afile"], r"--config: config is not valid JSON"),
    ("checkpoint-file", ["--checkpoint", "{tmp}/afile"], r"--checkpoint: '.*afile' is a file"),
    ("checkpoint-missing", ["--checkpoint", "{tmp}/none"], r"--checkpoint: '.*none' does not"),
    ("checkpoint-not-ours", ["--checkpoint", "{tmp}/adir"],
     r"--checkpoint: checkpoint .*adir is incomplete: config.json is missing"),
    ("checkpoint-nan-weights", ["--checkpoint", "{tmp}/ckpts/nan"],
     r"--checkpoint: checkpoint .*nan/model.safetensors holds non-finite weights: "
     r"decoder/layer_1/ffn/w2/bias"),
    ("checkpoint-config-missing-field", ["--checkpoint", "{tmp}/ckpts/partial"],
     r"--checkpoint: .*config.json: config is missing field\(s\) \['d_ff'\]"),
    ("preset-unknown", ["--preset", "huge"], r"--preset: invalid choice: 'huge'"),
    ("batch-zero", ["--batch", "0"], r"--batch: 0 is invalid: expected an integer >= 2"),
    ("seed-negative", ["--seed", "-1"], r"--seed: -1 is invalid"),
    ("src-len-word", ["--src-len", "ten"], r"--src-len: 'ten' is not an integer"),
    ("src-len-over-max-len", ["--src-len", "500"], r"--src-len: parity src_len=500 is over"),
    ("section-unknown", ["--section", "speed"], r"--section: invalid choice: 'speed'"),
]


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in PARITY_CLI],
                         ids=[c[0] for c in PARITY_CLI])
def test_parity_cli_errors(argv, pattern, cli_dir):
    from parity import check

    argv = [a.replace("{tmp}", str(cli_dir)) for a in argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = check.main(argv)
        except SystemExit as e:
            code = e.code
    assert code == 2
    text = err.getvalue()
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("python -m parity.check: error: argument --"), last
    assert re.search(pattern, last), last


@pytest.mark.parametrize("command", [
    [str(ROOT / "main.py"), "--lr", "inf"],
    ["-m", "parity.check", "--json", "/no_such_folder/report.json"],
], ids=["main", "parity"])
def test_clis_exit_2_in_a_real_process(command):
    done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(r"error: argument --(lr|json): ", done.stderr.strip().splitlines()[-1])


# -- a diverged run ------------------------------------------------------------------------------
def test_a_diverged_run_ends_with_one_line_and_its_summary(tmp_path):
    pytest.importorskip("jax_model")
    import main

    folder = tmp_path / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main.main(["--version", "jax", *CLI_BASE, "--batch_size", "8", "--lr", "1e30",
                          "--schedule", "constant", "--warmup_steps", "0", "--max_steps", "4",
                          "--output_dir", str(folder)])
    assert code == 1
    last = err.getvalue().strip().splitlines()[-1]
    assert "Traceback" not in err.getvalue()
    assert re.match(r"main.py: training stopped: the (loss|gradient norm) is nan at step \d", last)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["diverged"] is True and summary["train_config"]["learning_rate"] == 1e30
    assert "Lower the learning rate" in summary["warning"]
    assert (folder / "metrics.jsonl").is_file()


def test_a_finite_but_diverged_run_is_flagged(tmp_path):
    from lab_cli.artifacts import divergence_warning
    from lab_cli.configs import RunSetup

    setup = RunSetup(task=None, model=TINY, train=TrainConfig(learning_rate=1e6), total_steps=2)
    lines = [{"step": 1, "split": "train", "loss": 3.0}, {"step": 2, "split": "train",
                                                         "loss": 7.1e5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    message = divergence_warning(tmp_path, setup)
    assert re.search(r"diverged: the last training loss 7.1e\+05 is not below 4.159.*--lr "
                     r"\(now 1e\+06\)", message), message
    lines[1]["loss"] = 1.0
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert divergence_warning(tmp_path, setup) is None


def test_the_analysis_report_tolerates_a_diverged_model(tmp_path):
    torch_model = pytest.importorskip("torch_model")
    from analysis import TransformerAnalyzer

    # Weights this large overflow float32 inside the model: inf and NaN intermediates.
    flat = {k: v * (3e4 if v.ndim == 2 else 1.0) for k, v in spec.random_params(TINY, 0).items()}
    analyzer = TransformerAnalyzer(torch_model.Transformer(TINY).load_canonical(flat))
    report = analyzer.comprehensive_analysis(SRC, save_path=tmp_path / "report.json")
    ratios = [v["norm_ratio"] for v in report["layer_contributions"]["sublayers"].values()]
    assert None in ratios  # non-finite -> null, and the report is still written
    assert all(r is None or (math.isfinite(r) and r >= 0) for r in ratios)
    assert json.loads((tmp_path / "report.json").read_text())["schema_version"] == 1


def test_the_figures_tolerate_a_diverged_model_and_non_finite_metrics(tmp_path):
    torch_model = pytest.importorskip("torch_model")
    from analysis import TransformerAnalyzer
    from analysis.outputs import write_outputs

    flat = {k: v * (3e4 if v.ndim == 2 else 1.0) for k, v in spec.random_params(TINY, 0).items()}
    analyzer = TransformerAnalyzer(torch_model.Transformer(TINY).load_canonical(flat))
    metrics = [{"step": 1, "split": "train", "loss": 3.0},
               {"step": 2, "split": "train", "loss": NAN},
               {"step": 2, "split": "eval", "loss": INF, "exact_match": 0.0}]
    written = write_outputs(analyzer, tmp_path, SRC, metrics=metrics)
    for label in ("layer_contributions", "training_curves", "gradient_flow", "html"):
        assert Path(written["files"][label]).stat().st_size > 0, label


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



# == resume (issue 14: --resume items; issue 9: a killed run loses nothing) ====================
# `--resume` into a folder whose checkpoint was written with other flags: one line naming each
# differing field with the checkpoint's value and this run's, exit status 2.  On a folder with
# nothing to resume: a printed note, then a fresh run (a rerun of the same command line with
# --resume after a kill that came before the first checkpoint just starts again).
RESUME_CLI = ["--version", "pytorch", "--task", "reverse", "--max_len", "12", "--train_size",
              "32", "--eval_size", "4", "--hidden_size", "32", "--num_layers", "1",
              "--num_heads", "2", "--batch_size", "16", "--max_steps", "2", "--tokenizer",
              "char", "--beam_size", "1", "--quiet"]
RESUME_CLI_CASES = [
    (["--hidden_size", "48"],
     r"argument --hidden_size/--d_ff: cannot resume: model config field\(s\) \['d_model', "
     r"'d_ff'\] differ from the checkpoint's: d_model 32 -> 48, d_ff 128 -> 192"),
    (["--dropout", "0.2"],
     r"argument --dropout: cannot resume: model config field\(s\) \['dropout_rate'\] differ "
     r"from the checkpoint's: dropout_rate 0.0 -> 0.2"),  # the CLI's default dropout is 0
    (["--train_size", "48"],
     r"argument --train_size: cannot resume: data field\(s\) \['train_size'\] differ from the "
     r"checkpoint's: train_size 32 -> 48"),
    (["--seed", "1"], r"argument --seed: cannot resume: .*seed 0 -> 1"),
    (["--task", "copy"], r"cannot resume: data field\(s\) \[.*'task'.*\] .*task 'reverse' -> "
                         r"'copy'"),
    # a folder trained with one tokenizer (here char) resumed under another (the default bpe)
    (["--tokenizer", "bpe"], r"argument --tokenizer/--vocab_size: cannot resume: data "
                             r"field\(s\) \['tokenizer', 'vocab_size'\] differ .*tokenizer "
                             r"'char' -> 'bpe', vocab_size None -> 300"),
    (["--lr", "0.5"], r"argument --lr: cannot resume: train config field\(s\) "
                      r"\['learning_rate'\] differ from the checkpoint's: learning_rate 1.0 -> "
                      r"0.5"),
]

RESUME_CALL_CASES = [
    (lambda: training.check_resume(
        {"model_config": spec.TransformerConfig.preset("tiny").to_dict(),
         "train_config": spec.TrainConfig().to_dict()},
        spec.TransformerConfig.preset("tiny", d_model=64), spec.TrainConfig()),
     r"^cannot resume: model config field\(s\) \['d_model'\] differ from the checkpoint's: "
     r"d_model 32 -> 64 \("),
    (lambda: training.check_resume(
        {"model_config": spec.TransformerConfig.preset("tiny").to_dict(),
         "train_config": spec.TrainConfig().to_dict(), "data": {"task": "copy", "seed": 0}},
        spec.TransformerConfig.preset("tiny"), spec.TrainConfig(adam_b2=0.99),
        {"task": "sort", "seed": 0}),
     r"train config field\(s\) \['adam_b2'\] differ .*adam_b2 0.98 -> 0.99; data field\(s\) "
     r"\['task'\] differ .*task 'copy' -> 'sort'"),
    # a numbers run folder from before the digit-count weighting has no number_draw
    (lambda: training.check_resume(
        {"model_config": spec.TransformerConfig.preset("tiny").to_dict(),
         "train_config": spec.TrainConfig().to_dict(), "data": {"task": "numbers", "seed": 0}},
        spec.TransformerConfig.preset("tiny"), spec.TrainConfig(),
        {"task": "numbers", "seed": 0, "number_draw": tasks.numbers.NUMBER_DRAW}),
     r"data field\(s\) \['number_draw'\] differ .*number_draw None -> 'digit count d with "
     r"probability proportional to d'"),
]


@pytest.mark.parametrize("call, pattern", RESUME_CALL_CASES)
def test_resume_call_errors_name_the_fields(call, pattern):
    with pytest.raises(training.ResumeError) as err:
        call()
    assert "\n" not in str(err.value)
    assert re.search(pattern, str(err.value)), str(err.value)


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main.main([*RESUME_CLI, "--output_dir", str(folder)]) == 0
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("change, pattern", RESUME_CLI_CASES)
def test_resume_cli_errors_name_the_flag_and_exit_2(change, pattern, resumable, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main([*RESUME_CLI, *change, "--output_dir", str(resumable), "--resume"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("main.py: error: ") and re.search(pattern, last), last
    assert "Traceback" not in err


@pytest.mark.slow
def test_resume_with_nothing_to_resume_says_so_and_trains(tmp_path, capsys):
    assert main.main([*RESUME_CLI, "--output_dir", str(tmp_path / "empty"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resume: nothing to resume in \S+empty.checkpoints \(no checkpoint\): "
                     r"training from scratch", out), out
    assert (tmp_path / "empty" / "final" / "model.safetensors").is_file()

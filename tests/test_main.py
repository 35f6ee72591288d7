"""The command line (`main.py`, `lab_cli`): flags, results folders, --debug, both/all.

Runs `main.main(argv)` in-process on tiny settings (64 training pairs, d_model 32, one layer,
one epoch).  The default suite checks the flag errors, the configs built from the flags, one
JAX run with every output switched on, and a JAX-vs-PyTorch `both` run; the other versions,
`all`, the analysis demo and the determinism check are marked slow.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main
import spec
from lab_cli import args as cli_args
from lab_cli import configs

ROOT = Path(__file__).resolve().parents[1]
# Short synthetic strings keep compilation and plotting cheap; the numbers task (the default)
# is exercised by the slow tests.
TINY = ["--task", "reverse", "--max_len", "12", "--train_size", "64", "--eval_size", "16",
        "--hidden_size", "32", "--num_layers", "1", "--num_heads", "2", "--epochs", "1",
        "--batch_size", "16", "--quiet"]
NUMBERS = ["--task", "numbers", "--max_len", "80"]
# docs/tutorial.md "Outputs a run writes", plus this project's additions (with --visualize).
SEED_FILES = [
    "training_curves.png", "analysis_report.json",
    "visualizations/attention/attention_evolution.png",
    "visualizations/attention/multihead_comparison.png",
    "visualizations/qkv/qkv_evolution.png", "visualizations/qkv/layer_contributions.png",
    "visualizations/qkv/gradient_flow.png",
]
OWN_FILES = ["metrics.jsonl", "final/config.json", "final/model.safetensors",
             "final/tokenizer.json", "report.html", "summary.json", "translations.json",
             "translation_cross_attention.png", "internals_step_0.npz"]
REPORT_KEYS = {"schema_version", "model", "inputs", "loss", "qkv_statistics",
               "attention_patterns", "layer_contributions", "gradient_flow"}


def run_main(argv: list[str]) -> str:
    """Run main(argv) in-process; returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main.main(argv) == 0
    return out.getvalue()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_image(path: Path) -> None:
    width, height = png_size(path)
    assert width >= 200 and height >= 150, f"{path} is only {width}x{height}"
    assert path.stat().st_size > 5_000, f"{path} is nearly empty ({path.stat().st_size} bytes)"


def assert_run_folder(folder: Path, version: str, visualize: bool = True) -> dict:
    """The files of one version's results folder, and that their contents make sense."""
    names = (SEED_FILES + OWN_FILES) if visualize else [
        "metrics.jsonl", "final/config.json", "final/model.safetensors", "analysis_report.json",
        "summary.json", "translations.json"]
    missing = [n for n in names if not (folder / n).is_file()]
    assert not missing, f"{folder} lacks {missing}"
    if visualize:
        heatmaps = sorted(folder.glob("attention_weights_*.png"))
        assert len(heatmaps) == 3, heatmaps  # encoder self, decoder self, decoder cross
        steps = sorted(folder.glob("visualizations/attention/attention_step_*.png"))
        assert [p.name for p in steps][:1] == ["attention_step_0.png"]
        assert len(steps) >= 2
        for png in [folder / n for n in SEED_FILES + OWN_FILES if n.endswith(".png")] \
                + heatmaps + steps:
            assert_image(png)
        assert "<html" in (folder / "report.html").read_text(encoding="utf-8")

    report = json.loads((folder / "analysis_report.json").read_text(encoding="utf-8"))
    assert REPORT_KEYS <= set(report)
    assert report["model"]["config"]["d_model"] == 32
    assert math.isfinite(report["loss"]) and report["loss"] > 0

    records = [json.loads(line) for line in
               (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    evals = [r for r in records if r["split"] == "eval"]
    assert evals and 0.0 <= evals[-1]["exact_match"] <= 1.0

    flat, config = spec.load_checkpoint(folder / "final")
    assert (config.d_model, config.num_encoder_layers, config.num_decoder_layers) == (32, 1, 1)
    assert set(flat) == set(spec.param_shapes(config))

    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["version"] == version
    assert summary["steps"] == len(train) == 4  # 64 pairs / batch 16, one epoch
    assert summary["eval_metrics"]["exact_match"] == evals[-1]["exact_match"]
    translations = json.loads((folder / "translations.json").read_text(encoding="utf-8"))
    assert len(translations) == 8
    assert {"source", "reference", "greedy", "beam_4", "correct"} <= set(translations[0])
    return summary


# -- flags -------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, flag", [
    (["--epochs", "0"], "--epochs"),
    (["--batch_size", "two"], "--batch_size"),
    (["--version", "tensorflow"], "--version"),
    (["--hidden_size", "30", "--num_heads", "4"], "--hidden_size/--num_heads"),
    (["--tgt_lang", "xx"], "--tgt_lang"),
    (["--tgt_lang", "de,de"], "--tgt_lang"),
    (["--dropout", "1.5"], "--dropout"),
    (["--cooldown", "1.5"], "--cooldown"),
    (["--lr", "-1"], "--lr"),
    (["--task", "corpus"], "--data"),
    (["--data", "pairs.tsv"], "--data"),
    (["--max_len", "5"], "--max_len"),
    (["--mixed_precision", "fp16"], "--mixed_precision"),
    (["--versions", "jax,pytorch"], "--versions"),
    (["--version", "both", "--versions", "jax"], "--versions"),
    (["--version", "all", "--versions", "jax,mxnet"], "--versions"),
])
def test_bad_flag_values_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv + ["--train_size", "16", "--eval_size", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("main.py: error: argument " + flag), last
    assert "Traceback" not in err


def test_flags_build_the_configs():
    args = cli_args.parse_args(["--hidden_size", "48", "--num_layers", "3", "--num_heads", "4",
                                "--train_size", "40", "--eval_size", "8", "--epochs", "2",
                                "--batch_size", "8", "--track_internals", "--lr", "0.5",
                                "--warmup_steps", "7", "--gradient_accumulation_steps", "2",
                                "--tgt_lang", "de,fr", "--seed", "3", "--cooldown", "0.4"])
    setup = configs.setup(args)
    c, t = setup.model, setup.train
    assert (c.d_model, c.num_heads, c.num_encoder_layers, c.num_decoder_layers, c.d_ff) == \
        (48, 4, 3, 3, 192)
    assert (t.learning_rate, t.warmup_steps, t.grad_accum_steps, t.batch_size, t.seed) == \
        (0.5, 7, 2, 8, 3)
    assert setup.total_steps == 2 * 5 // 2  # 40 pairs / 8 = 5 batches, 2 epochs, 2 per update
    assert (t.max_steps, t.cooldown_steps) == (5, 2)  # the last 40% of 5 steps cool down
    no_cooldown = configs.setup(cli_args.parse_args(["--train_size", "40", "--eval_size", "8",
                                                     "--cooldown", "0"])).train
    assert (no_cooldown.max_steps, no_cooldown.cooldown_steps) == (0, 0)
    assert t.track_internals_every == 1  # about 8 captures: max(1, 5 // 8)
    assert setup.task.info["tgt_langs"] == ["de", "fr"]
    sources = [s for s, _ in setup.task.pairs("train")]
    assert {s[:5] for s in sources} == {"<2de>", "<2fr>"}  # one multilingual model
    assert c.max_len >= max(setup.task.max_lengths())
    assert args.output_dir == "results_jax" and args.versions == ("jax",)


def test_corpus_task_reads_the_data_file(tmp_path):
    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"hello {i}\thallo {i}\n" for i in range(30)), encoding="utf-8")
    args = cli_args.parse_args(["--task", "corpus", "--data", str(data), "--train_size", "20",
                                "--eval_size", "5", "--tokenizer", "char"])
    task = configs.setup(args).task
    assert len(task.pairs("train")) == 20 and len(task.pairs("eval")) == 5
    assert all(t == "hallo " + s.split()[1] for s, t in task.pairs("train"))


def test_version_defaults():
    assert cli_args.parse_args(["--version", "both"]).versions == ("jax", "pytorch")
    assert cli_args.parse_args(["--version", "all"]).versions == ("jax", "pytorch",
                                                                  "huggingface")
    both = cli_args.parse_args(["--version", "both", "--versions", "pytorch,huggingface"])
    assert both.versions == ("pytorch", "huggingface") and both.output_dir == "results_both"
    assert cli_args.parse_args([]).track_internals is False


def test_translate_flag_picks_the_example_sources():
    from lab_cli import artifacts

    args = cli_args.parse_args(["--task", "reverse", "--train_size", "16", "--eval_size", "4",
                                "--translate", "abc", "--translate", "xyz"])
    task = configs.build_task(args)
    assert artifacts.example_sources(args, task) == (["abc", "xyz"], None)
    args.translate = None
    sources, references = artifacts.example_sources(args, task)
    assert list(zip(sources, references)) == task.pairs("eval")[:artifacts.EXAMPLES]


def test_flag_error_names_flags_not_fields():
    message = cli_args.flag_error(ValueError("config field d_model=30 is not divisible by "
                                             "num_heads=4: each head needs ..."))
    assert message.startswith("argument --hidden_size/--num_heads: config field d_model=30")
    assert cli_args.flag_error(ValueError("something else")) == "something else"


# -- one JAX run with everything on ------------------------------------------------------------
@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jax") / "results_jax"
    printed = run_main(["--version", "jax", *TINY, "--output_dir", str(folder), "--visualize",
                        "--track_internals", "--debug"])
    return folder, printed


def test_jax_run_writes_the_seed_outputs(jax_run):
    folder, _ = jax_run
    summary = assert_run_folder(folder, "jax")
    captured = sorted(int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("internals_step_*.npz"))
    assert captured == [0, 1, 2, 3, 4]  # every step: 4 steps // 8 captures -> every 1
    assert summary["train_config"]["track_internals_every"] == 1


def test_debug_prints_the_qkv_trace_with_shapes(jax_run):
    _, printed = jax_run
    assert "=== --debug: jax forward pass, initial weights" in printed
    assert "=== Multi-Head Attention Forward Pass: encoder/layer_0/self_attn ===" in printed
    lines = printed.splitlines()
    q_proj = next(line for line in lines if "Q after W_q" in line)
    q_heads = next(line for line in lines if "Q reshaped" in line)
    # the sample batch is two training examples; d_model 32 = 2 heads x 16
    assert q_proj.split(":")[1].strip().startswith("[2, ") and ", 32], mean:" in q_proj
    assert q_heads.split(":")[1].strip().startswith("[2, 2, ") and ", 16], mean:" in q_heads
    assert any(line.strip().startswith("after ReLU") for line in lines)
    assert any(line.strip().startswith("after LayerNorm") for line in lines)
    assert "decoder/layer_0/cross_attn" in printed and "logits: [2, " in printed


def test_run_prints_metrics_and_translations(jax_run):
    _, printed = jax_run
    assert "jax: 4 steps in" in printed and "exact_match" in printed
    assert "(reference '" in printed


# -- both: the same weights in two frameworks ---------------------------------------------------
def test_both_starts_from_the_same_weights_and_prints_the_differences(tmp_path):
    folder = tmp_path / "results_both"
    printed = run_main(["--version", "both", *TINY, "--dropout", "0", "--max_steps", "2",
                        "--output_dir", str(folder), "--beam_size", "1", "--debug"])
    assert "=== --debug: jax vs pytorch, the same inputs and weights ===" in printed
    row = next(line for line in printed.splitlines() if line.startswith("logits "))
    assert float(row.split()[-1]) < 1e-5  # the normalised difference of the logits
    assert "=== jax vs pytorch ===" in printed
    assert "same initial weights:" in printed and "training loss:" in printed
    report = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
    pair = report["pairs"][0]
    assert pair["versions"] == ["jax", "pytorch"]
    initial = pair["initial_intermediates"]
    _, config = spec.load_checkpoint(folder / "jax" / "final")
    assert initial["names"] == len(spec.intermediate_shapes(config, 4, 8, 8))  # every name
    assert not initial["shape_mismatches"]
    assert initial["missing"] == {"jax": [], "pytorch": []}
    assert initial["max_normalized"] < 1e-5  # float32 rounding only
    # No dropout, the same batches: the first loss is the same forward in both frameworks.
    assert pair["loss"]["steps"] == 2 and pair["loss"]["first_abs_diff"] < 1e-5
    assert pair["final_intermediates"]["max_normalized"] < 1e-3
    assert pair["greedy_outputs"]["compared"] == 16
    for version in ("jax", "pytorch"):
        assert (folder / version / "final" / "model.safetensors").is_file()
        assert (folder / version / "analysis_report.json").is_file()


# -- slow: the other versions, all, the demo, determinism ---------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("version", ["pytorch", "huggingface"])
def test_torch_and_hf_runs_write_the_seed_outputs(version, tmp_path):
    folder = tmp_path / f"results_{version}"
    printed = run_main(["--version", version, *TINY, *NUMBERS, "--tgt_lang", "de,fr",
                        "--output_dir", str(folder), "--visualize", "--debug"])
    summary = assert_run_folder(folder, version)
    assert f"=== --debug: {version} forward pass" in printed
    metrics = summary["eval_metrics"]  # 16 held-out pairs, 8 per language
    assert metrics["exact_match"] == pytest.approx(
        (metrics["exact_match_de"] + metrics["exact_match_fr"]) / 2)
    assert "exact_match_fr" in printed


@pytest.mark.slow
def test_all_compares_three_versions(tmp_path):
    folder = tmp_path / "results_all"
    printed = run_main(["--version", "all", *TINY, "--dropout", "0", "--output_dir",
                        str(folder), "--visualize"])
    for version in ("jax", "pytorch", "huggingface"):
        assert_run_folder(folder / version, version)
    assert "=== jax vs pytorch ===" in printed and "=== jax vs huggingface ===" in printed
    report = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
    for pair in report["pairs"]:
        assert pair["initial_intermediates"]["max_normalized"] < 1e-5
        assert pair["loss"]["first_abs_diff"] < 1e-5
    assert_image(folder / "jax_vs_huggingface" / "visualizations" / "parity"
                 / "intermediate_errors.png")


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["char", "wordpiece", "bpe"])
def test_same_seed_same_numbers(tokenizer, tmp_path):
    runs = []
    for name in ("a", "b"):  # separate processes, as two invocations of the command are
        folder = tmp_path / name
        done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--version", "jax", *TINY,
                               "--tokenizer", tokenizer, "--output_dir", str(folder)], cwd=ROOT,
                              env={**os.environ, "MPLBACKEND": "Agg"}, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        flat, _ = spec.load_checkpoint(folder / "final")
        runs.append(((folder / "metrics.jsonl").read_text(encoding="utf-8"), flat))
    assert runs[0][0] == runs[1][0]
    for key in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][key], runs[1][1][key])


def test_resume_reads_the_saved_tokenizer(tmp_path):
    import tasks

    other = tasks.build_tokenizer(["zyx wvu"], "char")  # ids unlike the task's own
    args = cli_args.parse_args(["--task", "reverse", "--train_size", "16", "--eval_size", "4",
                                "--tokenizer", "char", "--output_dir", str(tmp_path)])
    assert configs.build_task(args).tokenizer != other
    other.save(configs.tokenizer_folder(args))
    args.resume = True
    assert configs.build_task(args).tokenizer == other


@pytest.mark.slow
def test_resume_continues_the_run(tmp_path):
    folder = tmp_path / "results_jax"
    tiny = [*TINY, "--tokenizer", "char"]  # deterministic ids for the uninterrupted run too
    run_main(["--version", "jax", *tiny, "--max_steps", "2", "--output_dir", str(folder)])
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    run_main(["--version", "jax", *tiny, "--max_steps", "4", "--output_dir", str(folder),
              "--resume"])
    records = [json.loads(line) for line in
               (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    run_main(["--version", "jax", *tiny, "--max_steps", "4", "--output_dir",
              str(tmp_path / "whole")])
    whole = [json.loads(line) for line in
             (tmp_path / "whole" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["loss"] for r in records if r["split"] == "train"] == \
        [r["loss"] for r in whole if r["split"] == "train"]


@pytest.mark.slow
def test_wandb_logs_offline_without_a_login(tmp_path):
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), MPLBACKEND="Agg")  # no ~/.netrc login
    folder = tmp_path / "results_jax"
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--version", "jax", *TINY,
                           "--max_steps", "2", "--output_dir", str(folder), "--wandb",
                           "--wandb_project", "lab-test"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert runs, sorted(p.name for p in folder.rglob("*"))[:20]


@pytest.mark.slow
def test_analysis_demo(tmp_path):
    folder = tmp_path / "results_analysis"
    run_main(["--version", "analysis", "--output_dir", str(folder)])
    for name in SEED_FILES + ["report.html"]:
        assert (folder / name).is_file(), name
    assert_image(folder / "visualizations" / "attention" / "attention_evolution.png")


# -- slow: kill -9 and --resume, in every version ------------------------------------------------
# Tiny and fast, but long enough (40 steps, evaluated after each) that a SIGKILL sent once the
# second checkpoint is on disk lands mid-run.  Dropout stays on: the resumed RNG state matters.
KILLABLE = ["--task", "reverse", "--max_len", "12", "--train_size", "64", "--eval_size", "8",
            "--hidden_size", "32", "--num_layers", "1", "--num_heads", "2", "--batch_size", "8",
            "--max_steps", "40", "--save_steps", "4", "--eval_every", "1", "--log_every", "1",
            "--tokenizer", "char", "--beam_size", "1", "--quiet"]


def complete_checkpoints(folder: Path, version: str) -> list[int]:
    """The steps whose checkpoint is completely written, in each trainer's own layout."""
    marker = {"jax": "{}/_CHECKPOINT_METADATA", "pytorch": "step_{}/trainer_state.pt",
              "huggingface": "checkpoint-{}/transformer_lab_meta.json"}[version]
    root = folder / "checkpoints"
    if not root.is_dir():
        return []
    steps = (int("".join(c for c in p.name if c.isdigit()) or -1) for p in root.iterdir())
    return sorted(s for s in steps if s >= 0 and (root / marker.format(s)).is_file())


def truncate_weights(folder: Path, version: str, step: int) -> None:
    """Cut the weights file(s) of checkpoint `step` to half their size."""
    root = folder / "checkpoints"
    files = {"jax": sorted((root / str(step) / "state").rglob("d/*")),
             "pytorch": [root / f"step_{step}" / "model.safetensors"],
             "huggingface": [root / f"checkpoint-{step}" / "model.safetensors"]}[version]
    assert files and all(f.is_file() for f in files), files
    for f in files:
        f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def cli(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT,
                            env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in
            (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("version", ["jax", "pytorch", "huggingface"])
def test_kill_9_then_resume_logs_the_uninterrupted_losses(version, tmp_path, capsys):
    """A real SIGKILL of `main.py` mid-run, its newest checkpoint then truncated; `--resume`
    says it falls back to the previous one and logs exactly what an uninterrupted run logs."""
    import signal
    import time

    flags = ["--version", version, *KILLABLE]
    whole = cli([*flags, "--output_dir", str(tmp_path / "whole")])
    killed_dir = tmp_path / "killed"
    killed = cli([*flags, "--output_dir", str(killed_dir)])
    deadline = time.monotonic() + 900
    while len(complete_checkpoints(killed_dir, version)) < 2:
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (killed_dir / "final").exists()  # it died before the end
    saved = complete_checkpoints(killed_dir, version)
    # metrics.jsonl kept every line up to the kill: steps 1.. in order, past the checkpoints
    logged = [r["step"] for r in records(killed_dir) if r["split"] == "train"]
    assert logged == list(range(1, len(logged) + 1)) and saved[-1] <= logged[-1] < 40
    _, err = whole.communicate(timeout=900)
    assert whole.returncode == 0, err[-3000:]

    truncate_weights(killed_dir, version, saved[-1])
    resumed = cli([*flags, "--output_dir", str(killed_dir), "--resume"])
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-3000:]
    assert re.search(rf"resume: the checkpoint of step {saved[-1]} in \S+ is unreadable "
                     rf"\(.+\); falling back to step {saved[-2]}", out), out
    assert f"resume: continuing from the checkpoint of step {saved[-2]}" in out
    want, got = records(tmp_path / "whole"), records(killed_dir)
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    # Bit-exact in every version: the same batches, the restored optimizer, schedule and
    # dropout RNG states, the same float32 arithmetic in the same order.
    assert got == want

    # Resuming into that folder with other model or data flags: one line naming the field.
    for change, field in [(["--hidden_size", "48"], r"--hidden_size.*d_model 32 -> 48"),
                          (["--dropout", "0.2"], r"--dropout.*dropout_rate 0.0 -> 0.2"),
                          (["--train_size", "72"], r"--train_size.*train_size 64 -> 72")]:
        with pytest.raises(SystemExit) as exit_info:
            main.main([*flags, *change, "--output_dir", str(killed_dir), "--resume"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert re.match(rf"main.py: error: argument {field}", err.strip().splitlines()[-1]), err
        assert "Traceback" not in err

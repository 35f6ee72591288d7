"""The error catalogue: each case is an argv or a call and the message it must give."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

import main
import spec
import training

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
     r"from the checkpoint's: dropout_rate 0.1 -> 0.2"),
    (["--train_size", "48"],
     r"argument --train_size: cannot resume: data field\(s\) \['train_size'\] differ from the "
     r"checkpoint's: train_size 32 -> 48"),
    (["--seed", "1"], r"argument --seed: cannot resume: .*seed 0 -> 1"),
    (["--task", "copy"], r"cannot resume: data field\(s\) \[.*'task'.*\] .*task 'reverse' -> "
                         r"'copy'"),
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

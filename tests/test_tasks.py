"""tasks: data generation, tokenizers, batches, corpora and metrics (framework-free)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import tasks
from spec import TransformerConfig
from tasks.numbers import alphabet_texts

SAMPLES = {  # hand-checked num2words outputs after normalisation
    "en": "one hundred and twenty-three thousand four hundred and fifty-six",
    "de": "neunhundertzweiunddreißigtausendachthundertvierundfünfzig",
    "fr": "quatre-vingt-dix-neuf mille deux cent zéro élève",  # accents, hyphens, spaces
    "ko": "구십구만 구천구백구십구",
}


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() == {"src", "tgt_in", "labels"}
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# -- framework-free ---------------------------------------------------------------------------
def test_import_pulls_in_no_framework():
    code = ("import sys, tasks; t = tasks.build_task('copy', train_size=4, eval_size=2); "
            "next(t.batches('train', 2)); tasks.bleu(['a b'], ['a b']); "
            "print(sorted(m for m in ('jax', 'torch', 'transformers', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- number words -----------------------------------------------------------------------------
@pytest.mark.parametrize("n, lang, words", [
    (21, "de", "einundzwanzig"),
    (1_000_000, "de", "eine million"),       # num2words capitalises Million
    (80, "fr", "quatre-vingts"),
    (71, "fr", "soixante et onze"),
    (81, "fr", "quatre-vingt-un"),
    (21, "ko", "이십일"),                       # 2 x 10 + 1
    (21_000, "ko", "이만 천"),                  # 2 x 10^4, 10^3: Korean groups by 10^4
    (10_000, "ko", "만"),
    (123_456, "en", SAMPLES["en"]),           # the comma num2words writes is removed
])
def test_number_words_hand_checked(n, lang, words):
    assert tasks.number_words(n, lang) == words


def test_normalize_lowercases_and_single_spaces():
    assert tasks.normalize("  Eine   Million,\tdrei ") == "eine million drei"


def test_number_pairs_are_deterministic_and_held_out():
    a = tasks.number_pairs(train_size=300, eval_size=100, seed=3, max_number=1000)
    b = tasks.number_pairs(train_size=300, eval_size=100, seed=3, max_number=1000)
    c = tasks.number_pairs(train_size=300, eval_size=100, seed=4, max_number=1000)
    assert a[0] == b[0] and a[1] == b[1]
    assert a[0] != c[0]
    train, held, train_n, eval_n = a
    assert len(train) == 300 and len(held) == 100
    assert len(set(eval_n.tolist())) == 100                          # distinct
    assert not set(train_n.tolist()) & set(eval_n.tolist())          # disjoint
    assert not {s for s, _ in train} & {s for s, _ in held}
    assert train[0] == (tasks.number_words(train_n[0], "en"),
                        tasks.number_words(train_n[0], "de"))


def test_numbers_are_drawn_by_magnitude():
    """A training number's digit count d in 1..6 drawn with probability d / 21, so every
    count is represented and the long ones get the most rows; at most a fifth of a count's
    numbers held out (2 of 10, 18 of 90), never 0; the rest of the eval set shared evenly;
    training never sees a held-out number."""
    from tasks.numbers import digit_weights, draw_numbers, held_out_counts

    train, held = draw_numbers(60_000, 500, 0, 1_000_000)
    assert held_out_counts(500, 1_000_000) == [2, 18, 120, 120, 120, 120]
    digits = np.array([len(str(n)) for n in train.tolist()])
    share = np.bincount(digits, minlength=7)[1:] / len(train)        # [6] digit counts 1..6
    np.testing.assert_allclose(digit_weights(1_000_000), np.arange(1, 7) / 21)
    np.testing.assert_allclose(digit_weights(1000), [1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(share, np.arange(1, 7) / 21, atol=0.006)  # 2,857 .. 17,143
    assert np.bincount([len(str(n)) for n in held.tolist()], minlength=7)[1:].tolist() == [
        2, 18, 120, 120, 120, 120]
    assert train.min() == 0 and 0 not in held and held.max() < 1_000_000
    assert len(set(held.tolist())) == 500 and not set(held.tolist()) & set(train.tolist())
    one_digit = set(train[digits == 1].tolist())
    assert one_digit == set(range(10)) - set(held.tolist())          # the 8 others, all seen
    assert len(one_digit) == 8
    assert held_out_counts(6, 100) == [2, 4] and held_out_counts(7, 1001) == [2, 2, 3, 0]


def test_numbers_summary_names_the_draw():
    """The draw is part of a run's data identity, so `--resume` refuses older folders."""
    from tasks.numbers import NUMBER_DRAW

    task = tasks.build_task("numbers", train_size=30, eval_size=6, seed=0)
    assert task.summary()["number_draw"] == NUMBER_DRAW
    assert "number_draw" not in tasks.build_task("copy", train_size=4, eval_size=2).summary()


def test_many_number_words_are_made_in_worker_processes_in_order(monkeypatch):
    from tasks import numbers

    kw = dict(train_size=200, eval_size=40, seed=5, tgt_langs=("de", "fr"))
    monkeypatch.setattr(numbers, "PARALLEL_MIN", 10**9)
    serial = numbers.number_pairs(**kw)
    monkeypatch.setattr(numbers, "PARALLEL_MIN", 100)  # 480 conversions: split over processes
    calls = []
    monkeypatch.setattr(numbers, "_words_chunk", lambda jobs: calls.append(len(jobs)) or [])
    numbers._many_words([(1, "de")] * 50)  # under the threshold: one in-process chunk
    assert calls == [50]
    monkeypatch.undo()
    monkeypatch.setattr(numbers, "PARALLEL_MIN", 100)
    parallel = numbers.number_pairs(**kw)
    assert parallel[0] == serial[0] and parallel[1] == serial[1]


def test_many_number_words_from_a_script_on_stdin():
    """Spawned workers re-run the main script, which `python - < script` does not have on disk:
    the words are then made in-process, not lost to a BrokenProcessPool."""
    from pathlib import Path

    from tasks import numbers

    code = ("import os\n"
            "os.sched_getaffinity = lambda pid: {0, 1}  # as on a machine with workers to use\n"
            "import tasks.numbers as n\n"
            "print(n._workers_can_start(), n._many_words([(i, 'de') for i in "
            "range(n.PARALLEL_MIN)])[-1])\n")
    done = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", numbers.number_words(numbers.PARALLEL_MIN - 1, "de")]


def test_numbers_range_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match=r"eval_size=5 is too large for max_number=10: at most "
                                         r"2 numbers can be held out"):
        tasks.build_task("numbers", train_size=8, eval_size=5, max_number=10)
    with pytest.raises(ValueError, match=r"max_number=1 is too small"):
        tasks.build_task("numbers", train_size=8, eval_size=0, max_number=1)


def test_unknown_languages_and_tasks_are_named():
    with pytest.raises(ValueError, match=r"tgt_langs='xx'.*known languages"):
        tasks.build_task("numbers", tgt_langs=("de", "xx"), train_size=2, eval_size=1)
    with pytest.raises(ValueError, match=r"src_lang='zz'"):
        tasks.build_task("numbers", src_lang="zz", train_size=2, eval_size=1)
    with pytest.raises(ValueError, match=r"unknown task 'translate'.*copy, reverse, sort, numbers"):
        tasks.build_task("translate")


def test_multilingual_sources_start_with_the_language_token():
    task = tasks.build_task("numbers", train_size=30, eval_size=6, seed=0,
                            tgt_langs=("de", "fr", "ko"), max_number=5000)
    tok = task.tokenizer
    assert tok.lang_tokens == ("<2de>", "<2fr>", "<2ko>")
    assert [tok.backend.token_to_id(t) for t in tok.lang_tokens] == [4, 5, 6]
    for i, (src, tgt) in enumerate(task.train_pairs[:6]):
        lang = ("de", "fr", "ko")[i % 3]
        n = task.info["train_numbers"][i]
        assert src == f"<2{lang}>" + tasks.number_words(n, "en")
        assert tgt == tasks.number_words(n, lang)
        ids = task.encoded("train")[0][i]
        assert ids[0] == 4 + i % 3 and tok.decode(ids) == src[5:]
    assert task.target_languages("eval") == ["de", "fr", "ko"] * 2
    assert task.target_languages("train")[:4] == ["de", "fr", "ko", "de"]
    one = tasks.build_task("numbers", train_size=3, eval_size=2, tgt_langs=("fr",))
    assert one.target_languages("eval") is None  # one language: the overall score is its score


# -- synthetic tasks --------------------------------------------------------------------------
def test_synthetic_tasks_transform_and_hold_out():
    train, held = tasks.synthetic_pairs("sort", train_size=50, eval_size=20, seed=1,
                                        min_length=2, max_length=5)
    assert all(t == "".join(sorted(s)) and 2 <= len(s) <= 5 for s, t in train + held)
    assert not {s for s, _ in train} & {s for s, _ in held}
    assert len({s for s, _ in held}) == 20
    copy = tasks.build_task("copy", train_size=10, eval_size=3, seed=1, max_len=6)
    rev = tasks.build_task("reverse", train_size=10, eval_size=3, seed=1, max_len=6)
    assert [s for s, _ in copy.train_pairs] == [s for s, _ in rev.train_pairs]
    assert all(t == s and len(s) <= 5 for s, t in copy.train_pairs)
    assert all(t == s[::-1] for s, t in rev.train_pairs)
    assert max(copy.max_lengths()) <= 6


def test_synthetic_space_too_small_for_held_out_is_an_error():
    with pytest.raises(ValueError, match=r"held-out strings"):  # 36 strings of length 1
        tasks.build_task("copy", train_size=500, eval_size=10, max_len=2)


def test_same_seed_same_data_and_batches_other_seed_differs():
    kw = dict(train_size=40, eval_size=8, max_len=9)
    a, b = tasks.build_task("reverse", seed=7, **kw), tasks.build_task("reverse", seed=7, **kw)
    c = tasks.build_task("reverse", seed=8, **kw)
    assert a.train_pairs == b.train_pairs and a.eval_pairs == b.eval_pairs
    assert a.train_pairs != c.train_pairs
    assert_batches_equal(list(a.batches("train", 8, epoch=2)), list(b.batches("train", 8, 2)))
    first = next(a.batches("train", 8, epoch=0))["src"]
    assert not np.array_equal(first, next(a.batches("train", 8, epoch=1))["src"])
    assert not np.array_equal(first, next(a.batches("train", 8, epoch=0, seed=1))["src"])


# -- tokenizer --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "wordpiece", "bpe"])
def test_tokenizer_round_trip_every_language(kind):
    tok = tasks.build_tokenizer(list(SAMPLES.values()), kind, lang_tokens=("<2de>",),
                                vocab_size=120)
    assert [tok.backend.token_to_id(t) for t in tasks.SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.backend.token_to_id("<2de>") == 4
    for lang, text in SAMPLES.items():
        ids = tok.encode(text)
        assert tasks.UNK_ID not in ids, lang
        assert tok.decode(ids) == text, lang
        assert tok.decode([tasks.BOS_ID, 4, *ids, tasks.EOS_ID, 7, 8, tasks.PAD_ID]) == text
    if kind == "char":
        assert len(tok.encode(SAMPLES["ko"])) == len(SAMPLES["ko"])  # one token per character
        assert tok.tokens("élève") == ["é", "l", "è", "v", "e"]
        decomposed = "e\u0301le\u0300ve"  # NFD input is normalised to the same ids
        assert tok.encode(decomposed) == tok.encode("élève")
        assert tok.encode("!") == [tasks.UNK_ID]


def test_number_task_vocab_covers_unseen_numbers():
    task = tasks.build_task("numbers", train_size=20, eval_size=200, seed=0,
                            tgt_langs=("de", "fr", "ko"))
    src, tgt = task.encoded("eval")
    assert all(tasks.UNK_ID not in ids for ids in src + tgt)
    for (s, t), x, y in zip(task.eval_pairs, src, tgt):
        assert task.decode(y) == t and task.tokenizer.decode(x) == s[5:]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizer_save_load_and_hf(kind, tmp_path):
    tok = tasks.build_tokenizer(list(SAMPLES.values()), kind, lang_tokens=("<2de>", "<2ko>"),
                                vocab_size=120)
    tok.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    loaded = tasks.TaskTokenizer.load(tmp_path / "tok")
    assert loaded == tok and loaded.lang_tokens == ("<2de>", "<2ko>")
    assert loaded.encode(SAMPLES["fr"]) == tok.encode(SAMPLES["fr"])
    with pytest.raises(FileNotFoundError, match="missing"):
        tasks.TaskTokenizer.load(tmp_path / "missing")
    pytest.importorskip("transformers")
    hf = tasks.to_hf(tok)
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    for text in SAMPLES.values():
        ids = hf(text).input_ids
        assert ids == tok.encode(text) + [tasks.EOS_ID]
        assert hf.decode(ids, skip_special_tokens=True) == text
    assert hf("<2ko>이만").input_ids[0] == tok.backend.token_to_id("<2ko>")


def test_separate_vocabularies():
    task = tasks.build_task("numbers", train_size=20, eval_size=4, shared_vocab=False,
                            tgt_langs=("ko",))
    assert task.src_tokenizer is not task.tgt_tokenizer
    assert task.src_vocab_size != task.tgt_vocab_size
    with pytest.raises(ValueError, match="separate source and target"):
        _ = task.tokenizer
    config = task.model_config("tiny")
    assert config.share_embeddings is False
    assert (config.src_vocab_size, config.tgt_vocab_size) == (task.src_vocab_size,
                                                              task.tgt_vocab_size)


# -- batches ----------------------------------------------------------------------------------
def test_collate_layout_hand_built():
    batch = tasks.collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]])
    np.testing.assert_array_equal(batch["src"], [[5, 6, 7, 2], [8, 2, 0, 0]])
    np.testing.assert_array_equal(batch["tgt_in"], [[1, 9, 10, 0], [1, 11, 12, 13]])
    np.testing.assert_array_equal(batch["labels"], [[9, 10, 2, 0], [11, 12, 13, 2]])
    assert all(v.dtype == np.int32 for v in batch.values())
    fixed = tasks.collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_to=(6, 5))
    np.testing.assert_array_equal(fixed["src"], [[5, 6, 7, 2, 0, 0], [8, 2, 0, 0, 0, 0]])
    np.testing.assert_array_equal(fixed["labels"], [[9, 10, 2, 0, 0], [11, 12, 13, 2, 0]])
    assert tasks.collate([[5] * 9], [[6]], pad_multiple=8)["src"].shape == (1, 16)
    assert tasks.collate([[5] * 9], [[6]], pad_multiple=8)["tgt_in"].shape == (1, 8)
    with pytest.raises(ValueError, match=r"pad_to=\(3, 5\) is too short: a source needs length 4"):
        tasks.collate([[5, 6, 7]], [[9]], pad_to=(3, 5))


def test_epoch_covers_every_example_once():
    task = tasks.build_task("sort", train_size=23, eval_size=5, seed=2, max_len=7)
    for kw in ({}, {"bucket": True}):
        rows = [tuple(r) for b in task.batches("train", 4, epoch=3, **kw) for r in b["src"]]
        want = [tuple(x + [tasks.EOS_ID]) for x in task.encoded("train")[0]]
        strip = [tuple(v for v in r if v != tasks.PAD_ID) for r in rows]
        assert sorted(strip) == sorted(want)
    assert task.steps_per_epoch("train", 4) == 6 == len(list(task.batches("train", 4)))
    assert task.steps_per_epoch("train", 4, drop_last=True) == 5
    assert all(b["src"].shape[0] == 4 for b in task.batches("train", 4, drop_last=True))
    eval_batches = list(task.batches("eval", 2))  # eval is unshuffled by default
    assert task.decode_batch(eval_batches[1]["labels"]) == task.references("eval")[2:4]


def test_bucketing_reduces_padding():
    task = tasks.build_task("copy", train_size=512, eval_size=4, seed=0, max_len=30)
    def padded(**kw):
        return sum(b["src"].size for b in task.batches("train", 8, **kw))
    assert padded(bucket=True) < 0.8 * padded()


@pytest.mark.parametrize("options", [{}, {"bucket": True, "drop_last": True},
                                     {"pad_to": (12, 12)}, {"pad_multiple": 8}])
def test_resumed_batches_equal_the_uninterrupted_run(options):
    task = tasks.build_task("reverse", train_size=37, eval_size=4, seed=5, max_len=12)
    full = list(task.batches("train", 5, epoch=1, **options))
    assert_batches_equal(list(task.batches("train", 5, epoch=1, start_step=3, **options)),
                         full[3:])
    assert list(task.batches("train", 5, 1, None, len(full), **options)) == []
    run = list(task.stream("train", 5, num_epochs=3, **options))
    resumed = list(task.stream("train", 5, start_epoch=1, start_step=3, num_epochs=3, **options))
    k = next(i for i, (e, s, _) in enumerate(run) if (e, s) == (1, 3))
    assert [(e, s) for e, s, _ in resumed] == [(e, s) for e, s, _ in run[k:]]
    assert_batches_equal([b for *_, b in resumed], [b for *_, b in run[k:]])
    if "pad_to" in options:
        assert {b["src"].shape[1] for *_, b in run} == {12}


def test_bad_batch_arguments():
    task = tasks.build_task("copy", train_size=10, eval_size=2, max_len=5)
    with pytest.raises(ValueError, match=r"start_step=4 is invalid: this epoch has 3 steps"):
        task.batches("train", 4, start_step=4)
    with pytest.raises(ValueError, match=r"batch_size=0"):
        task.batches("train", 0)
    with pytest.raises(ValueError, match=r"split='test'"):
        task.batches("test", 2)
    with pytest.raises(ValueError, match=r"pad_to=\(2, 9\) is too short"):
        list(task.batches("train", 2, pad_to=(2, 9)))


def test_encode_sources_and_decode():
    task = tasks.build_task("numbers", train_size=10, eval_size=2, tgt_langs=("fr",))
    src = task.encode_sources(["twenty-one", "eighty"])
    assert src.dtype == np.int32 and src.shape == (2, 11)
    assert src[0, -1] == tasks.EOS_ID and src[1, 6] == tasks.EOS_ID and src[1, -1] == 0
    assert task.tokenizer.decode(src[0]) == "twenty-one"
    ids = task.tokenizer.encode("quatre-vingts")
    assert task.decode([*ids, tasks.EOS_ID, *ids]) == "quatre-vingts"  # stops at eos


def test_model_config_matches_the_task():
    task = tasks.build_task("numbers", train_size=50, eval_size=10, seed=0)
    config = task.model_config("tiny", d_model=64)
    assert isinstance(config, TransformerConfig)
    assert config.src_vocab_size == config.tgt_vocab_size == task.tokenizer.vocab_size
    assert (config.pad_id, config.bos_id, config.eos_id) == (0, 1, 2)
    assert config.share_embeddings and config.d_model == 64
    assert config.max_len >= max(task.max_lengths())
    with pytest.raises(ValueError, match=r"max_len=5 is too short"):
        task.model_config(max_len=5)


def test_max_len_limits():
    with pytest.raises(ValueError, match=r"max_len=20 is too short.*needs max_len >= "):
        tasks.build_task("numbers", train_size=50, eval_size=5, max_len=20)
    task = tasks.build_task("numbers", train_size=50, eval_size=5, max_len=80)
    assert max(task.max_lengths()) <= 80


# -- corpora ----------------------------------------------------------------------------------
def write(path, data: bytes | str):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def test_read_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path / "a.tsv", "src\ttgt\nhello  world\thallo welt\r\n\nyes\tja\n")
    assert tasks.read_pairs(tsv) == [("hello world", "hallo welt"), ("yes", "ja")]
    assert tasks.read_pairs(tsv, header=False)[0] == ("src", "tgt")
    rows = [{"en": "one", "ko": "일"}, {"en": "ten", "ko": "십", "extra": 1}]
    jsonl = write(tmp_path / "b.jsonl", "\n".join(json.dumps(r, ensure_ascii=False)
                                                  for r in rows))
    assert tasks.read_pairs(jsonl, src_key="en", tgt_key="ko") == [("one", "일"), ("ten", "십")]


@pytest.mark.parametrize("name, data, kwargs, message", [
    ("cols.tsv", "a\tb\nc\td\ne\n", {}, r"cols.tsv:3: expected 2 tab-separated columns.*got 1"),
    ("three.tsv", "a\tb\tc\n", {}, r"three.tsv:1: expected 2 .* got 3"),
    ("empty_tgt.tsv", "a\tb\n\nc\t  \n", {}, r"empty_tgt.tsv:3: the target \(column 2\) is empty"),
    ("bytes.tsv", b"a\tb\nc\td\ne\t\xff\xfe\n", {}, r"bytes.tsv:3: not valid UTF-8"),
    ("latin1.tsv", "a\tb\ncaf\u00e9\tx\n".encode("latin-1"), {}, r"latin1.tsv:2: not valid UTF-8"),
    ("empty.tsv", "", {}, r"empty.tsv: no source/target pairs"),
    ("blank.jsonl", "\n\n", {}, r"blank.jsonl: no source/target pairs"),
    ("key.jsonl", '{"src": "a", "tgt": "b"}\n{"src": "c"}\n', {},
     r"key.jsonl:2: missing key 'tgt'"),
    ("custom.jsonl", '{"src": "a", "tgt": "b"}\n', {"tgt_key": "de"},
     r"custom.jsonl:1: missing key 'de'"),
    ("bad.jsonl", '{"src": "a", "tgt": "b"}\n\n{"src": "c", \n', {}, r"bad.jsonl:3: not valid JSON"),
    ("list.jsonl", '["a", "b"]\n', {}, r"list.jsonl:1: expected a JSON object"),
    ("num.jsonl", '{"src": "a", "tgt": 5}\n', {}, r"num.jsonl:1: key 'tgt' must hold a string"),
    ("empty_src.jsonl", '{"src": " ", "tgt": "b"}\n', {}, r"empty_src.jsonl:1: the source"),
    ("corpus.csv", "a,b\n", {}, r"cannot tell the format"),
])
def test_bad_corpus_files_name_path_and_line(tmp_path, name, data, kwargs, message):
    path = write(tmp_path / name, data)
    with pytest.raises(ValueError, match=message):
        tasks.read_pairs(path, **kwargs)


def test_missing_corpus_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"corpus file not found: .*nope.tsv"):
        tasks.build_task("corpus", path=tmp_path / "nope.tsv")


def test_corpus_task_holds_out_sources(tmp_path):
    lines = [f"sentence {i}\tsatz {i}" for i in range(30)] + ["sentence 3\tsatz drei"]
    path = write(tmp_path / "c.tsv", "\n".join(lines) + "\n")
    a = tasks.build_task("corpus", path=path, train_size=None, eval_size=10, seed=1)
    b = tasks.build_task("corpus", path=path, train_size=None, eval_size=10, seed=1)
    assert a.train_pairs == b.train_pairs and len(a.eval_pairs) == 10
    held = {s for s, _ in a.eval_pairs}
    assert not held & {s for s, _ in a.train_pairs}
    every = tasks.read_pairs(path)
    removed = sum(src in held for src, _ in every) - 10  # the duplicate of a held-out source
    assert len(a.train_pairs) == 31 - 10 - removed
    with pytest.raises(ValueError, match=r"train_size=50 is more than"):
        tasks.build_task("corpus", path=path, train_size=50, eval_size=10)
    short = tasks.build_task("corpus", path=path, train_size=None, eval_size=10, seed=1,
                             max_len=11)  # "sentence 12" + eos is 12 characters: dropped
    dropped = short.info["dropped"]
    assert dropped["train"] == len(a.train_pairs) - len(short.train_pairs) > 0
    assert dropped["eval"] == len(a.eval_pairs) - len(short.eval_pairs)
    assert all(len(s) < 11 and len(t) < 11 for s, t in short.train_pairs + short.eval_pairs)


# -- metrics ----------------------------------------------------------------------------------
def test_metrics_hand_computed():
    assert tasks.exact_match(["a b", "c", "d"], ["a b", "x", "d"]) == pytest.approx(2 / 3)
    pred = np.array([[5, 6, 7, 9], [4, 4, 0, 0]])
    labels = np.array([[5, 8, 7, 0], [4, 3, 2, 0]])  # 6 non-pad labels, 3 right
    assert tasks.token_accuracy(pred, labels) == pytest.approx(3 / 6)
    same = ["the cat sat on the mat", "einundzwanzig", "quatre-vingts"]
    assert tasks.bleu(same, same) == pytest.approx(100.0)
    assert tasks.bleu(["einundzwanzig"], ["einundzwanzig"]) == pytest.approx(100.0)
    assert tasks.bleu(["a b c d"], ["w x y z"]) == pytest.approx(0.0)
    assert tasks.chrf(same, same) == pytest.approx(100.0)
    assert 0 < tasks.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) < 100
    assert tasks.string_metrics(same, same) == pytest.approx(
        {"exact_match": 1.0, "bleu": 100.0, "chrf": 100.0})
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        tasks.exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no token other than pad_id=0"):
        tasks.token_accuracy(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"shape \(1, 3\) differs"):
        tasks.token_accuracy(np.zeros((1, 3)), np.ones((1, 2)))


def test_alphabet_covers_the_range():
    de = {c for t in alphabet_texts(("de",), 1_000_000) for c in t}
    assert {"ß", "ü"} <= de and " " not in de   # dreißig, fünf; one compound word
    assert "m" in {c for t in alphabet_texts(("de",), 2_000_000) for c in t}  # eine million


def test_word_pieces_are_the_same_in_every_process():
    """The library's WordPiece trainer breaks frequency ties in hash order; ours must not."""
    import os
    import subprocess
    import sys

    code = ("import tasks; t = [tasks.build_task('numbers', train_size=3000, eval_size=10, "
            "seed=0, tokenizer=k, vocab_size=120) for k in ('wordpiece', 'bpe')]; "
            "print([sorted(x.tokenizer.backend.get_vocab().items()) for x in t], "
            "t[1].tokenizer.backend.to_str())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": str(s)}
                           ).stdout for s in (1, 2, 3)}
    assert len(outs) == 1


def test_learn_pieces_merges_the_most_frequent_pair_first():
    from tasks.pieces import learn_pieces

    # pairs: (a, ##b) x3 first; then (##a, ##b) and (ab, ##a) tie at 2: the smaller text wins.
    pieces = learn_pieces(["abab abab ab", "cd"], size=8)
    assert pieces == ["##a", "##b", "##d", "a", "c", "ab", "##ab", "abab"]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_vocab_smaller_than_the_alphabet_is_a_clear_error(kind):
    texts = list(SAMPLES.values())
    with pytest.raises(ValueError, match=r"vocab_size=20 is too small for these texts: the "
                                         rf"{kind} alphabet alone needs (\d+) tokens") as err:
        tasks.build_tokenizer(texts, kind, vocab_size=20)
    need = int(err.value.args[0].split("expected vocab_size >= ")[1])
    assert tasks.build_tokenizer(texts, kind, vocab_size=need).vocab_size == need


def test_byte_level_bpe_is_refused():
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate([*tasks.SPECIAL_TOKENS, "a", "b", "ab"])}
    backend = Tokenizer(models.BPE(vocab, [("a", "b")], unk_token="<unk>"))
    with pytest.raises(ValueError, match=r"end_of_word_suffix=None is not supported: expected "
                                         r"'</w>'"):
        tasks.TaskTokenizer(backend)


def test_learn_merges_marks_the_end_of_words_and_keeps_the_merge_order():
    from tasks.pieces import learn_merges

    # words "a b a b</w>" x2, "a b</w>" x1, "c d</w>" x1: (a, b</w>) occurs 3 times, (a, b)
    # and (b, a) 2; then (a, b) and (b, ab</w>) tie at 2 and the smaller text wins; then
    # (ab, ab</w>).  Every character has an inside and an end-of-word form.
    pieces, merges = learn_merges(["abab abab ab", "cd"], size=12)
    assert pieces[:8] == ["a", "a</w>", "b", "b</w>", "c", "c</w>", "d", "d</w>"]
    assert merges == [("a", "b</w>"), ("a", "b"), ("ab", "ab</w>")]
    assert pieces[8:] == ["ab</w>", "ab", "abab</w>"]  # no pair is left that occurs twice


def test_bpe_ends_every_german_number_on_a_token_that_ends_others():
    """Why `bpe` exists (tasks.pieces): WordPiece spells "zehn" alone as "z ##ehn", a last
    token that ends no training number; end-of-word BPE spells it "zehn</w>", the token that
    ends "dreizehn" and "hundertzehn" too."""
    def last_tokens(task):
        return {task.tokenizer.tokens(t)[-1] for n, (_, t) in
                zip(task.info["train_numbers"], task.train_pairs) if n != 10}

    bpe = tasks.build_task("numbers", train_size=4000, eval_size=10, seed=0, tokenizer="bpe",
                           vocab_size=300)
    tok = bpe.tokenizer
    assert tok.kind == "bpe"
    assert tok.tokens("zehn") == ["zehn</w>"]
    assert tok.tokens("dreizehn")[-1] == tok.tokens("hundertzehn")[-1] == "zehn</w>"
    assert tok.tokens("ten thousand") == ["ten</w>", "thousand</w>"]
    assert "zehn</w>" in last_tokens(bpe)
    wordpiece = tasks.build_task("numbers", train_size=4000, eval_size=10, seed=0,
                                 tokenizer="wordpiece", vocab_size=300)
    assert wordpiece.tokenizer.tokens("zehn") == ["z", "##ehn"]
    assert "##ehn" not in last_tokens(wordpiece)
    # a character seen only inside words still ends a new word without <unk>
    assert tasks.UNK_ID not in tok.encode("ß zw")

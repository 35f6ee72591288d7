"""Framework-free data: synthetic tasks, number translation, local corpora (numpy only).

Imports numpy, num2words, tokenizers and sacrebleu, never jax or torch (transformers only
inside `to_hf`), so every trainer shares the same data, batches and metrics.

    import tasks
    task = tasks.build_task("numbers", train_size=10_000, eval_size=500, seed=0,
                            tgt_langs=("de",))            # or "copy", "reverse", "sort", "corpus"
    config = task.model_config("small")                   # vocab sizes, pad/bos/eos, max_len
    for batch in task.batches("train", 64, epoch=0):      # numpy int32
        batch["src"], batch["tgt_in"], batch["labels"]    # [b, s], [b, t], [b, t]
    for epoch, step, batch in task.stream("train", 64, start_epoch=2, start_step=17): ...
    src = task.encode_sources(["twenty-one"])             # [1, s], ends with eos
    texts = task.decode_batch(tokens)                     # greedy_decode output -> strings
    tasks.string_metrics(texts, task.references("eval"))  # exact_match, bleu, chrf
    tasks.token_accuracy(logits.argmax(-1), batch["labels"])

Layout (docs/interfaces.md): src = x + [eos]; tgt_in = [bos] + y; labels = y + [eos]; all
right-padded with pad_id. Special ids are fixed: pad 0, bos 1, eos 2, unk 3 (the
spec.TransformerConfig defaults); "<2de>"-style language tokens come next.

Determinism and resume: pairs depend only on build_task's arguments; batch order only on
(seed, epoch) and the options, so `batches(split, B, epoch, seed, start_step=k)` yields exactly
the batches k, k+1, ... of an uninterrupted epoch. Fixed shapes for jit: `pad_to=task.max_lengths()`
(one shape) or `pad_multiple=8`; `drop_last=True` keeps the batch dimension fixed too.

Tokenizers: `task.tokenizer` (shared) or `task.src_tokenizer` / `task.tgt_tokenizer`;
`tok.save(folder)` / `TaskTokenizer.load(folder)` (folder/tokenizer.json); `to_hf(tok)` gives a
transformers PreTrainedTokenizerFast with the same ids (it appends eos like Marian's).
"""

from .batching import collate, epoch_plan, fit_lengths
from .corpus import read_pairs
from .metrics import bleu, chrf, exact_match, string_metrics, token_accuracy
from .numbers import DEFAULT_MAX_NUMBER, normalize, number_pairs, number_words
from .synthetic import ALPHABET, synthetic_pairs
from .task import TASK_NAMES, Task, build_task
from .tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    TaskTokenizer,
    build_tokenizer,
    lang_token,
    to_hf,
)

__all__ = [
    "ALPHABET", "BOS_ID", "DEFAULT_MAX_NUMBER", "EOS_ID", "PAD_ID", "SPECIAL_TOKENS",
    "TASK_NAMES", "Task", "TaskTokenizer", "UNK_ID", "bleu", "build_task", "build_tokenizer",
    "chrf", "collate", "epoch_plan", "exact_match", "fit_lengths", "lang_token", "normalize",
    "number_pairs", "number_words", "read_pairs", "string_metrics", "synthetic_pairs",
    "to_hf", "token_accuracy",
]

"""Tokenizers built locally with the `tokenizers` library: characters, WordPiece or BPE.

Special tokens have FIXED ids, the defaults of `spec.TransformerConfig`: pad 0, bos 1, eos 2,
unk 3; target-language tokens (`<2de>`) follow as added special tokens, then the vocabulary.
Character level is the library's default (`build_tokenizer`, `build_task`): German number
words are long compounds, which a word-level vocabulary would have to learn whole; `main.py`
defaults to sub-words, end-of-word BPE, which `tasks.pieces` learns and explains.
`TaskTokenizer.encode` returns raw ids (no specials; `tasks.batching` adds eos/bos), `decode`
stops at the first eos and drops special tokens, so `decode(encode(text)) == text` for any NFC
text whose characters are in the vocabulary (char) or whose words split into known pieces
(WordPiece, BPE; single spaces).  Under BPE a text that contains the marker `</w>` itself
does not round-trip (the decoder turns it into a space), and an unknown character at a word's
end becomes `<unk>` with the word's end, so that word runs into the next.

The backend also carries a `$A </s>` post-processor, so the Hugging Face tokenizer from
`to_hf` appends eos like Marian's does: `to_hf(tok)(text).input_ids == tok.encode(text) + [eos]`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from .pieces import SUFFIX, learn_merges, learn_pieces

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
KINDS = ("char", "wordpiece", "bpe")
TOKENIZER_FILE = "tokenizer.json"
_LANG_TOKEN = re.compile(r"<2[A-Za-z_]+>")


def lang_token(lang: str) -> str:
    """The target-language token put at the start of a multilingual source: "de" -> "<2de>"."""
    return f"<2{lang}>"


class TaskTokenizer:
    """A `tokenizers.Tokenizer` (`.backend`) whose special ids are checked to be 0..3."""

    def __init__(self, backend: Tokenizer) -> None:
        for want_id, token in enumerate(SPECIAL_TOKENS):
            got = backend.token_to_id(token)
            if got != want_id:
                raise ValueError(f"tokenizer must map special token {token!r} to id {want_id}, "
                                 f"got {got}")
        model_type = type(backend.model).__name__
        kinds = {"WordLevel": "char", "WordPiece": "wordpiece", "BPE": "bpe"}
        if model_type not in kinds:
            raise ValueError(f"tokenizer model {model_type!r} is not supported: expected a "
                             f"WordLevel (char), WordPiece or BPE model built by "
                             f"tasks.build_tokenizer")
        if model_type == "BPE" and backend.model.end_of_word_suffix != SUFFIX:
            raise ValueError(f"BPE tokenizer with end_of_word_suffix="
                             f"{backend.model.end_of_word_suffix!r} is not supported: expected "
                             f"{SUFFIX!r}, as tasks.build_tokenizer writes (byte-level BPE such "
                             f"as GPT-2's has none)")
        self.backend = backend
        self.kind = kinds[model_type]
        added = backend.get_added_tokens_decoder()
        self.lang_tokens = tuple(t.content for i, t in sorted(added.items())
                                 if t.special and t.content not in SPECIAL_TOKENS)
        self._special_ids = frozenset(i for i, t in added.items() if t.special)

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can emit, specials included: the model's vocabulary size."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without bos/eos."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first eos, with special tokens (pad, bos, languages) dropped."""
        kept = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS_ID:
                break
            if i not in self._special_ids:
                kept.append(i)
        return self.backend.decode(kept, skip_special_tokens=True)

    def decode_batch(self, rows: Iterable[Iterable[int]]) -> list[str]:
        """`decode` for each row of a `[b, t]` array (e.g. the output of greedy_decode)."""
        return [self.decode(row) for row in rows]

    def tokens(self, text: str) -> list[str]:
        """The token strings of `text` (for plot labels)."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def id_to_token(self, i: int) -> str:
        return self.backend.id_to_token(int(i))

    def save(self, folder: str | os.PathLike) -> str:
        """Write `folder/tokenizer.json`; returns its path."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, TOKENIZER_FILE)
        self.backend.save(path)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TaskTokenizer:
        """Read `folder/tokenizer.json` written by `save`."""
        path = os.path.join(folder, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            backend = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"cannot read tokenizer file {path}: {e}") from None
        return cls(backend)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskTokenizer) and self.backend.to_str() == other.backend.to_str()

    def __repr__(self) -> str:
        return (f"TaskTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
                f"lang_tokens={self.lang_tokens})")


def build_tokenizer(texts: Iterable[str], kind: str = "char", *,
                    lang_tokens: Sequence[str] = (), vocab_size: int = 1000) -> TaskTokenizer:
    """Build a tokenizer from `texts` (language tokens inside them are ignored).

    `kind="char"`: one token per (NFC) character seen in `texts`, in sorted order.
    `kind="wordpiece"`: a WordPiece vocabulary of at most `vocab_size` trained on `texts`, words
    split on whitespace only (so "quatre-vingts" keeps its hyphen and decodes exactly).
    `kind="bpe"`: byte-pair merges with an end-of-word marker (Sennrich et al. 2016, the paper's
    shared source-target vocabulary), at most `vocab_size` tokens, words split the same way.
    Why the marker's place matters for number words: `tasks.pieces`.
    """
    if kind not in KINDS:
        raise ValueError(f"tokenizer kind={kind!r} is unknown; expected one of {KINDS}")
    lang_tokens = tuple(lang_tokens)
    for t in lang_tokens:
        if not _LANG_TOKEN.fullmatch(t):
            raise ValueError(f"language token {t!r} is malformed: expected the form <2xx>")
    clean = [_LANG_TOKEN.sub("", t) for t in texts]
    specials = list(SPECIAL_TOKENS) + list(lang_tokens)
    if kind == "char":
        chars = sorted({c for text in clean for c in normalizers.NFC().normalize_str(text)})
        vocab = {tok: i for i, tok in enumerate(specials)}
        for c in chars:
            vocab[c] = len(vocab)
        backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        # Each character is its own pre-token; Fuse concatenates them back without spaces.
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
    else:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ValueError(f"vocab_size={vocab_size!r} is invalid: expected a positive integer")
        nfc = [normalizers.NFC().normalize_str(t) for t in clean]
        if kind == "wordpiece":
            pieces, merges = learn_pieces(nfc, vocab_size - len(specials)), None
        else:
            pieces, merges = learn_merges(nfc, vocab_size - len(specials))
        if len(specials) + len(pieces) > vocab_size:  # the learner never cuts the alphabet
            raise ValueError(f"vocab_size={vocab_size} is too small for these texts: the {kind} "
                             f"alphabet alone needs {len(specials) + len(pieces)} tokens, special "
                             f"tokens included; expected vocab_size >= "
                             f"{len(specials) + len(pieces)}")
        vocab = {tok: i for i, tok in enumerate([*specials, *pieces])}
        if merges is None:
            backend = Tokenizer(models.WordPiece(vocab, unk_token=UNK,
                                                 max_input_chars_per_word=200))
            backend.decoder = decoders.WordPiece(cleanup=False)
        else:
            backend = Tokenizer(models.BPE(vocab, merges, unk_token=UNK,
                                           end_of_word_suffix=SUFFIX))
            backend.decoder = decoders.BPEDecoder(suffix=SUFFIX)
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.normalizer = normalizers.NFC()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A $B {EOS}", special_tokens=[(EOS, EOS_ID)])
    for i, tok in enumerate(specials):
        if backend.token_to_id(tok) != i:  # the trainer and WordLevel both keep this order
            raise RuntimeError(f"special token {tok!r} got id {backend.token_to_id(tok)}, not {i}")
    return TaskTokenizer(backend)


def to_hf(tokenizer: TaskTokenizer) -> Any:
    """A transformers `PreTrainedTokenizerFast` sharing the vocabulary and special ids.

    transformers is imported here only, so `tasks` stays framework-free.
    """
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.backend.to_str()),
        pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        additional_special_tokens=list(tokenizer.lang_tokens),
    )
    got = (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id)
    if got != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
        raise RuntimeError(f"transformers tokenizer has special ids {got}, expected (0, 1, 2, 3)")
    return hf


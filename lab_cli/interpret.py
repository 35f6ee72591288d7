"""`main.py --version interpret --checkpoint FOLDER`: the causal analyses on a trained model.

The folder is any version's `final/` (a `spec` checkpoint plus the task's `tokenizer.json`).
Each clean/corrupt pair is two source texts that differ in one digit word and have the same
number of tokens (patching swaps values position by position).  The model translates both
greedily; the decoder input of every analysis is bos + the clean translation, and the metric
is the logit difference clean-token - corrupt-token at the first target position where the two
translations differ (`analysis.causal`).  Without `--clean/--corrupt`, two pairs from the
numbers task: the ones digit and the hundreds digit of "three hundred and forty-two".

Writes into `--output_dir`: the figures of each pair (`*_pair<k>.png`), `interpret_report.json`
(one `analysis.causal.causal_report` per pair), and `analysis_report.json` + `report.html` of
the first pair's clean input with a "Causal analyses" section.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPORT_FILE = "interpret_report.json"
BASE = "three hundred and forty-two"
DIGITS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# (word replaced in BASE, the replacements to try, in order of preference)
DEFAULT_SWAPS = (("two", ("seven", "five", "eight", "six", "nine", "four", "three", "one")),
                 ("three", ("six", "five", "seven", "eight", "four", "two", "nine", "one")))


def _swap(text: str, word: str, new: str) -> str:
    """`text` with the digit word `word` replaced by `new` (as a word or after a hyphen)."""
    words = text.split(" ")
    for i, w in enumerate(words):
        head, _, tail = w.rpartition("-")
        if w == word:
            words[i] = new
            return " ".join(words)
        if tail == word and head:
            words[i] = f"{head}-{new}"
            return " ".join(words)
    raise ValueError(f"{word!r} is not a word of {text!r}")


def default_pairs(tokenizer) -> list[tuple[str, str]]:
    """Pairs of BASE and BASE with one digit word replaced, each replacement the first of its
    list whose text has as many tokens as BASE under `tokenizer` (and no unknown token)."""
    n = len(tokenizer.encode(BASE))
    pairs = []
    for word, options in DEFAULT_SWAPS:
        for new in options:
            text = _swap(BASE, word, new)
            ids = tokenizer.encode(text)
            if len(ids) == n and tokenizer.unk_id not in ids:
                pairs.append((BASE, text))
                break
    if not pairs:
        raise ValueError(f"argument --clean: no default pair fits this tokenizer (every digit swap of {BASE!r} "
                         f"changes its token count): pass --clean and --corrupt")
    return pairs


def _source(tokenizer, text: str, flag: str, config) -> np.ndarray:
    ids = tokenizer.encode(text) + [tokenizer.eos_id]
    if tokenizer.unk_id in ids[:-1]:
        raise ValueError(f"argument {flag}: {text!r} has characters the tokenizer does not know")
    if max(ids) >= config.src_vocab_size or len(ids) > config.max_len:
        raise ValueError(f"argument {flag}: {text!r} does not fit the model (ids below "
                         f"{config.src_vocab_size}, at most {config.max_len} tokens)")
    return np.asarray([ids], np.int32)  # [1, s]


def _translation(adapter, src: np.ndarray) -> np.ndarray:
    """Greedy output up to and including eos ([n] ids)."""
    cfg = adapter.config
    out = np.asarray(adapter.decode(src, cfg.max_len - 1))[0]
    ends = np.flatnonzero(out == cfg.eos_id)
    return out[: ends[0] + 1] if ends.size else out


def make_pair(adapter, tokenizer, clean: str, corrupt: str):
    """The `analysis.causal.CausalPair` of two source texts."""
    from analysis.causal import CausalPair

    cfg = adapter.config
    src, bad = _source(tokenizer, clean, "--clean", cfg), _source(tokenizer, corrupt,
                                                                  "--corrupt", cfg)
    if src.shape != bad.shape:
        raise ValueError(f"argument --corrupt: {corrupt!r} has {bad.shape[1]} tokens and "
                         f"--clean {clean!r} {src.shape[1]}; patching needs the same count "
                         f"(tokens: {tokenizer.tokens(clean)} vs {tokenizer.tokens(corrupt)})")
    out, out_bad = _translation(adapter, src), _translation(adapter, bad)
    n = min(len(out), len(out_bad))
    differ = np.flatnonzero(out[:n] != out_bad[:n])
    if not differ.size:
        raise ValueError(f"argument --corrupt: the model translates {clean!r} and {corrupt!r} "
                         f"the same way ({tokenizer.decode(out)!r}); nothing to explain")
    p = int(differ[0])
    tgt = np.concatenate([[cfg.bos_id], out[:-1]])[None].astype(np.int32)  # [1, t]

    def names(ids):
        return [{cfg.pad_id: "<pad>", cfg.bos_id: "<s>", cfg.eos_id: "</s>"}.get(
            int(i), tokenizer.id_to_token(int(i))) for i in ids]

    labels = {"clean": clean, "corrupt": corrupt, "src": names(src[0]),
              "corrupt_src": names(bad[0]), "tgt": names(tgt[0]), "out": names(out),
              "corrupt_token": names([out_bad[p]])[0],
              "clean_translation": tokenizer.decode(out),
              "corrupt_translation": tokenizer.decode(out_bad)}
    return CausalPair(src, bad, tgt, out.astype(np.int32), p, int(out[p]), int(out_bad[p]),
                      labels)


def run(args: argparse.Namespace) -> dict:
    """The whole command; returns {"files": {caption: path}, "reports": [...]}."""
    from analysis import TransformerAnalyzer
    from analysis.analyzer import write_json
    from analysis.causal import causal_report, run_causal, write_causal_figures
    from analysis.models import adapter_from_canonical
    from analysis.outputs import write_outputs
    from spec import load_checkpoint
    from tasks.tokenizer import TaskTokenizer

    start = time.perf_counter()
    folder = Path(args.checkpoint)
    try:
        flat, config = load_checkpoint(folder)
        tokenizer = TaskTokenizer.load(folder)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"argument --checkpoint: {folder} is not a trained model's final/ "
                         f"folder: {str(e).splitlines()[0]}") from None
    adapter = adapter_from_canonical(flat, config, prefer=(args.backend,))
    texts = (list(zip(args.clean, args.corrupt)) if args.clean
             else default_pairs(tokenizer))
    out = Path(args.output_dir)
    files, reports, pairs = {}, [], []
    for k, (clean, corrupt) in enumerate(texts):
        pair = make_pair(adapter, tokenizer, clean, corrupt)
        result = run_causal(adapter, pair, ig_steps=args.ig_steps,
                            ig_tolerance=args.ig_tolerance or None)
        report = causal_report(result, pair)
        report["pair"]["clean_translation"] = pair.labels["clean_translation"]
        report["pair"]["corrupt_translation"] = pair.labels["corrupt_translation"]
        reports.append(report)
        pairs.append(pair)
        files.update(write_causal_figures(result, pair, out, tag=f"_pair{k}"))
    doc = {"checkpoint": str(folder), "implementation": adapter.name, "pairs": reports}
    files["interpret_report"] = write_json(out / REPORT_FILE, doc)
    vocab = {i: tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)}
    written = write_outputs(TransformerAnalyzer(adapter), out, pairs[0].clean_src, pairs[0].tgt,
                            vocab=vocab, figures=False, causal=reports, causal_figures=files)
    files.update({k: v for k, v in written["files"].items() if k in ("report", "html")})
    return {"files": files, "reports": reports, "seconds": time.perf_counter() - start}


def format_summary(result: dict) -> str:
    lines = []
    for r in result["reports"]:
        p, m = r["pair"], r["metric"]
        lines.append(f"{p['clean']!r} -> {p['clean_translation']!r}  vs  {p['corrupt']!r} -> "
                     f"{p['corrupt_translation']!r}: {m['name']} at target {p['position']} "
                     f"({p['clean_token']!r} - {p['corrupt_token']!r}) clean {m['clean']:.3f}, "
                     f"corrupt {m['corrupt']:.3f}")
        for h in r["top_heads"][:3]:
            lines.append(f"  {h['kind']} layer {h['layer']} head {h['head']}: patching "
                         f"{h['patching']:.2f}, attribution patching "
                         f"{h['attribution_patching']:.2f}, ablation {h['ablation']:.2f}")
        lines.append(f"  attribution patching vs patching: r = "
                     f"{_fmt(r['agreement']['all']['pearson'])}; IG completeness error "
                     f"{r['source_attribution']['completeness_max_error']:.2e} ("
                     f"{r['source_attribution']['completeness_relative_error']:.1%} of the "
                     f"largest f(x) - f(baseline), {r['source_attribution']['steps']} steps"
                     f"{_unmet(r['source_attribution'])})")
    return "\n".join(lines)


def _unmet(attribution: dict) -> str:
    """A note when IG was refined as far as allowed and still missed its tolerance."""
    if attribution["tolerance"] is None or attribution["converged"]:
        return ""
    return (f"; above --ig_tolerance {attribution['tolerance']:g} at the most steps allowed: "
            f"raise --ig_steps")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(args: argparse.Namespace) -> int:
    result = run(args)
    print(f"interpret ({result['reports'][0]['implementation']} model, "
          f"{result['seconds']:.1f} s) -> {args.output_dir}")
    print(format_summary(result))
    for label in ("interpret_report", "report", "html"):
        if label in result["files"]:
            print(f"  {label}: {result['files'][label]}")
    return 0


"""Parity results: one `Check` per compared name, a table that reads top-down like the model,
and the JSON report."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping

import numpy as np

from spec import files

from .tolerances import normalised_diff


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    pair: str                      # "torch~jax": candidate ~ reference
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""                 # why it failed when not a number (missing, shape, tokens)

    def to_json(self) -> dict:
        return {"name": self.name, "pair": self.pair, "shape": list(self.shape),
                "max_abs": self.max_abs, "max_rel": self.max_rel, "ok": self.ok,
                **({"note": self.note} if self.note else {})}


def compare(pair: str, candidate: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
            tolerance: float, order: Iterable[str] | None = None, prefix: str = "") -> list[Check]:
    """Compare two name -> array dicts.  A name on one side only is a failed check.

    `order` gives the execution order (names missing from it come after, sorted).
    """
    names = list(order) if order is not None else []
    names += sorted((set(candidate) | set(reference)) - set(names))
    checks = []
    for name in names:
        label = prefix + name
        if name not in candidate and name not in reference:
            checks.append(Check(label, pair, (), float("nan"), float("nan"), False,
                                "missing on both sides"))
            continue
        if name not in candidate or name not in reference:
            side = pair.split("~")[0 if name not in candidate else 1]
            shape = np.shape(reference.get(name, candidate.get(name)))
            checks.append(Check(label, pair, tuple(shape), float("nan"), float("nan"), False,
                                f"missing in {side}"))
            continue
        a, ref = np.asarray(candidate[name]), np.asarray(reference[name])
        if a.shape != ref.shape:
            checks.append(Check(label, pair, tuple(ref.shape), float("nan"), float("nan"),
                                False, f"shape {a.shape} vs {ref.shape}"))
            continue
        max_abs, max_rel = normalised_diff(a, ref)
        ok = bool(np.all(np.isfinite(a)) and np.all(np.isfinite(ref)) and max_rel <= tolerance)
        checks.append(Check(label, pair, tuple(ref.shape), max_abs, max_rel, ok))
    return checks


def interleave(checks: list[Check]) -> list[Check]:
    """Group rows of the same name together (torch~jax, then hf~jax, ...), keeping the order in
    which names first appear, so the table still reads top-down like the model."""
    first: dict[str, int] = {}
    for c in checks:
        first.setdefault(c.name, len(first))
    return sorted(checks, key=lambda c: first[c.name])


def compare_tokens(name: str, pair: str, candidate: np.ndarray, reference: np.ndarray) -> Check:
    """Decoded tokens must be identical; max_abs counts the positions that differ."""
    a, ref = np.asarray(candidate), np.asarray(reference)
    if a.shape != ref.shape:
        return Check(name, pair, tuple(ref.shape), float("nan"), float("nan"), False,
                     f"shape {a.shape} vs {ref.shape}")
    differ = int(np.sum(a != ref))
    return Check(name, pair, tuple(ref.shape), float(differ), float(differ) / max(ref.size, 1),
                 differ == 0, "" if differ == 0 else f"{differ} tokens differ")


def format_table(checks: list[Check], verbose: bool = True) -> str:
    """One table: name, pair, shape, max abs diff, normalised diff, verdict; then a summary.

    When anything fails, the first failing check in execution order is named before the table
    closes: that is where a porting engineer must look.
    """
    width = max([len(c.name) for c in checks] + [4])
    lines = [f"{'name':<{width}}  {'pair':<12} {'shape':<18} {'max abs':>10} {'max rel':>10}  verdict"]
    lines.append("-" * len(lines[0]))
    for c in checks:
        if not verbose and c.ok:
            continue
        shape = "x".join(map(str, c.shape)) or "scalar"
        verdict = "ok" if c.ok else f"FAIL {c.note}".rstrip()
        lines.append(f"{c.name:<{width}}  {c.pair:<12} {shape:<18} {c.max_abs:>10.2e} "
                     f"{c.max_rel:>10.2e}  {verdict}")
    failed = [c for c in checks if not c.ok]
    lines.append("")
    if failed:
        first = failed[0]
        lines.append(f"first divergence in execution order: {first.name} ({first.pair})"
                     + (f": {first.note}" if first.note else f", normalised diff {first.max_rel:.2e}"))
    lines.append(f"{len(checks)} checked, {len(failed)} failed")
    return "\n".join(lines)


def write_json(path: str | os.PathLike, checks: list[Check], extra: dict | None = None) -> None:
    data = {"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]}
    if extra:
        data.update(extra)
    files.write_json(path, data, strict=False)

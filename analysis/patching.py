"""Activation patching sweeps and attribution patching, through the adapters' intervention API.

A clean input and a corrupted one (here: two sources that differ in one word, decoded with the
same decoder input `tgt`) give two values of a metric (`spec.interventions.Metric`, e.g. the
logit difference between the clean and the corrupt answer).  A sweep rewrites one site at a
time with the other run's value and reads the metric again:

- `denoise` (default, TransformerLens' `patching.py`): run the corrupt input and put back the
  clean value at the site; a score near 1 says the site alone carries what the clean run needs.
- `noise`: run the clean input and put in the corrupt value; a score near 0 says the site is
  needed.

Score = (patched - corrupt) / (clean - corrupt) in both directions, so 1 is "behaves like the
clean run" and 0 "like the corrupt run".

Sites (docs/interfaces.md "Causal analyses"):
- heads: the h axis of `{attn}/context` (`[b, h, q, k]`), which is exactly head h's share of
  the attention output before the out projection, at every query position; one grid
  `[layers, heads]` per attention kind;
- residual (post-LN only): `{side}/layer_{i}/ffn_norm/output`, the stream after layer i, one
  position at a time; one grid `[layers, positions]` per side;
- ffn: `{side}/layer_{i}/ffn/output`, one position at a time.

Attribution patching (Nanda's gradient approximation of the same sweep) replaces each patched
forward by one first-order term: patched - base ~= sum over the site of
grad_base * (other - base), with the gradient of the metric taken in the run being patched
(one backward pass for every site).  `agreement` reports how well the two sweeps agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from spec import TransformerConfig, num_layers
from spec.interventions import Metric, patch_from

from .inputs import ATTENTION_KINDS

SITE_KINDS = ("heads", "residual", "ffn")
DIRECTIONS = ("denoise", "noise")


@dataclasses.dataclass(frozen=True)
class Site:
    """One patch site: a canonical intermediate with a head or position selection."""

    name: str
    heads: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None

    def patch(self, other: np.ndarray):
        """The intervention that gives this site `other`'s value (a capture of `name`)."""
        return patch_from(self.name, other, heads=self.heads, positions=self.positions)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A named 2-D arrangement of sites: rows are layers, columns heads or positions."""

    label: str                 # e.g. "decoder/cross_attn heads", "encoder residual"
    rows: list[str]            # row labels (layer prefixes)
    columns: list[str]         # column labels (head numbers or position indices)
    sites: list[list[Site]]    # [rows][columns]


def head_grid(config: TransformerConfig, kind: str) -> Grid:
    """Every head of one attention kind ("encoder/self_attn", ...): `[layers, heads]`."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention kind {kind!r} is unknown; expected one of {ATTENTION_KINDS}")
    side, sub = kind.split("/")
    rows = [f"{side}/layer_{i}/{sub}" for i in range(num_layers(config, side))]
    sites = [[Site(f"{r}/context", heads=(h,)) for h in range(config.num_heads)] for r in rows]
    return Grid(f"{kind} heads", rows, [str(h) for h in range(config.num_heads)], sites)


def position_grid(config: TransformerConfig, kind: str, side: str, length: int) -> Grid:
    """One site per layer x position of the residual stream (`kind="residual"`) or the FFN
    output (`kind="ffn"`) of `side` ("encoder": source positions, "decoder": target ones)."""
    if kind not in ("residual", "ffn"):
        raise ValueError(f"position site kind {kind!r} is unknown; expected residual or ffn")
    if side not in ("encoder", "decoder"):
        raise ValueError(f"side {side!r} is unknown; expected encoder or decoder")
    if kind == "residual" and config.norm_position != "post":
        raise ValueError("residual sites need norm_position='post' (the stream after a layer is "
                         "its ffn_norm/output); in pre-LN no canonical tap carries the stream "
                         "the residual adds read, so patch sites='ffn' or 'heads' instead")
    point = "ffn_norm/output" if kind == "residual" else "ffn/output"
    rows = [f"{side}/layer_{i}" for i in range(num_layers(config, side))]
    sites = [[Site(f"{r}/{point}", positions=(p,)) for p in range(length)] for r in rows]
    return Grid(f"{side} {kind}", rows, [str(p) for p in range(length)], sites)


def default_grids(config: TransformerConfig, src_len: int, tgt_len: int,
                  kinds: Sequence[str] = SITE_KINDS) -> list[Grid]:
    """The sweeps the interpret command runs: heads of each kind, then residual (post-LN) and
    FFN sites of each side."""
    bad = [k for k in kinds if k not in SITE_KINDS]
    if bad:
        raise ValueError(f"site kinds {bad} are unknown; expected some of {SITE_KINDS}")
    grids = []
    if "heads" in kinds:
        grids += [head_grid(config, kind) for kind in ATTENTION_KINDS]
    for kind in ("residual", "ffn"):
        if kind in kinds and not (kind == "residual" and config.norm_position != "post"):
            grids += [position_grid(config, kind, side, n)
                      for side, n in (("encoder", src_len), ("decoder", tgt_len))]
    return grids


@dataclasses.dataclass
class Runs:
    """The two runs a sweep interpolates between: captures and metric values."""

    clean: dict[str, np.ndarray]
    corrupt: dict[str, np.ndarray]
    clean_value: float
    corrupt_value: float

    def score(self, value: np.ndarray) -> np.ndarray:
        """(value - corrupt) / (clean - corrupt)."""
        return (np.asarray(value, np.float64) - self.corrupt_value) / (
            self.clean_value - self.corrupt_value)


def prepare(adapter, clean_src, corrupt_src, tgt, metric: Metric) -> Runs:
    """Capture both runs and evaluate the metric on each (with `metric_under`, the same path
    the sweep takes).  ValueError when the two metric values coincide: nothing to explain."""
    clean_src, corrupt_src = np.asarray(clean_src), np.asarray(corrupt_src)
    if clean_src.shape != corrupt_src.shape:
        raise ValueError(f"clean source has shape {clean_src.shape} and corrupt source "
                         f"{corrupt_src.shape}: patching needs equal shapes (same token count)")
    _, clean = adapter.run(clean_src, tgt)
    _, corrupt = adapter.run(corrupt_src, tgt)
    clean_value = float(adapter.metric_under(clean_src, tgt, metric, [[]])[0])
    corrupt_value = float(adapter.metric_under(corrupt_src, tgt, metric, [[]])[0])
    if not abs(clean_value - corrupt_value) > 1e-6 * max(1.0, abs(clean_value)):
        raise ValueError(f"metric {metric.label} is {clean_value:.6g} on the clean input and "
                         f"{corrupt_value:.6g} on the corrupt one: the inputs do not differ "
                         f"for this metric, so there is nothing to patch")
    return Runs(clean, corrupt, clean_value, corrupt_value)


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is unknown; expected one of {DIRECTIONS}")


def activation_patching(adapter, clean_src, corrupt_src, tgt, metric: Metric,
                        grids: Sequence[Grid], direction: str = "denoise",
                        runs: Runs | None = None) -> dict[str, dict]:
    """{grid label: {"values": [rows, cols] metric, "scores": normalised}} for each grid.

    Each grid is one `metric_under` call (JAX batches its sites with vmap)."""
    _check_direction(direction)
    runs = runs or prepare(adapter, clean_src, corrupt_src, tgt, metric)
    base_src, source = ((corrupt_src, runs.clean) if direction == "denoise"
                        else (clean_src, runs.corrupt))
    out = {}
    for grid in grids:
        flat = [site for row in grid.sites for site in row]
        sweep = [[site.patch(source[site.name])] for site in flat]
        values = np.asarray(adapter.metric_under(base_src, tgt, metric, sweep), np.float64)
        values = values.reshape(len(grid.rows), len(grid.columns))
        out[grid.label] = {"values": values, "scores": runs.score(values)}
    return out


def attribution_patching(adapter, clean_src, corrupt_src, tgt, metric: Metric,
                         grids: Sequence[Grid], direction: str = "denoise",
                         runs: Runs | None = None) -> dict[str, dict]:
    """The first-order estimate of `activation_patching`, same layout, from one backward pass
    of the run being patched: value ~= base + sum_site grad * (other - base)."""
    _check_direction(direction)
    runs = runs or prepare(adapter, clean_src, corrupt_src, tgt, metric)
    if direction == "denoise":
        base_src, base, other, base_value = corrupt_src, runs.corrupt, runs.clean, \
            runs.corrupt_value
    else:
        base_src, base, other, base_value = clean_src, runs.clean, runs.corrupt, runs.clean_value
    names = sorted({site.name for grid in grids for row in grid.sites for site in row})
    _, grads = adapter.intermediate_grads(base_src, tgt, metric, names=names)
    delta = {n: np.asarray(grads[n], np.float64) * (np.asarray(other[n], np.float64)
                                                    - np.asarray(base[n], np.float64))
             for n in names}
    out = {}
    for grid in grids:
        values = np.array([[base_value + float(delta[s.name][_mask(s, delta[s.name].shape)].sum())
                            for s in row] for row in grid.sites])
        out[grid.label] = {"values": values, "scores": runs.score(values)}
    return out


def _mask(site: Site, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the site's entries, full `shape` (the spec's own selection)."""
    return np.broadcast_to(site.patch(np.zeros(shape, np.float32)).selection(shape), shape)


def agreement(exact: dict[str, dict], approx: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per grid and overall: Pearson correlation, max |difference| and sign agreement of the
    normalised scores of activation patching (`exact`) and attribution patching (`approx`)."""
    out = {}
    pairs = [(label, exact[label]["scores"].ravel(), approx[label]["scores"].ravel())
             for label in exact]
    everything = ("all", np.concatenate([a for _, a, _ in pairs]),
                  np.concatenate([b for _, _, b in pairs]))
    for label, a, b in [*pairs, everything]:
        both = np.abs(a) > 0.05
        out[label] = {
            "pearson": _pearson(a, b),
            "max_abs_diff": float(np.abs(a - b).max()),
            "sign_agreement": float(np.mean(np.sign(a[both]) == np.sign(b[both])))
            if both.any() else 1.0,
        }
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Correlation, or None when either side is constant (undefined)."""
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])

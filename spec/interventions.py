"""Interventions and metrics as framework-free data (numpy only), applied identically everywhere.

An `Intervention` rewrites one canonical intermediate where the model makes it, so everything
downstream (and what capture records) sees the new value.  Every kind the lab offers reduces to
one affine rewrite of the selected entries,

    new = value * scale + shift        (scale = 1, shift = 0 outside the selection)

which `Intervention.coefficients(shape)` returns as two float32 numpy arrays broadcastable to the
value's canonical shape.  A framework applies it in one line (`x * a + b`), so JAX, torch and the
HF model cannot disagree about what a spec means:

| builder                 | selected entries become                       | scale | shift      |
|-------------------------|-----------------------------------------------|-------|------------|
| `zero_ablate`           | 0                                             | 0     | 0          |
| `mean_ablate`           | the mean of a reference capture over the batch| 0     | mean       |
| `resample_ablate`       | another input's value (rows drawn by a seed)  | 0     | other[idx] |
| `patch_from`            | another run's value (activation patching)     | 0     | other      |
| `scale`                 | value * factor                                | f     | 0          |
| `add` (steering)        | value + vector                                | 1     | vector     |

Selections: `heads` (the h axis of q/k/v/scores/weights/context), `positions` (the length axis of
the value: query positions for q/scores/weights/context/output, token positions for residual,
norm and FFN points, key positions for k/v), and `keys` (the key axis of scores/weights).

A `Metric` is a scalar of the logits, `sum(logit_weights * logits) + sum(logprob_weights *
log_softmax(logits))`, with both weight arrays `[b, t, v]`: the training loss, the log-prob of
the clean target and a logit difference are all of that form, so every framework differentiates
the same function (gradients with respect to intermediates, attribution patching, saliency).

Axis legend (spec/names.py): b batch, s source length, t target length, h heads, k head dim,
d d_model, f d_ff, v vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .config import TransformerConfig
from .names import ATTENTION_POINTS, intermediate_shapes

HEAD_POINTS = ("q", "k", "v", "scores", "weights", "context")  # values with an h axis (axis 1)
KEY_POINTS = ("scores", "weights")                             # values with a key axis (axis 3)
KINDS = ("zero", "mean", "resample", "patch", "scale", "add")


def point_of(name: str) -> str:
    """The last part of a canonical name (`q`, `weights`, `output`, ...)."""
    return name.rsplit("/", 1)[-1]


def is_attention(name: str) -> bool:
    return "_attn/" in name and point_of(name) in ATTENTION_POINTS


def position_axis(name: str) -> int:
    """The length axis of a canonical value: 2 for `[b, h, l, *]` attention points, else 1."""
    return 2 if is_attention(name) and point_of(name) in HEAD_POINTS else 1


def _indices(field: str, values: Iterable[int] | int | None) -> tuple[int, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (int(values),)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"intervention {field} must be integers, got {v!r}")
        out.append(int(v))
    if not out:
        raise ValueError(f"intervention {field} is empty; pass None to select all")
    if len(set(out)) != len(out):
        raise ValueError(f"intervention {field} {out} repeats an index")
    return tuple(out)


@dataclasses.dataclass(frozen=True, eq=False)
class Intervention:
    """One rewrite of one canonical intermediate (build it with the functions below).

    `scale` and `shift` are float32 arrays broadcastable to the value's canonical shape (a
    replacement array carries the full shape, a scalar or vector broadcasts).  `heads`,
    `positions`, `keys` restrict the rewrite; None selects the whole axis.
    """

    name: str
    kind: str
    scale: np.ndarray
    shift: np.ndarray
    heads: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None
    keys: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"intervention name must be a canonical intermediate name, got "
                             f"{self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"intervention kind {self.kind!r} is unknown; expected one of {KINDS}")
        object.__setattr__(self, "heads", _indices("heads", self.heads))
        object.__setattr__(self, "positions", _indices("positions", self.positions))
        object.__setattr__(self, "keys", _indices("keys", self.keys))
        for field in ("scale", "shift"):
            arr = np.asarray(getattr(self, field), dtype=np.float32)
            if not np.isfinite(arr).all():
                raise ValueError(f"intervention on {self.name}: {field} holds NaN or inf")
            object.__setattr__(self, field, arr)
        point = point_of(self.name)
        if self.heads is not None and not (is_attention(self.name) and point in HEAD_POINTS):
            raise ValueError(f"intervention on {self.name}: heads select the h axis, which only "
                             f"attention {HEAD_POINTS} have")
        if self.keys is not None and not (is_attention(self.name) and point in KEY_POINTS):
            raise ValueError(f"intervention on {self.name}: keys select the key axis, which only "
                             f"attention {KEY_POINTS} have")

    # -- checking against a run ----------------------------------------------------------------
    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """ValueError naming what is wrong for a run whose intermediates have `shapes`
        (`spec.intermediate_shapes(config, b, s, t)`)."""
        if self.name not in shapes:
            near = [n for n in shapes if n.endswith("/" + point_of(self.name))][:3]
            raise ValueError(f"intervention name {self.name!r} is not a canonical intermediate "
                             f"of this model (e.g. {near or list(shapes)[:3]})")
        shape = shapes[self.name]
        axes = {"heads": 1, "positions": position_axis(self.name), "keys": 3}
        for field, axis in axes.items():
            chosen = getattr(self, field)
            if chosen is None:
                continue
            size = shape[axis]
            bad = [i for i in chosen if not 0 <= i < size]
            if bad:
                raise ValueError(f"intervention on {self.name}: {field} {bad} out of range; the "
                                 f"axis has {size} entries (0..{size - 1})")
        for field in ("scale", "shift"):
            arr = getattr(self, field)
            try:
                np.broadcast_shapes(arr.shape, shape)
            except ValueError:
                raise ValueError(f"intervention on {self.name}: {field} has shape {arr.shape}, "
                                 f"which does not broadcast to the value's shape {shape}") from None
            if np.broadcast_shapes(arr.shape, shape) != tuple(shape):
                raise ValueError(f"intervention on {self.name}: {field} has shape {arr.shape}, "
                                 f"larger than the value's shape {shape}")

    # -- what a framework applies --------------------------------------------------------------
    def selection(self, shape: Sequence[int]) -> np.ndarray:
        """Boolean mask broadcastable to `shape`: True where the rewrite applies."""
        mask = np.ones([1] * len(shape), dtype=bool)
        axes = {"heads": 1, "positions": position_axis(self.name), "keys": 3}
        for field, axis in axes.items():
            chosen = getattr(self, field)
            if chosen is None:
                continue
            sel = np.zeros(shape[axis], dtype=bool)
            sel[list(chosen)] = True
            mask = mask & sel.reshape([-1 if i == axis else 1 for i in range(len(shape))])
        return mask

    def coefficients(self, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """`(scale, shift)` float32 arrays broadcastable to `shape`: new = value * scale + shift.

        Outside the selection scale is 1 and shift 0, so the value passes unchanged."""
        shape = tuple(int(n) for n in shape)
        mask = self.selection(shape)
        scale = np.where(mask, self.scale, np.float32(1.0)).astype(np.float32)
        shift = np.where(mask, self.shift, np.float32(0.0)).astype(np.float32)
        return scale, shift

    def apply_numpy(self, value: np.ndarray) -> np.ndarray:
        """The reference rewrite in numpy (tests compare the frameworks with it)."""
        scale, shift = self.coefficients(value.shape)
        return (np.asarray(value, np.float32) * scale + shift).astype(np.float32)


# -- builders --------------------------------------------------------------------------------
def zero_ablate(name: str, *, heads=None, positions=None, keys=None) -> Intervention:
    """Set the selected entries to 0."""
    return Intervention(name, "zero", np.float32(0.0), np.float32(0.0), heads, positions, keys)


def mean_ablate(name: str, reference: np.ndarray, *, over: Sequence[int] = (0,), heads=None,
                positions=None, keys=None) -> Intervention:
    """Replace the selected entries by the mean of `reference` (a capture of the same name)
    over the axes `over` (default the batch axis, as TransformerLens' mean ablation)."""
    ref = np.asarray(reference, np.float32)
    mean = ref.mean(axis=tuple(over), keepdims=True)
    return Intervention(name, "mean", np.float32(0.0), mean, heads, positions, keys)


def resample_ablate(name: str, other: np.ndarray, *, seed: int = 0, batch: int | None = None,
                    heads=None, positions=None, keys=None) -> Intervention:
    """Replace the selected entries by another input's value: row i of the run gets row
    `idx[i]` of `other` (a capture of the same name on other inputs), drawn with `seed`."""
    other = np.asarray(other, np.float32)
    rows = other.shape[0] if batch is None else int(batch)
    idx = np.random.default_rng(seed).integers(0, other.shape[0], size=rows)
    return Intervention(name, "resample", np.float32(0.0), other[idx], heads, positions, keys)


def patch_from(name: str, other: np.ndarray, *, heads=None, positions=None,
               keys=None) -> Intervention:
    """Activation patching: the selected entries take `other`'s (another run's capture)."""
    return Intervention(name, "patch", np.float32(0.0), np.asarray(other, np.float32), heads,
                        positions, keys)


def scale(name: str, factor: float | np.ndarray, *, heads=None, positions=None,
          keys=None) -> Intervention:
    """Multiply the selected entries by `factor` (a number or a broadcastable array)."""
    return Intervention(name, "scale", np.asarray(factor, np.float32), np.float32(0.0), heads,
                        positions, keys)


def add(name: str, vector: float | np.ndarray, *, heads=None, positions=None,
        keys=None) -> Intervention:
    """Steering: add `vector` (e.g. `[d]` for a residual point) to the selected entries."""
    return Intervention(name, "add", np.float32(1.0), np.asarray(vector, np.float32), heads,
                        positions, keys)


def check_interventions(interventions: Iterable[Intervention] | None, config: TransformerConfig,
                        batch: int, src_len: int, tgt_len: int) -> list[Intervention]:
    """Validate a list of interventions for one forward; at most one per name (apply two
    rewrites of one value as one combined spec, so the order is never in doubt)."""
    if interventions is None:
        return []
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    items = list(interventions)
    shapes = intermediate_shapes(config, batch, src_len, tgt_len)
    seen: set[str] = set()
    for iv in items:
        if not isinstance(iv, Intervention):
            raise ValueError(f"interventions must be spec.interventions.Intervention objects, got "
                             f"{type(iv).__name__}")
        iv.check(shapes)
        if iv.name in seen:
            raise ValueError(f"two interventions on {iv.name}; combine them into one")
        seen.add(iv.name)
    return items


# -- metrics ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Metric:
    """A scalar of the logits: sum(logit_weights * logits) + sum(logprob_weights * log_softmax).

    Both arrays are float32 `[b, t, v]` (or broadcastable).  Build with the functions below."""

    label: str
    logit_weights: np.ndarray
    logprob_weights: np.ndarray

    def __post_init__(self) -> None:
        for field in ("logit_weights", "logprob_weights"):
            arr = np.asarray(getattr(self, field), dtype=np.float32)
            if arr.ndim != 3:
                raise ValueError(f"metric {self.label}: {field} must be [b, t, v], got shape "
                                 f"{arr.shape}")
            object.__setattr__(self, field, arr)

    def check(self, logits_shape: Sequence[int]) -> None:
        for field in ("logit_weights", "logprob_weights"):
            arr = getattr(self, field)
            if np.broadcast_shapes(arr.shape, tuple(logits_shape)) != tuple(logits_shape):
                raise ValueError(f"metric {self.label}: {field} has shape {arr.shape}, not "
                                 f"broadcastable to the logits' {tuple(logits_shape)}")

    def value_numpy(self, logits: np.ndarray) -> float:
        """The reference value in float64 numpy."""
        x = np.asarray(logits, np.float64)
        z = x - x.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return float((self.logit_weights * x).sum() + (self.logprob_weights * logp).sum())


def _labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be a [b, t] integer array, got shape {arr.shape} and "
                         f"dtype {arr.dtype}")
    return arr


def loss_metric(labels: np.ndarray, vocab_size: int, pad_id: int,
                label_smoothing: float = 0.1) -> Metric:
    """The training loss (`spec.label_smoothed_cross_entropy`) as a metric: the mean over
    non-pad labels of -sum_v q_v log p_v, q = (1 - eps) onehot + eps / V."""
    labels = _labels(labels)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")
    keep = (labels != pad_id).astype(np.float32)                      # [b, t]
    count = max(float(keep.sum()), 1.0)
    q = np.full((*labels.shape, vocab_size), label_smoothing / vocab_size, np.float32)
    np.put_along_axis(q, labels[..., None], 1.0 - label_smoothing + label_smoothing / vocab_size,
                      axis=-1)
    weights = -(q * keep[..., None]) / count                          # [b, t, v]
    return Metric("loss", np.zeros((1, 1, 1), np.float32), weights)


def target_logprob(labels: np.ndarray, vocab_size: int, pad_id: int) -> Metric:
    """Sum over non-pad positions of log p(label): the log-prob of the clean target."""
    labels = _labels(labels)
    weights = np.zeros((*labels.shape, vocab_size), np.float32)
    np.put_along_axis(weights, labels[..., None], 1.0, axis=-1)
    weights *= (labels != pad_id)[..., None]
    return Metric("target_logprob", np.zeros((1, 1, 1), np.float32), weights)


def logit_diff(batch: int, tgt_len: int, vocab_size: int, position: int | Sequence[int],
               correct: int | Sequence[int], wrong: int | Sequence[int]) -> Metric:
    """Sum over rows of logit[row, position, correct] - logit[row, position, wrong]; each of
    `position`, `correct`, `wrong` is one value for every row or one per row."""
    weights = np.zeros((batch, tgt_len, vocab_size), np.float32)
    pos, good, bad = (np.broadcast_to(np.asarray(a), (batch,)) for a in (position, correct, wrong))
    for field, arr, size in (("position", pos, tgt_len), ("correct", good, vocab_size),
                             ("wrong", bad, vocab_size)):
        if ((arr < 0) | (arr >= size)).any():
            raise ValueError(f"logit_diff {field} {arr.tolist()} out of range [0, {size})")
    rows = np.arange(batch)
    weights[rows, pos, good] += 1.0
    weights[rows, pos, bad] -= 1.0
    return Metric("logit_diff", weights, np.zeros((1, 1, 1), np.float32))

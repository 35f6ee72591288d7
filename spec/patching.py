"""How a `patch=` mapping is checked and laid out for a forward or a decode (numpy only).

Every implementation takes the same `patch`: `{canonical_name: fn(value) -> value}` with the
framework's own functions, or `{canonical_name: spec.interventions.Intervention}`.  This module
is the one place that validates the mapping and turns interventions into coefficient arrays
(`new = value * scale + shift`), so jax, torch and the HF model rewrite the same entries:

* a forward uses the full-shape coefficients (`forward_plan`);
* a decode runs one query position per step (`decode_plan`).  Each name then follows one of
  three rules (`decode_rule`): "full" (encoder values, cross-attention k/v: made once from the
  whole source), "step" (every other decoder value and the logits: the position axis is cut to
  the step's position, and the self-attention key axis to the keys cached so far) and "cache"
  (decoder self-attention k/v: the value at the tap is the whole cache, so its position axis
  covers the cached keys).  Caches keep the raw projections and the rewrite is applied where
  the value is read, so a patched decode equals patched full forwards on its own prefix.

Beam search runs `batch * beams` rows (beams of one sentence adjacent); coefficients with a
per-example batch axis are repeated per beam (`decode_plan(..., beams=K)`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .config import TransformerConfig
from .interventions import KEY_POINTS, Intervention, point_of, position_axis
from .names import intermediate_shapes

Coefficients = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (scale, shift)


def _split(patch: Mapping | None, shapes: Mapping[str, tuple[int, ...]]
           ) -> tuple[dict[str, Callable], dict[str, Intervention]]:
    if patch is None:
        return {}, {}
    if not isinstance(patch, Mapping):
        raise ValueError(f"patch must be a mapping {{canonical_name: fn or Intervention}}, got "
                         f"{type(patch).__name__}")
    fns: dict[str, Callable] = {}
    ivs: dict[str, Intervention] = {}
    for name, value in patch.items():
        if name not in shapes:
            near = [n for n in shapes if isinstance(name, str) and n.endswith(
                "/" + name.rsplit("/", 1)[-1])][:3]
            raise ValueError(f"patch name {name!r} is not a canonical intermediate of this model "
                             f"(e.g. {near or list(shapes)[:3]})")
        if isinstance(value, Intervention):
            if value.name != name:
                raise ValueError(f"patch[{name!r}] is an intervention on {value.name!r}; the key "
                                 f"must be the intervention's name")
            value.check(shapes)
            ivs[name] = value
        elif callable(value):
            fns[name] = value
        else:
            raise ValueError(f"patch[{name!r}] must be a function or an Intervention, got "
                             f"{type(value).__name__}")
    return fns, ivs


def as_patch(interventions) -> dict[str, Intervention]:
    """A list of interventions (or None) -> the `patch` mapping `{iv.name: iv}`."""
    if interventions is None:
        return {}
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    out: dict[str, Intervention] = {}
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise ValueError(f"interventions must be spec.interventions.Intervention objects, "
                             f"got {type(iv).__name__}")
        if iv.name in out:
            raise ValueError(f"two interventions on {iv.name}; combine them into one")
        out[iv.name] = iv
    return out


def forward_plan(patch: Mapping | None, config: TransformerConfig, batch: int, src_len: int,
                 tgt_len: int) -> tuple[dict[str, Callable], Coefficients]:
    """Checked `(functions, {name: (scale, shift)})` of a full forward; coefficients are float32
    arrays broadcastable to the canonical shapes of `(batch, src_len, tgt_len)`."""
    shapes = intermediate_shapes(config, batch, src_len, tgt_len)
    fns, ivs = _split(patch, shapes)
    return fns, {name: iv.coefficients(shapes[name]) for name, iv in ivs.items()}


def decode_rule(name: str) -> str:
    """"full", "step" or "cache": how a decode feeds `name`'s coefficients (module docstring)."""
    if not name.startswith("decoder/") and name != "logits":
        return "full"
    if "/cross_attn/" in name and point_of(name) in ("k", "v"):
        return "full"
    if "/self_attn/" in name and point_of(name) in ("k", "v"):
        return "cache"
    return "step"


def _rows(arr: np.ndarray, beams: int) -> np.ndarray:
    """Repeat a per-example batch axis for each beam (row = example * beams + beam)."""
    if beams == 1 or arr.ndim == 0 or arr.shape[0] == 1:
        return arr
    return np.repeat(arr, beams, axis=0)


def in_decoder(name: str) -> bool:
    """Whether a decode step (not the one encoder pass) makes `name`."""
    return name.startswith("decoder/") or name == "logits"


def decode_plan(patch: Mapping | None, config: TransformerConfig, batch: int, src_len: int,
                max_len: int, beams: int = 1) -> tuple[dict[str, Callable], Coefficients]:
    """Checked `(functions, coefficients)` of a decode of `max_len` steps.

    Coefficients are the full-forward ones for a target of length `max_len` (position p = the
    step that feeds query position p).  The encoder runs once on the `batch` source rows; the
    decoder's batch axis is repeated per beam.  Implementations cut the decoder's per step with
    `step_slice` (torch) or the same rule in `lax` (jax)."""
    fns, coeffs = forward_plan(patch, config, batch, src_len, max_len)
    return fns, {n: (_rows(a, beams), _rows(b, beams)) if in_decoder(n) else (a, b)
                 for n, (a, b) in coeffs.items()}


def step_slice(name: str, arr: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The coefficients of a decoder call that feeds query positions `start..stop-1` against a
    cache of `stop` positions (one step: `stop = start + 1`), cut by `decode_rule(name)`;
    size-1 (broadcast) axes stay as they are."""
    rule = decode_rule(name)
    if rule == "full" or arr.ndim == 0:
        return arr
    axis = position_axis(name)
    if rule == "cache":
        return arr.take(range(stop), axis=axis) if arr.shape[axis] != 1 else arr
    if arr.shape[axis] != 1:
        arr = arr.take(range(start, stop), axis=axis)
    if "/self_attn/" in name and point_of(name) in KEY_POINTS and arr.shape[3] != 1:
        arr = arr[..., :stop]
    return np.ascontiguousarray(arr)


def check_result(name: str, before_shape: tuple, after: object) -> None:
    """A patch function must return a value of the shape it got."""
    shape = getattr(after, "shape", None)
    if shape is None or tuple(shape) != tuple(before_shape):
        raise ValueError(f"patch for {name} returned {type(after).__name__} of shape "
                         f"{None if shape is None else tuple(shape)}; expected the value's shape "
                         f"{tuple(before_shape)}")

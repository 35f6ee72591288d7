"""Every tolerance the parity suite uses, in one place, each with the reason for its value.

Differences are normalised as `max|a - b| / max(1, max|ref|)`: absolute for values of order one
or less (probabilities, LayerNorm outputs), relative for large ones (scaled embeddings, logits of
a trained model), so one number can serve every intermediate.
"""

from __future__ import annotations

from spec.compare import normalised_diff  # noqa: F401  (parity's measure, re-exported)

# float32 forward intermediates.  Both frameworks compute the same float32 math at full matmul
# precision; only summation order differs (XLA vs ATen kernels), which costs a few ulps per
# reduction.  The tiny model's deepest value passes ~10 reductions, far below 1e-5.
FORWARD = 1e-5

# Gradients of the loss: backpropagation doubles the depth of the computation and sums over the
# batch, so rounding accumulates further than in the forward pass; still float32-exact math.
GRADIENT = 1e-5

# Parameters after each Adam step.  Adam divides by sqrt(v) + eps, so a gradient that is zero in
# exact arithmetic but rounding noise in float32 (the key-projection bias: softmax is invariant to
# adding q.b_k to every score) becomes a step of up to lr in a random direction.  The parity run
# therefore uses eps = 1e-6 (OPTIMIZER_EPS) so such noise (~1e-9) moves a parameter by ~1e-3 * lr.
OPTIMIZER = 1e-5
OPTIMIZER_EPS = 1e-6

# Decoded tokens must be identical: a single flipped argmax is a real divergence.
TOKENS = 0.0

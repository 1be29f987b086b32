"""Channel sums for XLA:CPU: BatchNorm's statistics and gradients, a convolution's bias gradient.

XLA:CPU reduces an activation over (N, H, W) slowly when the summand is a fusion (a gradient times an input, a
ReLU's or a max pool's backward re-derived inside the reduction). Here the sums go over the batch axis first, into
a stored [H·W·C] row, then over the positions, with the cotangent read from a buffer. Every function computes
what its plain counterpart in models/layers.py computes, to float rounding (tests/test_runtime.py). Measurements:
docs/bench/history.md, "The CPU runtime's own notes", items 6 and 7.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def materialized(x: jax.Array) -> jax.Array:
    """`x` itself, through a conditional XLA cannot see through: its operand has to be a buffer, so the consumer
    reads the stored values instead of a copy of the fusion that made them (both branches return `x`: v * 1
    is v for every float, NaN and infinities included)."""
    return jax.lax.cond(jnp.isfinite(x.reshape(-1)[0]), lambda v: v, lambda v: v * 1, x)


def channel_sum(v: jax.Array) -> jax.Array:
    """Σ over every axis but the last, in float32: the batch axis first (whole rows, read along the grain), then
    the positions of the [H·W, C] remainder."""
    v = v.astype(jnp.float32)
    if v.ndim < 3:
        return jnp.sum(v, axis=0) if v.ndim == 2 else v
    # the first stage stored: left to itself XLA merges the two back into the slow reduction over (N, H, W)
    rows = materialized(v.reshape(v.shape[0], -1).sum(0))
    return rows.reshape(-1, v.shape[-1]).sum(0)


@jax.custom_vjp
def batch_moments(x32: jax.Array) -> tuple[jax.Array, jax.Array]:
    """BatchNorm's per-channel mean and biased variance (two passes, as `layers.LayerOps.batch_moments`)."""
    n = x32.size // x32.shape[-1]
    mean = channel_sum(x32) / n
    return mean, channel_sum(jnp.square(x32 - mean)) / n


def _batch_moments_fwd(x32):
    mean, var = batch_moments(x32)
    return (mean, var), (x32, mean)


def _batch_moments_bwd(residuals, cotangents):
    # d mean/dx = 1/n; d var/dx = 2 (x − mean)/n (the mean's own term sums to zero): no reduction at all
    x32, mean = residuals
    d_mean, d_var = cotangents
    return ((d_mean + 2 * d_var * (x32 - mean)) / (x32.size // x32.shape[-1]),)


batch_moments.defvjp(_batch_moments_fwd, _batch_moments_bwd)


@jax.custom_vjp
def scale_shift(x: jax.Array, mul: jax.Array, shift: jax.Array) -> jax.Array:
    """x · mul + shift per channel (BatchNorm's output), whose gradients for mul and shift are `channel_sum`s."""
    return x * mul + shift


def _scale_shift_fwd(x, mul, shift):
    return scale_shift(x, mul, shift), (x, mul, shift)  # shift only for its dtype: a per-channel vector


def _scale_shift_bwd(residuals, g):
    x, mul, shift = residuals
    g = materialized(g)  # read from a buffer by all three, not re-derived (a max pool's backward) inside each
    d_x = (g * mul).astype(x.dtype)
    d_mul = channel_sum(g.astype(jnp.float32) * x.astype(jnp.float32))  # float32 products, whatever the dtype
    return d_x, d_mul.astype(mul.dtype), channel_sum(g).astype(shift.dtype)


scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)


@jax.custom_vjp
def bias_add(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y + bias over the last axis (a convolution's bias), whose gradient for the bias is a `channel_sum` of the
    stored cotangent."""
    return y + bias


def _bias_add_fwd(y, bias):
    return y + bias, bias  # the bias only for its dtype: a per-channel vector


def _bias_add_bwd(bias, g):
    return g, channel_sum(materialized(g)).astype(bias.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)

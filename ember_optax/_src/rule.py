"""Ember's rule, once: the moving averages, the bias correction and the scaled direction.

The dense transformation (``transform.py``) and the touched-rows step
(``sparse.py``) both build on these, so the two cannot drift apart.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from ember_optax._src.squared_sums import statistics_dtype

# Below this, the scalar statistic is treated as zero: it only guards the
# division when every gradient so far was exactly zero.
MIN_SCALE = 1e-30


def decay_constants(b2: Any) -> tuple[Any, Any]:
  """``log(b2)`` and ``1 - b2``, in double precision when ``b2`` is a Python number.

  Rounding b2 = 0.999 to float32 first would put a 1e-5 relative error into
  ``1 - b2`` and into the bias correction; the reference implementation
  computes both in double precision.
  """
  if isinstance(b2, int | float):
    return (math.log(b2) if b2 > 0 else -math.inf), 1.0 - b2
  b2 = jnp.asarray(b2)
  return jnp.log(b2), 1 - b2


def zeros_reduced(param: jax.Array, axis: int | tuple[int, ...]) -> jax.Array:
  """Statistics-dtype zeros shaped (and sharded) like ``param`` summed over ``axis``."""
  # Going through eval_shape keeps sharding-in-types, as optax.factorized does.
  target = jax.eval_shape(lambda x: jnp.sum(x.astype(statistics_dtype(x.dtype)), axis=axis), param)
  return jnp.zeros_like(target)


def decay_over(steps: jax.Array, log_b2: Any, dtype: Any) -> jax.Array:
  """``b2**steps``: how much a statistic left alone for ``steps`` steps has decayed."""
  return jnp.exp(steps.astype(dtype) * jnp.asarray(log_b2, dtype))


def bias_correction(count: jax.Array, log_b2: Any, dtype: Any) -> jax.Array:
  """``1 - b2**count``, accurate for ``b2`` near 1 where the power loses digits."""
  return -jnp.expm1(count.astype(dtype) * jnp.asarray(log_b2, dtype))


def moving_average(
  statistic: jax.Array, squared_mean: jax.Array, decay: Any, rate: Any
) -> jax.Array:
  """``decay * statistic + rate * squared_mean``: one step of an exponential moving average."""
  return decay * statistic + rate * squared_mean


def column_rms(col: jax.Array, scale: jax.Array, correction: jax.Array) -> jax.Array:
  """``sqrt(col / (max(scale, MIN_SCALE) * (1 - b2**t)))``, one value per column.

  With the row statistic's square root, ``sqrt(vhat_ij) = sqrt(row_i) *
  column_rms_j``: two vectors, so the elementwise pass is a single division
  with no table-sized intermediate.
  """
  return jnp.sqrt(col / (jnp.maximum(scale, MIN_SCALE) * correction)[..., None])


def scaled_direction(
  grad: jax.Array, row: jax.Array, col_rms: jax.Array, eps: Any, row_axis: int = -2
) -> jax.Array:
  """``grad / (sqrt(row_i) * col_rms_j + eps)`` in the statistics' dtype.

  Args:
    grad: the gradient, ``(..., V, D)`` (or the touched rows, ``(M, D)``).
    row: its row statistic, ``grad.shape[:-1]``.
    col_rms: :func:`column_rms`, ``grad.shape`` without ``row_axis``.
    eps: added to the denominator.
    row_axis: the axis ``row`` indexes.

  Returns:
    The rescaled gradient, in the statistics' dtype.
  """
  denominator = jnp.sqrt(row)[..., None] * jnp.expand_dims(col_rms, row_axis) + eps
  return grad.astype(row.dtype) / denominator

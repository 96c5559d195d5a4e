"""Row-wise RMSprop, the peer practitioners pick for token tables instead of Ember.

One exponential moving average of each token's mean squared gradient (``V`` floats per table), no
momentum, bias-corrected: the table optimizer of nanochat and of later modded-nanogpt records.
Ember differs from it by its column statistic (``D`` floats) and the scalar that normalizes the
two; this is the baseline that shows what the column statistic buys.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ember_optax


class ScaleByRowRmsState(NamedTuple):
  """State of :func:`scale_by_row_rms`: the step count and one statistic per token and table."""

  count: chex.Array
  row: optax.Updates


def token_axis(shape: tuple[int, ...], vocab_size: int) -> int:
  """The axis of ``shape`` that indexes tokens: its one axis of size ``vocab_size``.

  Example:
    >>> token_axis((8192, 128), 8192), token_axis((128, 8192), 8192)
    (0, 1)
  """
  axes = [axis for axis, size in enumerate(shape) if size == vocab_size]
  if len(axes) != 1:
    found = 'no axis' if not axes else f'{len(axes)} axes'
    raise ValueError(
      f'a token table of shape {shape} has {found} of size vocab_size={vocab_size}; '
      'row-wise RMSprop needs exactly one'
    )
  return axes[0]


def scale_by_row_rms(
  vocab_size: int, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
  """Rescales each token's row of the gradient by the RMS of that row's past gradients.

  For a table with gradient ``G`` whose token axis is ``i`` and other axes ``j``:
  ``v_i <- b2 v_i + (1 - b2) mean_j G_ij^2`` and the update is
  ``G_ij / (sqrt(v_i / (1 - b2^t)) + eps)``, in float32 for low-precision tables.

  Args:
    vocab_size: the vocabulary size, which names each table's token axis.
    b2: decay rate of the moving average, in ``[0, 1)``.
    eps: term added to the denominator.

  Returns:
    An :class:`optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_by_row_rms(vocab_size=1000)
    >>> state = tx.init({'head': jnp.zeros((64, 1000))})
    >>> state.row['head'].shape
    (1000,)
  """
  if not 0 <= b2 < 1:
    raise ValueError(f'b2 must be in [0, 1), got {b2}')

  def stat_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)

  def init_fn(params: optax.Params) -> ScaleByRowRmsState:
    def row(param):
      size = np.shape(param)[token_axis(np.shape(param), vocab_size)]
      return jnp.zeros((size,), stat_dtype(param.dtype))

    return ScaleByRowRmsState(jnp.zeros([], jnp.int32), jax.tree.map(row, params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    bias_correction = 1 - b2 ** count.astype(jnp.float32)

    def update_leaf(grad, row):
      axis = token_axis(grad.shape, vocab_size)
      others = tuple(a for a in range(grad.ndim) if a != axis)
      g = grad.astype(row.dtype)
      row = b2 * row + (1 - b2) * jnp.mean(g * g, axis=others)
      rms = jnp.sqrt(row / bias_correction.astype(row.dtype))
      shape = [1] * grad.ndim
      shape[axis] = -1
      return (g / (rms.reshape(shape) + eps)).astype(grad.dtype), row

    results = jax.tree.map(update_leaf, updates, state.row)
    is_pair = lambda x: isinstance(x, tuple) and len(x) == 2  # noqa: E731
    new_updates = jax.tree.map(lambda pair: pair[0], results, is_leaf=is_pair)
    row = jax.tree.map(lambda pair: pair[1], results, is_leaf=is_pair)
    return new_updates, ScaleByRowRmsState(count, row)

  return optax.GradientTransformation(init_fn, update_fn)


def rowwise(
  learning_rate: optax.ScalarOrSchedule,
  vocab_size: int,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  """Row-wise RMSprop with decoupled weight decay (as AdamW's), scaled by ``learning_rate``.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {'embed': jnp.ones((1000, 64))}
    >>> tx = rowwise(1e-2, vocab_size=1000)
    >>> updates, _ = tx.update({'embed': jnp.ones((1000, 64))}, tx.init(params), params)
    >>> round(float(updates['embed'][0, 0]), 6)
    -0.01
  """
  return optax.chain(
    scale_by_row_rms(vocab_size, b2=b2, eps=eps),
    optax.add_decayed_weights(weight_decay),
    optax.scale_by_learning_rate(learning_rate),
  )


class SparseRowRmsState(NamedTuple):
  """State of :func:`sparse_rowwise` for a ``(V, D)`` table.

  ``row[i]`` is row ``i``'s statistic as of step ``last_step[i]``; it is decayed by
  ``b2**(count - last_step[i])`` when the row is next touched.
  """

  count: chex.Array
  row: chex.Array
  last_step: chex.Array


def sparse_rowwise(
  learning_rate: optax.ScalarOrSchedule, *, b2: float = 0.999, eps: float = 1e-8
) -> ember_optax.SparseRowTransformation:
  """Row-wise RMSprop on the touched rows of a table: the sparse peer of ``sparse_ember``.

  The rule of :func:`rowwise` (without weight decay), applied exactly as ``sparse_ember`` applies
  Ember's: gradients of the gathered rows in, duplicates summed, each touched row's statistic
  decayed lazily over the steps it sat untouched, updates of the touched rows out. What the
  speedrun's and nanochat's row-wise table updates do, in the same harness as Ember.

  Example:
    >>> import jax.numpy as jnp
    >>> import ember_optax
    >>> tx = sparse_rowwise(1e-2)
    >>> table = jnp.zeros((1000, 4))
    >>> grads = ember_optax.IndexedRows(jnp.array([7, 7]), jnp.ones((2, 4)))
    >>> updates, state = tx.update(grads, tx.init(table), table)
    >>> updates.ids.tolist(), [round(float(x), 6) for x in updates.rows[0]]
    ([7, 1000], [-0.01, -0.01, -0.01, -0.01])
  """
  if not 0 <= b2 < 1:
    raise ValueError(f'b2 must be in [0, 1), got {b2}')
  log_b2 = float(np.log(b2)) if b2 > 0 else -np.inf

  def init_fn(table: jax.Array) -> SparseRowRmsState:
    row = jnp.zeros(table.shape[:1], jnp.promote_types(table.dtype, jnp.float32))
    return SparseRowRmsState(jnp.zeros([], jnp.int32), row, jnp.zeros_like(row, jnp.int32))

  def update_fn(grads, state, table=None):
    del table
    num_rows = state.row.shape[0]
    touched, valid = ember_optax.sum_duplicate_rows(grads, num_rows)
    count = optax.safe_increment(state.count)
    last_step = state.last_step.at[touched.ids].get(mode='fill', fill_value=0)
    row_before = state.row.at[touched.ids].get(mode='fill', fill_value=0)
    decay = jnp.exp((count - last_step).astype(row_before.dtype) * log_b2)
    row = decay * row_before + (1 - b2) * jnp.mean(touched.rows * touched.rows, axis=-1)
    correction = 1 - b2 ** count.astype(row.dtype)
    direction = touched.rows / (jnp.sqrt(row / correction)[:, None] + eps)
    direction = jnp.where(valid[:, None], direction, 0).astype(grads.rows.dtype)
    step_size = learning_rate(state.count) if callable(learning_rate) else learning_rate
    new_state = SparseRowRmsState(
      count,
      state.row.at[touched.ids].set(row, mode='drop'),
      # max(last_step, count) is count, written so that XLA updates the vector in place.
      state.last_step.at[touched.ids].set(jnp.maximum(last_step, count), mode='drop'),
    )
    return ember_optax.IndexedRows(touched.ids, -step_size * direction), new_state

  return ember_optax.SparseRowTransformation(init_fn, update_fn)

"""Ember's exact step on the touched rows of a table, ``sparse_ember``."""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ember_optax._src import checks, rule
from ember_optax._src.squared_sums import statistics_dtype


class IndexedRows(NamedTuple):
  """Rows of a ``(V, D)`` table, by index.

  As a gradient, ``rows[k]`` is the gradient of the row ``table[ids[k]]``
  that the forward pass gathered: ``ids`` of any shape (a batch of tokens)
  and ``rows`` of shape ``ids.shape + (D,)``. Repeated ids add up, as they do
  in the dense gradient; ids outside ``[0, V)`` (a padding id such as ``-1``
  or ``V``) are ignored. As an update (from :func:`sparse_ember`), ``ids`` are
  distinct and ``rows`` is ``(len(ids), D)``; slots that hold no row carry the
  id ``V`` and a zero row.
  """

  ids: jax.Array
  rows: jax.Array


class SparseEmberState(NamedTuple):
  """State of :func:`sparse_ember` for a ``(V, D)`` table.

  ``row[i]`` is row ``i``'s statistic as of the step ``last_step[i]`` that last
  touched it; Ember's statistic now is ``row[i] * b2**(count - last_step[i])``
  (:func:`sparse_ember_row_statistic`), applied when the row is next touched.
  ``col`` and ``scale`` are Ember's, up to date.
  """

  count: chex.Array  # Number of steps taken.
  row: chex.Array  # (V,) EMA of each row's mean squared gradient, as of last_step.
  last_step: chex.Array  # (V,) int32: the count at which each row was last touched; 0: never.
  col: chex.Array  # (D,) EMA of each column's mean squared gradient, over all V rows.
  scale: chex.Array  # () EMA of the table's mean squared gradient.


class SparseRowTransformation(NamedTuple):
  """A pair of pure functions, as :class:`optax.GradientTransformation`, for row gradients.

  Built by :func:`sparse_ember` (whose state is a :class:`SparseEmberState`), and by any other
  optimizer of table rows that follows the same contract.

  Attributes:
    init: ``init(table) -> state``.
    update: ``update(grads, state, table=None) -> (updates, state)``, with
      ``grads`` and ``updates`` as :class:`IndexedRows`; apply the updates with
      :func:`apply_row_updates`.
  """

  init: Callable[[jax.Array], Any]
  update: Callable[..., tuple[IndexedRows, Any]]


def sum_duplicate_rows(grads: IndexedRows, num_rows: int) -> tuple[IndexedRows, jax.Array]:
  """Sums the gradients of repeated ids: the touched rows of the dense gradient.

  The result has static shapes: as many slots as ``grads`` has ids, the
  distinct valid ids first in increasing order, then padding slots with id
  ``num_rows`` and zero rows. Rows are summed in the statistics' dtype (float32
  for bfloat16 gradients).

  Args:
    grads: ids of any shape and their rows, ``ids.shape + (D,)``.
    num_rows: the table's number of rows ``V``; ids outside ``[0, V)`` are
      dropped.

  Returns:
    ``(touched, valid)``: the distinct ids and their summed rows, ``(N,)`` and
    ``(N, D)`` for ``N`` ids in ``grads``, and a boolean ``(N,)`` mask of the
    slots that hold a row.

  Example:
    >>> import jax.numpy as jnp
    >>> import ember_optax
    >>> grads = ember_optax.IndexedRows(jnp.array([3, 1, 3]), jnp.ones((3, 2)))
    >>> touched, valid = ember_optax.sum_duplicate_rows(grads, num_rows=5)
    >>> touched.ids.tolist(), touched.rows[:, 0].tolist(), valid.tolist()
    ([1, 3, 5], [1.0, 2.0, 0.0], [True, True, False])
  """
  width = np.shape(grads.rows)[-1]
  ids = jnp.reshape(grads.ids, (-1,))
  rows = jnp.reshape(grads.rows, (-1, width)).astype(statistics_dtype(grads.rows.dtype))
  in_range = (ids >= 0) & (ids < num_rows)
  ids = jnp.where(in_range, ids, num_rows)
  rows = jnp.where(in_range[:, None], rows, 0)
  size = ids.shape[0]
  unique, slot = jnp.unique(ids, size=size, fill_value=num_rows, return_inverse=True)
  summed = jnp.zeros((size, width), rows.dtype).at[jnp.reshape(slot, (-1,))].add(rows)
  return IndexedRows(unique, summed), unique < num_rows


def apply_row_updates(table: jax.Array, updates: IndexedRows) -> jax.Array:
  """Adds row updates to a table: ``table[ids] += rows``, in place when the table is donated.

  The counterpart of :func:`optax.apply_updates` for :class:`IndexedRows`:
  slots whose id is outside the table (the padding of :func:`sparse_ember`'s
  updates) change nothing. Inside ``jax.jit`` with the table donated
  (``donate_argnums``), XLA writes the touched rows in place; without donation
  it copies the whole table every step.

  Args:
    table: the ``(V, D)`` table.
    updates: distinct ids and their ``(N, D)`` updates.

  Returns:
    The updated table, in its own dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> import ember_optax
    >>> table = jnp.zeros((4, 2))
    >>> updates = ember_optax.IndexedRows(jnp.array([2, 4]), jnp.ones((2, 2)))
    >>> ember_optax.apply_row_updates(table, updates)[:, 0].tolist()
    [0.0, 0.0, 1.0, 0.0]
  """
  rows = jnp.asarray(updates.rows)
  return table.at[updates.ids].add(rows.astype(table.dtype), mode='drop')


def sparse_ember_row_statistic(state: SparseEmberState, b2: float = 0.999) -> jax.Array:
  """Every row's statistic as dense :func:`ember` holds it: ``row * b2**(count - last_step)``.

  Reads all ``V`` rows: for checkpoints, diagnostics and comparisons, not for
  the training step.

  Args:
    state: a :class:`SparseEmberState`.
    b2: the decay rate the optimizer was built with.

  Returns:
    The ``(V,)`` row statistic at step ``state.count``.

  Example:
    >>> import jax.numpy as jnp
    >>> import ember_optax
    >>> optimizer = ember_optax.sparse_ember(1e-2, b2=0.5)
    >>> table = jnp.zeros((3, 2))
    >>> state = optimizer.init(table)
    >>> for ids in ([0, 1], [1, 1]):  # row 0 touched at step 1, row 1 at steps 1 and 2
    ...   grads = ember_optax.IndexedRows(jnp.array(ids), jnp.ones((2, 2)))
    ...   _, state = optimizer.update(grads, state)
    >>> ember_optax.sparse_ember_row_statistic(state, b2=0.5).tolist()
    [0.25, 2.25, 0.0]
  """
  log_b2, _ = rule.decay_constants(b2)
  return state.row * rule.decay_over(state.count - state.last_step, log_b2, state.row.dtype)


def sparse_ember(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
) -> SparseRowTransformation:
  r"""Ember on the rows of a table that a batch touched: exact, at a cost flat in its size.

  Given the gradients of the rows the forward pass gathered (never a dense
  ``(V, D)`` gradient), returns the updates of those rows that :func:`ember`
  would make. The step is exact because Ember keeps no first moment: a row
  with no gradient at a step does not move, its row statistic only decays by
  ``b2``, and it adds nothing to the column statistic or the scalar. So
  untouched rows are left alone, and a row's statistic is decayed lazily, by
  ``b2`` to the power of the steps since it was last touched, when it is
  touched again. The work per step is the touched rows times ``D`` plus
  ``D``; the state is two ``(V,)`` vectors (row statistic and last step), a
  ``(D,)`` vector and two scalars.

  Repeated ids in a batch add up, as in the dense gradient. Shapes are static
  under ``jax.jit``: the updates have one slot per id in ``grads``, the
  distinct ids first, then padding that :func:`apply_row_updates` drops.
  Statistics are float32 (float64 for float64 tables) and updates come back
  in the gradient's dtype. Donate the table and the state through the train
  step (``jax.jit(..., donate_argnums=...)``) so that XLA updates them in
  place instead of copying them.

  Weight decay (``weight_decay > 0``) is applied to the touched rows only, as
  row-wise sparse optimizers do: dense :func:`ember` also shrinks every
  untouched row by ``1 - lr * weight_decay`` each step, which no step flat in
  the table's size can do without rescaling the rows at every lookup. With
  ``weight_decay = 0`` (the default) the result equals dense :func:`ember` on
  the same gradients, to float32 round-off.

  Args:
    learning_rate: A fixed learning rate or an Optax schedule of the step count.
    b2: Decay rate of the second-moment statistics, in ``[0, 1)``.
    eps: Term added to the denominator, ``>= 0``.
    weight_decay: Decoupled weight decay on the touched rows, ``>= 0``.

  Returns:
    A :class:`SparseRowTransformation` whose ``update(grads, state, table)``
    takes and returns :class:`IndexedRows`; ``table`` is needed only with
    weight decay.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import ember_optax
    >>> table = jax.random.normal(jax.random.PRNGKey(0), (100_000, 64))
    >>> optimizer = ember_optax.sparse_ember(learning_rate=1e-2)
    >>> state = optimizer.init(table)
    >>> ids = jnp.array([[5, 7, 5], [9, 5, 7]])
    >>> def loss_fn(rows):
    ...   return jnp.mean(rows ** 2)
    >>> @jax.jit
    ... def step(table, state, ids):
    ...   rows = table[ids]                   # (2, 3, 64), the only rows used
    ...   loss, row_grads = jax.value_and_grad(loss_fn)(rows)
    ...   grads = ember_optax.IndexedRows(ids, row_grads)
    ...   updates, state = optimizer.update(grads, state, table)
    ...   return ember_optax.apply_row_updates(table, updates), state, loss
    >>> new_table, state, loss = step(table, state, ids)
    >>> bool(jnp.all(new_table[:5] == table[:5]))  # untouched rows do not move
    True

  References:
    *Token Geometry* (arXiv:2607.01455).
  """
  checks.check_non_negative('learning_rate', learning_rate)
  checks.check_decay('b2', b2)
  checks.check_non_negative('eps', eps)
  checks.check_non_negative('weight_decay', weight_decay)
  log_b2, one_minus_b2 = rule.decay_constants(b2)

  def init_fn(table: jax.Array) -> SparseEmberState:
    _check_table(table)
    # Statistics laid out like the table's axes they keep (sharded rows keep sharded statistics).
    row = rule.zeros_reduced(table, 1)
    return SparseEmberState(
      count=jnp.zeros([], jnp.int32),
      row=row,
      last_step=jnp.zeros_like(row, jnp.int32),
      col=rule.zeros_reduced(table, 0),
      scale=jnp.zeros([], row.dtype),
    )

  def update_fn(
    grads: IndexedRows,
    state: SparseEmberState,
    table: jax.Array | None = None,
    **extra_args: Any,
  ) -> tuple[IndexedRows, SparseEmberState]:
    del extra_args
    num_rows, width = state.row.shape[0], state.col.shape[0]
    _check_grads(grads, num_rows, width)
    if weight_decay != 0 and table is None:
      raise ValueError(
        'sparse_ember: weight_decay is non-zero, so update needs the table: '
        'call update(grads, state, table).'
      )
    dtype = state.row.dtype
    decay = jnp.asarray(b2, dtype)
    rate = jnp.asarray(one_minus_b2, dtype)
    count = optax.safe_increment(state.count)
    correction = rule.bias_correction(count, log_b2, dtype)

    touched, valid = sum_duplicate_rows(grads, num_rows)
    squared = touched.rows * touched.rows
    row_sums = jnp.sum(squared, axis=-1)
    col_sums = jnp.sum(squared, axis=0)
    last_step = state.last_step.at[touched.ids].get(mode='fill', fill_value=0)
    row_before = state.row.at[touched.ids].get(mode='fill', fill_value=0)
    # Each touched row's statistic, decayed over the steps it sat untouched, then this step's.
    row_decay = rule.decay_over(count - last_step, log_b2, dtype)
    row = rule.moving_average(row_before, row_sums / width, row_decay, rate)
    # Untouched rows add zeros to the column sums: averaging over all V rows needs only V.
    col = rule.moving_average(state.col, col_sums / num_rows, decay, rate)
    scale = rule.moving_average(state.scale, jnp.sum(col_sums) / (num_rows * width), decay, rate)
    col_rms = rule.column_rms(col, scale, correction)
    direction = rule.scaled_direction(touched.rows, row, col_rms, eps)
    direction = jnp.where(valid[:, None], direction, 0).astype(grads.rows.dtype)
    if weight_decay != 0:
      current = table.at[touched.ids].get(mode='fill', fill_value=0)
      direction = direction + weight_decay * current
    step_size = learning_rate(state.count) if callable(learning_rate) else learning_rate
    updates = jnp.asarray(-step_size, direction.dtype) * direction
    new_state = SparseEmberState(
      count=count,
      row=state.row.at[touched.ids].set(row, mode='drop'),
      # max(last_step, count) is count. Written as a function of the value read, the write
      # happens in place: a constant written where another op reads makes XLA copy all V.
      last_step=state.last_step.at[touched.ids].set(jnp.maximum(last_step, count), mode='drop'),
      col=col,
      scale=scale,
    )
    return IndexedRows(touched.ids, updates), new_state

  return SparseRowTransformation(init_fn, update_fn)


def _check_table(table: Any) -> None:
  shape, dtype = np.shape(table), getattr(table, 'dtype', None)
  if len(shape) != 2:
    raise ValueError(
      f'sparse_ember: the table has shape {shape}; it needs two axes (rows, width). Give '
      f'each table of a stack its own optimizer state, or reshape it to (rows, width).'
    )
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f'sparse_ember: the table has dtype {dtype}; only floating-point tables can be trained.'
    )


def _check_grads(grads: Any, num_rows: int, width: int) -> None:
  if not isinstance(grads, IndexedRows):
    raise TypeError(
      f'sparse_ember: update takes the gradients as ember_optax.IndexedRows(ids, rows), '
      f'got {type(grads).__name__}. Differentiate the loss with respect to the gathered '
      f'rows table[ids] and pass IndexedRows(ids, row_grads).'
    )
  ids_shape, rows_shape = np.shape(grads.ids), np.shape(grads.rows)
  if not jnp.issubdtype(grads.ids.dtype, jnp.integer):
    raise TypeError(f'sparse_ember: ids have dtype {grads.ids.dtype}; they must be integers.')
  if rows_shape != ids_shape + (width,):
    raise ValueError(
      f'sparse_ember: row gradients of shape {rows_shape} for ids of shape {ids_shape}; '
      f'the state was built for a table of width {width}, so they must be '
      f'{ids_shape + (width,)} (one row per id).'
    )
  del num_rows

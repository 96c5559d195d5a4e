"""Ember's factored second-moment scaling, ``scale_by_ember``."""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ember_optax._src import checks, layout, paths, routing, rule
from ember_optax._src.squared_sums import squared_sums, statistics_dtype


class ScaleByEmberState(NamedTuple):
  """State of :func:`scale_by_ember`.

  For a leaf of shape ``(..., V, D)`` (leading axes are independent stacked
  tables) ``row`` has shape ``(..., V)``, ``col`` ``(..., D)`` and ``scale``
  ``(...)``. For a leaf of fewer than two dimensions ``row`` has the leaf's
  shape and holds the elementwise EMA of the squared gradient, and ``col`` and
  ``scale`` are scalar placeholders.
  """

  count: chex.Array  # Number of steps taken, shared by every leaf.
  row: optax.Updates  # EMA of the mean squared gradient of each row.
  col: optax.Updates  # EMA of the mean squared gradient of each column.
  scale: optax.Updates  # EMA of the mean squared gradient of the whole table.


TokenAxis = int | Callable[[str, Any], int | None] | None


def scale_by_ember(
  b2: float = 0.999,
  eps: float = 1e-8,
  *,
  vocab_size: int | None = None,
  token_axis: TokenAxis = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates by Ember's factored second-moment estimate.

  For each table ``W`` of shape ``(V, D)`` with gradient ``G`` at step ``t``,
  Ember keeps a row statistic, a column statistic and a scalar:

  .. math::
    r_i \leftarrow \beta_2 r_i + (1-\beta_2)\,\mathrm{mean}_j G_{ij}^2, \quad
    c_j \leftarrow \beta_2 c_j + (1-\beta_2)\,\mathrm{mean}_i G_{ij}^2, \quad
    s \leftarrow \beta_2 s + (1-\beta_2)\,\mathrm{mean}_{ij} G_{ij}^2,

  and returns :math:`G_{ij} / (\sqrt{\hat v_{ij}} + \epsilon)` with
  :math:`\hat v_{ij} = r_i c_j / (\max(s, 10^{-30})(1-\beta_2^t))`.
  The column statistic averages over every row, including rows whose gradient is
  zero at this step (tokens absent from the batch).

  A leaf with more than two dimensions is factored over two axes, its *row
  axis* and its last axis, and its other axes index independent tables. The
  row axis is the token axis when that is known (from ``vocab_size`` or
  ``token_axis``) and is not one of the last two, else the second-to-last
  axis. So per-layer tables stacked by ``nn.scan``, ``(L, V, D)``, are ``L``
  tables ``(V, D)``; and Gemma 4's per-layer token table ``(V, L, P)``, given
  ``vocab_size=V``, is ``L`` tables ``(V, P)``: ``L (V + P + 1)`` statistics,
  where the last two axes would need ``V (L + P + 1)``. A leaf with fewer than
  two dimensions (a bias or a scalar routed to Ember) gets the same rule
  unfactored: :math:`\hat v = v / (1-\beta_2^t)` with :math:`v` the
  elementwise EMA of :math:`G^2`.

  Statistics are kept in float32 (float64 for float64 parameters) and updates
  are returned in the gradient's dtype. A ``(V, D)`` table costs ``V + D + 1``
  statistics; the step count is shared by all leaves.

  Args:
    b2: Decay rate of the exponential moving averages, in ``[0, 1)``.
    eps: Term added to the denominator outside the square root, ``>= 0``.
    vocab_size: If given, a leaf's token axis is its axis of this size (one of
      its last two if it has one there). Only tables of three or more
      dimensions need it.
    token_axis: The token axis instead: an int for every leaf, or a function
      ``token_axis(path, leaf) -> int | None`` of the leaf's path
      (``'a/b/c'``) and its parameter (at ``init``) or gradient (at
      ``update``).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`; extra keyword arguments to
    ``update`` are accepted and ignored.

  Example:
    >>> import jax.numpy as jnp
    >>> import ember_optax
    >>> params = {'embedding': jnp.ones((1000, 64))}
    >>> tx = ember_optax.scale_by_ember()
    >>> state = tx.init(params)
    >>> state.row['embedding'].shape, state.col['embedding'].shape
    ((1000,), (64,))
    >>> grads = {'embedding': jnp.full((1000, 64), 0.5)}
    >>> updates, state = tx.update(grads, state, params)
    >>> per_layer = {'table': jnp.ones((1000, 4, 16))}  # (V, L, P)
    >>> state = ember_optax.scale_by_ember(vocab_size=1000).init(per_layer)
    >>> state.row['table'].shape, state.col['table'].shape, state.scale['table'].shape
    ((1000, 4), (4, 16), (4,))

  References:
    *Token Geometry* (arXiv:2607.01455), the Ember optimizer for token tables.
  """
  checks.check_decay('b2', b2)
  checks.check_non_negative('eps', eps)
  if token_axis is not None and not callable(token_axis):
    checks.check_static_int('token_axis', token_axis)
  if not isinstance(vocab_size, jax.core.Tracer):
    routing.static_vocab_size(vocab_size, 'scale_by_ember')  # Checked now, not at init.

  def known_token_axis(path: tuple[Any, ...], leaf: Any) -> int | None:
    if callable(token_axis):
      return token_axis(paths.param_path(path), leaf)
    if token_axis is not None:
      return int(token_axis)
    size = routing.static_vocab_size(vocab_size, 'scale_by_ember')
    shape = np.shape(leaf)
    if size is None or size in shape[-2:]:
      return None
    return shape.index(size) if size in shape else None

  def row_axis_of(path: tuple[Any, ...], leaf: Any) -> int:
    try:
      return layout.row_axis(np.shape(leaf), known_token_axis(path, leaf))
    except ValueError as error:
      raise ValueError(f'scale_by_ember: parameter {paths.path_str(path)!r}: {error}') from None

  def is_static() -> bool:
    # Under optax.inject_hyperparams numbers arrive as arrays, traced under jit.
    return not any(isinstance(x, jax.core.Tracer) for x in (vocab_size, token_axis))

  def init_fn(params: optax.Params) -> ScaleByEmberState:
    if not jax.tree.leaves(params):
      # No table: an empty parameter group, or the leafless stand-in for the
      # params that optax.tree.map_params probes init with. Each statistic is a
      # single leaf, so map_params finds no parameter-shaped tree in the state.
      stand_in = jnp.zeros(())
      return ScaleByEmberState(jnp.zeros([], jnp.int32), stand_in, stand_in, stand_in)
    checks.check_float_params(params, 'scale_by_ember')

    def init_row(param, row_axis):
      if param.ndim < 2:
        return jnp.zeros_like(param, dtype=statistics_dtype(param.dtype))
      return rule.zeros_reduced(param, -1)

    def init_col(param, row_axis):
      if param.ndim < 2:
        return jnp.zeros((), statistics_dtype(param.dtype))
      return rule.zeros_reduced(param, row_axis)

    def init_scale(param, row_axis):
      if param.ndim < 2:
        return jnp.zeros((), statistics_dtype(param.dtype))
      return rule.zeros_reduced(param, (row_axis, param.ndim - 1))

    def statistic(init, name):
      # Flax boxes (linen Partitioned, nnx.Variable) get the axes each statistic keeps.
      return layout.map_statistic(init, params, name, row_axis_of)

    return ScaleByEmberState(
      count=jnp.zeros([], jnp.int32),
      row=statistic(init_row, 'row'),
      col=statistic(init_col, 'col'),
      scale=statistic(init_scale, 'scale'),
    )

  def update_fn(
    updates: optax.Updates,
    state: ScaleByEmberState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, ScaleByEmberState]:
    del params, extra_args
    if not jax.tree.leaves(updates):
      return updates, state._replace(count=optax.safe_increment(state.count))
    # Boxed gradients and statistics name different axes; compute on the arrays.
    boxed_updates, boxed_state = updates, state
    updates = layout.unbox(updates)
    state = ScaleByEmberState(
      state.count, layout.unbox(state.row), layout.unbox(state.col), layout.unbox(state.scale)
    )
    _check_updates_match_state(updates, state)
    count = optax.safe_increment(state.count)

    log_b2, one_minus_b2 = rule.decay_constants(b2)
    static = is_static()

    def leaf_row_axis(path, grad, col, scale):
      if static:
        axis = row_axis_of(path, grad)
        expected = layout.reduced_shape(grad.shape, (axis,))
        if col.shape != expected:
          raise ValueError(
            f'scale_by_ember: the column statistic of {paths.path_str(path)!r} has shape '
            f'{col.shape}, but its token axis makes it {expected}. Pass the vocab_size and '
            f'token_axis that init was built with.'
          )
        return axis
      # The token axis is traced: the statistics' shapes tell which axis init chose.
      axis = layout.row_axis_from_statistics(grad.shape, col.shape, scale.shape)
      if axis is None:
        raise ValueError(
          f'scale_by_ember: the token axis of {paths.path_str(path)!r} {grad.shape} cannot '
          f'be told from its statistics while vocab_size or token_axis is traced. Build the '
          f"optimizer as optax.inject_hyperparams(..., static_args=('vocab_size', "
          f"'token_axis'))."
        )
      return axis

    def update_leaf(path, grad, row, col, scale):
      stat_dtype = row.dtype
      decay = jnp.asarray(b2, stat_dtype)
      rate = jnp.asarray(one_minus_b2, stat_dtype)
      correction = rule.bias_correction(count, log_b2, stat_dtype)
      if grad.ndim < 2:
        g = grad.astype(stat_dtype)
        row = decay * row + rate * g * g  # (rate * g) * g: the order that fixes its bits.
        update = g / (jnp.sqrt(row / correction) + eps)
        return update.astype(grad.dtype), row, col, scale

      row_axis = leaf_row_axis(path, grad, col, scale)
      n_rows, n_cols = grad.shape[row_axis], grad.shape[-1]
      row_sums, col_sums = squared_sums(grad, row_axis)
      row = rule.moving_average(row, row_sums / n_cols, decay, rate)
      col = rule.moving_average(col, col_sums / n_rows, decay, rate)
      scale = rule.moving_average(
        scale, jnp.sum(col_sums, axis=-1) / (n_rows * n_cols), decay, rate
      )
      col_rms = rule.column_rms(col, scale, correction)
      update = rule.scaled_direction(grad, row, col_rms, eps, row_axis)
      return update.astype(grad.dtype), row, col, scale

    results = jax.tree_util.tree_map_with_path(
      update_leaf, updates, state.row, state.col, state.scale
    )
    treedef = jax.tree.structure(updates)
    new_updates, row, col, scale = (
      jax.tree.unflatten(treedef, parts)
      for parts in zip(*treedef.flatten_up_to(results), strict=True)
    )
    return layout.rebox_like(boxed_updates, new_updates), ScaleByEmberState(
      count=count,
      row=layout.rebox_like(boxed_state.row, row),
      col=layout.rebox_like(boxed_state.col, col),
      scale=layout.rebox_like(boxed_state.scale, scale),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_updates_match_state(updates: optax.Updates, state: ScaleByEmberState) -> None:
  """Raises (at trace time, before any state changes) if gradients don't fit the state."""
  expected = jax.tree.map(
    lambda row, col: jax.ShapeDtypeStruct(
      row.shape if col.ndim == 0 else row.shape + col.shape[-1:], row.dtype
    ),
    state.row,
    state.col,
  )
  checks.check_same_shapes(expected, updates, 'gradient', 'scale_by_ember')

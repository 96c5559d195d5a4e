"""Diagnostics of token-table training: the measurements behind Ember's claims.

Pure functions on arrays and pytrees, so they can be called on the arrays of a
Flax (NNX or linen) training loop, inside a jitted step or on host copies:

* :func:`row_rms` and :func:`row_step_ratios`: the RMS step of each row of a
  table relative to the median row's. Tracked over training they test the
  claim that Adam's steps blow up on rare rows whose second-moment statistics
  went stale while Ember's stay within a small factor of the median.
* :func:`trajectory_straightness` and :func:`trajectory_principal_share`: from
  snapshots of a table over training, how straight each token's path is.
* :func:`effective_rank`: the entropy-based effective rank of a matrix, for a
  table's gradient against the hidden weights'.
* :func:`tree_bytes` and :func:`state_bytes_by_group`: optimizer-state bytes,
  in total and per parameter group (for instance the ``'token_table'`` and
  ``'body'`` branches of :func:`ember_optax.ember_partition`).

Token axes: an input embedding ``(V, D)`` has one token per row
(``token_axis=0``); a Dense LM head kernel ``(D, V)`` has one per column
(``token_axis=1``, or ``-1``).
"""

from collections.abc import Mapping
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ember_optax._src import paths

__all__ = (
  'effective_rank',
  'group_sizes',
  'relative_to_median',
  'row_rms',
  'row_step_ratios',
  'state_bytes_by_group',
  'trajectory_principal_share',
  'trajectory_straightness',
  'tree_bytes',
)

# Name of the group that holds state leaves not tied to any labelled parameter
# (step counters, schedule states, ...).
OTHER = 'other'

# The array diagnostics are jitted so that a call outside a jitted step runs as
# one compiled computation instead of a dozen dispatched ops; inside a jitted
# step they simply inline.
_jit_with_axis = functools.partial(jax.jit, static_argnames=('token_axis',))


@_jit_with_axis
def row_rms(update: jax.Array, token_axis: int = 0) -> jax.Array:
  """Root-mean-square of each token's slice of a 2-D table (or of its update).

  Args:
    update: A ``(V, D)`` or ``(D, V)`` array, for instance ``new - old`` params
      of a token table.
    token_axis: The axis that indexes tokens.

  Returns:
    A float array of shape ``(V,)``: ``sqrt(mean(update[token]**2))``.

  Example:
    >>> import jax.numpy as jnp
    >>> from ember_optax import diagnostics
    >>> diagnostics.row_rms(jnp.array([[3.0, 4.0], [0.0, 0.0]]))
    Array([3.535534, 0.      ], dtype=float32)
  """
  update = jnp.asarray(update)
  if update.ndim != 2:
    raise ValueError(f'row_rms expects a 2-D table, got shape {update.shape}.')
  feature_axis = 1 - (token_axis % 2)
  x = update.astype(jnp.promote_types(update.dtype, jnp.float32))
  return jnp.sqrt(jnp.mean(jnp.square(x), axis=feature_axis))


@_jit_with_axis
def row_step_ratios(
  update: jax.Array,
  token_axis: int = 0,
  where: jax.Array | None = None,
) -> jax.Array:
  """Each row's RMS step divided by the median row's RMS step.

  The median is taken over the reference rows: those selected by ``where``, or
  by default every row that moved (nonzero RMS). Rows absent from a batch get no
  gradient, and under Ember (no momentum) no step at all; counting those zeros
  would make the median zero as soon as most of the vocabulary is absent from a
  batch. Pass ``where=`` the rows present in the batch to use the same
  reference set for every optimizer.

  A ratio near 1 everywhere means every row moves by about the same amount; a
  ratio of 100 on a row means its step is 100 times the typical row's. Only the
  shape of the step matters, not its size: the learning rate cancels.

  Args:
    update: A 2-D token table's update (``new_params - old_params``).
    token_axis: The axis that indexes tokens.
    where: Optional boolean ``(V,)`` array selecting the reference rows of the
      median.

  Returns:
    A float array of shape ``(V,)``. Rows whose step is zero get ratio 0. If no
    reference row moved, every entry is NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> from ember_optax import diagnostics
    >>> update = jnp.array([[1.0, 1.0], [2.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    >>> diagnostics.row_step_ratios(update)
    Array([1., 2., 1., 0.], dtype=float32)
  """
  return relative_to_median(row_rms(update, token_axis), where)


@jax.jit
def relative_to_median(values: jax.Array, where: jax.Array | None = None) -> jax.Array:
  """Nonnegative values divided by the median of the nonzero ones (among ``where``).

  The second half of :func:`row_step_ratios`, for per-row RMS steps recorded
  with :func:`row_rms` inside a training step and turned into ratios later.

  Args:
    values: A nonnegative float array of shape ``(V,)``, such as per-row RMS
      steps.
    where: Optional boolean ``(V,)`` array selecting the reference entries of
      the median; zero entries are never reference entries.

  Returns:
    ``values / median``, of shape ``(V,)``; all NaN if no reference entry is
    nonzero.

  Example:
    >>> import jax.numpy as jnp
    >>> from ember_optax import diagnostics
    >>> diagnostics.relative_to_median(jnp.array([1.0, 2.0, 3.0, 0.0]))
    Array([0.5, 1. , 1.5, 0. ], dtype=float32)
  """
  values = jnp.asarray(values)
  values = values.astype(jnp.promote_types(values.dtype, jnp.float32))
  reference = values > 0
  if where is not None:
    reference = jnp.logical_and(reference, jnp.asarray(where, bool))
  # NaN-out the entries outside the reference set; nanmedian skips them and
  # keeps the computation shape-static, hence jit-friendly.
  median = jnp.nanmedian(jnp.where(reference, values, jnp.nan))
  return values / median


def _trajectory_points(snapshots: jax.Array, token_axis: int) -> jax.Array:
  """Snapshots ``(T, ...)`` as ``(tokens, T, D)`` points, in float32 or wider."""
  x = jnp.asarray(snapshots)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if x.ndim == 2:  # A single token's path, (T, D).
    return x[None]
  if x.ndim != 3:
    raise ValueError(f'snapshots must have shape (T, D) or (T, V, D) / (T, D, V), got {x.shape}.')
  # Move the token axis of each snapshot first and time second.
  return jnp.moveaxis(x, (1 + token_axis % 2, 0), (0, 1))


def _maybe_squeeze(result: jax.Array, snapshots: jax.Array) -> jax.Array:
  return result[0] if jnp.ndim(snapshots) == 2 else result


@_jit_with_axis
def trajectory_straightness(snapshots: jax.Array, token_axis: int = 0) -> jax.Array:
  """Net displacement over path length of each token's trajectory.

  ``|x_T - x_0| / sum_t |x_{t+1} - x_t|``: 1 for a path that moves along a
  straight line in one direction, near 0 for a random walk or a path that
  comes back.

  Args:
    snapshots: The table at ``T >= 2`` times, shape ``(T, V, D)`` (or
      ``(T, D, V)`` with ``token_axis=1``), or one token's path ``(T, D)``.
    token_axis: The axis of each snapshot that indexes tokens.

  Returns:
    A float array of shape ``(V,)`` (a scalar for a ``(T, D)`` path). Tokens
    that never moved get NaN: the ratio is undefined for them.

  Example:
    >>> import jax.numpy as jnp
    >>> from ember_optax import diagnostics
    >>> path = jnp.array([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0]])
    >>> float(diagnostics.trajectory_straightness(path))
    1.0
  """
  points = _trajectory_points(snapshots, token_axis)
  steps = jnp.linalg.norm(jnp.diff(points, axis=1), axis=-1)
  path_length = jnp.sum(steps, axis=1)
  displacement = jnp.linalg.norm(points[:, -1] - points[:, 0], axis=-1)
  safe_length = jnp.where(path_length > 0, path_length, 1.0)
  result = jnp.where(path_length > 0, displacement / safe_length, jnp.nan)
  return _maybe_squeeze(result, snapshots)


@_jit_with_axis
def trajectory_principal_share(snapshots: jax.Array, token_axis: int = 0) -> jax.Array:
  """Share of each trajectory's variance along its first principal direction.

  The points of a token's path (its row at each snapshot) are centred, and the
  share is ``s_1**2 / sum_i s_i**2`` over their singular values: 1 when the
  path lies on a line (a 1-D ray), ``1/min(T, D)`` at least.

  Args:
    snapshots: The table at ``T >= 2`` times, shape ``(T, V, D)`` (or
      ``(T, D, V)`` with ``token_axis=1``), or one token's path ``(T, D)``.
    token_axis: The axis of each snapshot that indexes tokens.

  Returns:
    A float array of shape ``(V,)`` (a scalar for a ``(T, D)`` path). Tokens
    that never moved get NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> from ember_optax import diagnostics
    >>> path = jnp.array([[0.0, 0.0], [2.0, 1.0], [1.0, 0.5]])
    >>> round(float(diagnostics.trajectory_principal_share(path)), 4)
    1.0
  """
  points = _trajectory_points(snapshots, token_axis)
  centred = points - jnp.mean(points, axis=1, keepdims=True)
  # Singular values of a (T, D) matrix per token; T is small, so this is cheap
  # even for a whole vocabulary.
  singular = jnp.linalg.svd(centred, compute_uv=False)
  energy = jnp.square(singular)
  total = jnp.sum(energy, axis=-1)
  safe_total = jnp.where(total > 0, total, 1.0)
  result = jnp.where(total > 0, energy[..., 0] / safe_total, jnp.nan)
  return _maybe_squeeze(result, snapshots)


@jax.jit
def effective_rank(matrix: jax.Array) -> jax.Array:
  """Entropy-based effective rank of a matrix (Roy and Vetterli, 2007).

  With ``p_i = s_i / sum_j s_j`` the normalized singular values, the effective
  rank is ``exp(-sum_i p_i log p_i)``: 1 for a rank-1 matrix, ``n`` for an
  ``n x n`` matrix with equal singular values (the identity), and in between
  otherwise. Divide by ``min(matrix.shape[-2:])`` to compare matrices of
  different shapes.

  Args:
    matrix: An array of shape ``(..., m, n)``; leading axes are a batch.

  Returns:
    A float array of shape ``(...)``. An all-zero matrix gets 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from ember_optax import diagnostics
    >>> float(diagnostics.effective_rank(jnp.eye(4)))
    4.0
  """
  x = jnp.asarray(matrix)
  if x.ndim < 2:
    raise ValueError(f'effective_rank expects a matrix, got shape {x.shape}.')
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  singular = jnp.linalg.svd(x, compute_uv=False)
  total = jnp.sum(singular, axis=-1, keepdims=True)
  p = singular / jnp.where(total > 0, total, 1.0)
  # 0 * log(0) is 0: zero singular values carry no entropy.
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  return jnp.where(total[..., 0] > 0, jnp.exp(entropy), 0.0)


def _leaf_bytes(leaf: Any) -> int:
  """Bytes of an array-like leaf (array, NumPy array, ShapeDtypeStruct); 0 otherwise."""
  shape = getattr(leaf, 'shape', None)
  dtype = getattr(leaf, 'dtype', None)
  if shape is None or dtype is None:
    return 0  # Python scalars, None, strings: not arrays the optimizer stores.
  return math.prod(shape) * np.dtype(dtype).itemsize


def tree_bytes(tree: Any) -> int:
  """Bytes held by the arrays of a pytree, such as an optimizer state.

  Counts ``size * itemsize`` of every array leaf (JAX or NumPy arrays, or
  ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``). ``optax.MaskedNode``
  placeholders of ``optax.partition`` hold no array and count 0, as do
  non-array leaves.

  Args:
    tree: Any pytree.

  Returns:
    The number of bytes, a Python ``int``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from ember_optax import diagnostics
    >>> params = {'w': jnp.zeros((1000, 64))}
    >>> diagnostics.tree_bytes(jax.eval_shape(optax.adam(1e-3).init, params))
    512004
  """
  return sum(_leaf_bytes(leaf) for leaf in jax.tree.leaves(tree))


def _is_partition_state(node: Any) -> bool:
  return isinstance(node, optax.PartitionState | optax.MultiTransformState)


def state_bytes_by_group(state: Any, labels: Any | None = None) -> dict[str, int]:
  """Optimizer-state bytes per parameter group.

  Two sources of groups, combined:

  * Every ``optax.partition`` (or ``optax.multi_transform``) state found in
    ``state`` credits each branch's inner state to the branch's label. The
    state of :func:`ember_optax.ember_adamw` thus splits into ``'token_table'``
    and ``'body'`` (the rest); ``optax.MaskedNode`` placeholders
    count nothing.
  * With ``labels`` (a pytree of strings with the structure of the params, such
    as :func:`ember_optax.token_table_labels` returns), every other subtree of
    the state that mirrors the params (Adam's ``mu`` and ``nu``, say) credits
    each leaf to its parameter's label, so even a single ``optax.adamw`` over
    the whole model can be split by group.

  State leaves tied to no group (step counters outside a partition, schedule
  states) are reported under ``'other'``, present only when nonzero.

  Args:
    state: An optimizer state (or its ``jax.eval_shape``), e.g.
      ``tx.init(params)``, or the ``opt_state`` of an ``nnx.Optimizer``.
    labels: Optional pytree of group labels matching the params (subtrees of
      the state are matched to it by key path, so an ``nnx.State`` of labels
      fits an ``nnx.Optimizer``'s state).

  Returns:
    A dict from group label to bytes.

  Raises:
    ValueError: if ``labels`` is None and ``state`` holds no partition state.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import ember_optax
    >>> from ember_optax import diagnostics
    >>> params = {'embed': {'embedding': jnp.zeros((1000, 64))},
    ...           'mlp': {'kernel': jnp.zeros((64, 64))}}
    >>> tx = ember_optax.ember_adamw(1e-3, vocab_size=1000)
    >>> diagnostics.state_bytes_by_group(jax.eval_shape(tx.init, params))
    {'body': 32772, 'token_table': 4264}
  """
  label_paths = None
  if labels is not None:
    labelled = jax.tree_util.tree_leaves_with_path(labels)
    label_paths = [paths.path_names(path) for path, _ in labelled]
    label_leaves = [label for _, label in labelled]

  def mirrors_params(node: Any) -> bool:
    # Matched by key paths rather than by tree structure: an nnx.Optimizer's
    # state wraps arrays in OptState variables where the params have Param
    # ones, so the structures differ while the paths agree.
    if label_paths is None or _is_partition_state(node) or _leaf_bytes(node):
      return False
    leaves = jax.tree_util.tree_leaves_with_path(node)
    if len(leaves) != len(label_paths):
      return False
    return [paths.path_names(path) for path, _ in leaves] == label_paths

  groups: dict[str, int] = {}
  if labels is not None:
    for label in label_leaves:
      groups.setdefault(str(label), 0)
  found_partition = False

  def visit(node: Any) -> None:
    nonlocal found_partition
    if _is_partition_state(node):
      found_partition = True
      for label, inner in node.inner_states.items():
        groups[str(label)] = groups.get(str(label), 0) + tree_bytes(inner)
      return
    if mirrors_params(node):
      for label, leaf in zip(label_leaves, jax.tree.leaves(node), strict=True):
        groups[str(label)] = groups.get(str(label), 0) + _leaf_bytes(leaf)
      return
    groups[OTHER] = groups.get(OTHER, 0) + tree_bytes(node)

  stops = jax.tree.leaves(
    state, is_leaf=lambda node: _is_partition_state(node) or mirrors_params(node)
  )
  for node in stops:
    visit(node)
  if labels is None and not found_partition:
    raise ValueError(
      'state_bytes_by_group found no optax.partition state. Pass labels= (a pytree of '
      'group names with the structure of the params, e.g. '
      'ember_optax.token_table_labels(params)) to split a state that mirrors the params.'
    )
  if not groups.get(OTHER):
    groups.pop(OTHER, None)
  return groups


def group_sizes(params: Any, labels: Any) -> Mapping[str, int]:
  """Number of parameters in each group, for bytes-per-parameter ratios.

  Args:
    params: The parameters.
    labels: A pytree of group labels with the structure of ``params``.

  Returns:
    A dict from group label to number of scalar parameters.

  Example:
    >>> import jax.numpy as jnp
    >>> from ember_optax import diagnostics
    >>> diagnostics.group_sizes({'a': jnp.zeros((3, 4)), 'b': jnp.zeros(5)},
    ...                         {'a': 'token_table', 'b': 'body'})
    {'token_table': 12, 'body': 5}
  """
  sizes: dict[str, int] = {}
  for label, leaf in zip(jax.tree.leaves(labels), jax.tree.leaves(params), strict=True):
    sizes[str(label)] = sizes.get(str(label), 0) + math.prod(np.shape(leaf))
  return sizes

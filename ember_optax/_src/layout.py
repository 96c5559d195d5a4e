"""Which axes Ember factors, and how a parameter's sharding carries over to its statistics.

Ember factors a table over two axes: its row axis (by default the
second-to-last; the token axis of a table such as Gemma 4's ``(V, L, P)``
per-layer table when it is known) and its last axis. Every other axis indexes
independent tables. A ``(..., V, D)`` table sharded as ``P(*lead, v, d)`` has
its row statistic ``(..., V)`` sharded as ``P(*lead, v)``, its column statistic
``(..., D)`` as ``P(*lead, d)`` and its scalar ``(...)`` as ``P(*lead)``: every
statistic is laid out like the table axes it keeps, so the step never moves
the table.

This module imports neither Flax nor Orbax. It recognizes Flax's boxed
parameters by duck typing: linen's ``nn.Partitioned`` /
``nn.LogicallyPartitioned`` (an ``AxisMetadata`` box with ``names``) and NNX's
``nnx.Variable`` (``get_metadata`` / ``set_metadata``, whose ``out_sharding``
and ``optimizer_sharding`` entries name the axes).
"""

from collections.abc import Callable, Sequence
import dataclasses
import inspect
from typing import Any, Literal

import jax
from jax.sharding import NamedSharding, PartitionSpec

Statistic = Literal['row', 'col', 'scale']
# row_axis(path, param) -> the axis of ``param`` that Ember's row statistic keeps.
RowAxisFn = Callable[[tuple[Any, ...], Any], int]

# NNX metadata entries that hold a Variable's sharding; nnx.Optimizer turns
# ``optimizer_sharding`` into the optimizer state's ``out_sharding``.
_NNX_SHARDING_KEYS = ('out_sharding', 'optimizer_sharding', 'sharding_names', 'sharding')


def row_axis(shape: Sequence[int], token_axis: int | None) -> int:
  """The axis Ember's statistics factor against the last one, for a leaf of ``shape``.

  Args:
    shape: the leaf's shape, of at least two dimensions.
    token_axis: the leaf's token (vocabulary) axis, if known; negative counts
      from the end.

  Returns:
    ``token_axis`` (made non-negative) when it is one of the leading axes, else
    the second-to-last axis: a table whose tokens lie on one of its last two
    axes is factored over those two, whichever holds the tokens (the factored
    estimate of a matrix is the same for its transpose).

  Example:
    >>> from ember_optax._src import layout
    >>> layout.row_axis((257, 2, 8), token_axis=0)  # Gemma 4's (V, L, P).
    0
    >>> layout.row_axis((4, 257, 32), token_axis=1), layout.row_axis((32, 257), None)
    (1, 0)
  """
  ndim = len(shape)
  if token_axis is None:
    return ndim - 2
  if not -ndim <= token_axis < ndim:
    raise ValueError(f'token_axis={token_axis} is out of range for a leaf of shape {tuple(shape)}.')
  return min(token_axis % ndim, ndim - 2)


def reduced_shape(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
  """``shape`` without the (non-negative) ``axes``."""
  return tuple(size for axis, size in enumerate(shape) if axis not in axes)


def row_axis_from_statistics(
  shape: Sequence[int], col_shape: Sequence[int], scale_shape: Sequence[int]
) -> int | None:
  """The row axis that statistics of these shapes were made with, or ``None`` if several fit."""
  ndim = len(shape)
  fits = [
    axis
    for axis in range(ndim - 1)
    if reduced_shape(shape, (axis,)) == tuple(col_shape)
    and reduced_shape(shape, (axis, ndim - 1)) == tuple(scale_shape)
  ]
  return fits[0] if len(fits) == 1 else None


def statistic_axes(
  axes: Sequence[Any], ndim: int, statistic: Statistic, row_axis: int | None = None
) -> tuple[Any, ...]:
  """The per-axis sharding of one of Ember's statistics of a parameter.

  Args:
    axes: the parameter's sharding, one entry per axis (mesh axis names,
      logical axis names, ``None``, tuples of names); may be shorter than
      ``ndim``, as a ``PartitionSpec`` may.
    ndim: the parameter's number of dimensions.
    statistic: ``'row'``, ``'col'`` or ``'scale'``.
    row_axis: the axis factored against the last one (see :func:`row_axis`);
      the second-to-last by default.

  Returns:
    The statistic's entries: the parameter's without its last axis (row),
    without its row axis (col), without both (scale). A parameter of fewer than
    two dimensions keeps its entries for ``row`` and has scalar (``()``)
    ``col`` and ``scale``.

  Example:
    >>> from ember_optax._src import layout
    >>> layout.statistic_axes(('vocab', 'embed'), 2, 'row')
    ('vocab',)
    >>> layout.statistic_axes(('layers', 'vocab'), 3, 'col')
    ('layers', None)
    >>> layout.statistic_axes(('vocab', None, 'embed'), 3, 'col', row_axis=0)
    (None, 'embed')
  """
  axes = tuple(axes)
  if len(axes) > ndim:
    raise ValueError(f'A sharding of {len(axes)} axes {axes} does not fit a {ndim}-D parameter.')
  axes = axes + (None,) * (ndim - len(axes))
  if ndim < 2:
    return axes if statistic == 'row' else ()
  row = ndim - 2 if row_axis is None else row_axis
  removed = {'row': (ndim - 1,), 'col': (row,), 'scale': (row, ndim - 1)}.get(statistic)
  if removed is not None:
    return tuple(entry for axis, entry in enumerate(axes) if axis not in removed)
  raise ValueError(f"statistic must be 'row', 'col' or 'scale', got {statistic!r}.")


def statistic_sharding(
  sharding: Any, ndim: int, statistic: Statistic, row_axis: int | None = None
) -> Any:
  """:func:`statistic_axes` for a ``PartitionSpec``, ``NamedSharding``, tuple or ``None``.

  Args:
    sharding: the parameter's ``PartitionSpec``, ``NamedSharding``, tuple of
      axis names, or ``None`` (unspecified; stays ``None``).
    ndim: the parameter's number of dimensions.
    statistic: ``'row'``, ``'col'`` or ``'scale'``.
    row_axis: see :func:`statistic_axes`.

  Returns:
    The statistic's sharding, of the same kind as ``sharding``.
  """
  if sharding is None:
    return None
  if isinstance(sharding, NamedSharding):
    spec = PartitionSpec(*statistic_axes(sharding.spec, ndim, statistic, row_axis))
    return NamedSharding(sharding.mesh, spec, memory_kind=sharding.memory_kind)
  if isinstance(sharding, PartitionSpec):
    return PartitionSpec(*statistic_axes(sharding, ndim, statistic, row_axis))
  if isinstance(sharding, tuple | list):
    return type(sharding)(statistic_axes(sharding, ndim, statistic, row_axis))
  raise TypeError(
    f'Cannot derive the sharding of an Ember statistic from {sharding!r}: pass a '
    'jax.sharding.NamedSharding, a PartitionSpec or a tuple of axis names.'
  )


def is_nnx_variable(x: Any) -> bool:
  """Whether ``x`` is an ``nnx.Variable`` (duck-typed: Flax is not imported)."""
  return all(hasattr(x, name) for name in ('get_metadata', 'set_metadata', 'get_value'))


def is_linen_box(x: Any) -> bool:
  """Whether ``x`` is a linen ``AxisMetadata`` box such as ``nn.Partitioned``."""
  return hasattr(x, 'unbox') and hasattr(x, 'replace_boxed') and not is_nnx_variable(x)


def is_boxed(x: Any) -> bool:
  """Whether ``x`` is a Flax box (linen ``AxisMetadata`` or ``nnx.Variable``)."""
  return is_nnx_variable(x) or is_linen_box(x)


def map_statistic(
  fn: Callable[[jax.Array, int], jax.Array],
  params: Any,
  statistic: Statistic,
  row_axis_of: RowAxisFn,
) -> Any:
  """Maps ``fn(param, row_axis)`` over ``params``, re-annotating Flax boxes for the statistic.

  Mapping over boxed parameters keeps each box's metadata, which names the
  parameter's axes, on a statistic with fewer axes. This re-derives it with
  :func:`statistic_axes`, so that ``nn.get_partition_spec`` (linen) and
  ``nnx.get_partition_spec`` / ``nnx.Optimizer`` (NNX) shard each statistic
  like the table axes it keeps.

  Args:
    fn: computes the statistic from the (unboxed) parameter and its row axis
      (meaningless, and ``-1``, for parameters of fewer than two dimensions).
    params: parameters, boxed or not.
    statistic: ``'row'``, ``'col'`` or ``'scale'``.
    row_axis_of: the row axis of a parameter, from its key path and value.

  Returns:
    The statistics, boxed like ``params`` with re-derived axis metadata.
  """

  def axis_of(path: tuple[Any, ...], value: Any) -> int:
    return row_axis_of(path, value) if value.ndim >= 2 else -1

  def apply(path: tuple[Any, ...], leaf: Any) -> Any:
    if is_nnx_variable(leaf):
      value = leaf.get_value()
      if not hasattr(value, 'ndim'):  # An optax.MaskedNode left by optax.partition.
        return jax.tree.map(lambda x: fn(x, axis_of(path, x)), leaf)
      axis = axis_of(path, value)
      stat = fn(value, axis)
      # Mapping through the pytree rebuilds the Variable without re-sharding it.
      new = jax.tree.map(lambda _: stat, leaf)
      metadata = leaf.get_metadata()
      for key in _NNX_SHARDING_KEYS:
        if metadata.get(key) is not None:
          new.set_metadata(key, statistic_sharding(metadata[key], value.ndim, statistic, axis))
      return new
    if is_linen_box(leaf):
      value = leaf.unbox(apply_constraint=False) if _takes_apply_constraint(leaf) else leaf.unbox()
      if not hasattr(value, 'ndim'):
        return jax.tree.map(lambda x: fn(x, axis_of(path, x)), leaf)
      axis = axis_of(path, value)
      new = leaf.replace_boxed(fn(value, axis))
      names = getattr(new, 'names', None)
      if names is not None and dataclasses.is_dataclass(new):
        new = dataclasses.replace(new, names=statistic_axes(names, value.ndim, statistic, axis))
      return new
    return fn(leaf, axis_of(path, leaf))

  return jax.tree_util.tree_map_with_path(apply, params, is_leaf=is_boxed)


def _takes_apply_constraint(box: Any) -> bool:
  try:
    return 'apply_constraint' in inspect.signature(box.unbox).parameters
  except (TypeError, ValueError):
    return False


def unbox(tree: Any) -> Any:
  """``tree`` with every Flax box replaced by the array it holds."""

  def leaf(x: Any) -> Any:
    if is_nnx_variable(x):
      return x.get_value()
    if is_linen_box(x):
      return x.unbox(apply_constraint=False) if _takes_apply_constraint(x) else x.unbox()
    return x

  return jax.tree.map(leaf, tree, is_leaf=is_boxed)


def rebox_like(reference: Any, plain: Any) -> Any:
  """The leaves of ``plain`` in the pytree (boxes and their metadata) of ``reference``."""
  return jax.tree.structure(reference).unflatten(jax.tree.leaves(plain))

"""How a parameter's sharding carries over to Ember's statistics.

A ``(..., V, D)`` table sharded as ``P(*lead, v, d)`` has its row statistic
``(..., V)`` sharded as ``P(*lead, v)``, its column statistic ``(..., D)`` as
``P(*lead, d)`` and its scalar ``(...)`` as ``P(*lead)``: every statistic is
laid out like the table axes it keeps, so the step never moves the table.

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

# NNX metadata entries that hold a Variable's sharding; nnx.Optimizer turns
# ``optimizer_sharding`` into the optimizer state's ``out_sharding``.
_NNX_SHARDING_KEYS = ('out_sharding', 'optimizer_sharding', 'sharding_names', 'sharding')


def statistic_axes(axes: Sequence[Any], ndim: int, statistic: Statistic) -> tuple[Any, ...]:
  """The per-axis sharding of one of Ember's statistics of a parameter.

  Args:
    axes: the parameter's sharding, one entry per axis (mesh axis names,
      logical axis names, ``None``, tuples of names); may be shorter than
      ``ndim``, as a ``PartitionSpec`` may.
    ndim: the parameter's number of dimensions.
    statistic: ``'row'``, ``'col'`` or ``'scale'``.

  Returns:
    The statistic's entries: the parameter's without its last axis (row),
    without its second-to-last axis (col), without both (scale). A parameter of
    fewer than two dimensions keeps its entries for ``row`` and has scalar
    (``()``) ``col`` and ``scale``.

  Example:
    >>> from ember_optax._src import layout
    >>> layout.statistic_axes(('vocab', 'embed'), 2, 'row')
    ('vocab',)
    >>> layout.statistic_axes(('layers', 'vocab'), 3, 'col')
    ('layers', None)
  """
  axes = tuple(axes)
  if len(axes) > ndim:
    raise ValueError(f'A sharding of {len(axes)} axes {axes} does not fit a {ndim}-D parameter.')
  axes = axes + (None,) * (ndim - len(axes))
  if ndim < 2:
    return axes if statistic == 'row' else ()
  if statistic == 'row':
    return axes[:-1]
  if statistic == 'col':
    return axes[:-2] + axes[-1:]
  if statistic == 'scale':
    return axes[:-2]
  raise ValueError(f"statistic must be 'row', 'col' or 'scale', got {statistic!r}.")


def statistic_sharding(sharding: Any, ndim: int, statistic: Statistic) -> Any:
  """:func:`statistic_axes` for a ``PartitionSpec``, ``NamedSharding``, tuple or ``None``.

  Args:
    sharding: the parameter's ``PartitionSpec``, ``NamedSharding``, tuple of
      axis names, or ``None`` (unspecified; stays ``None``).
    ndim: the parameter's number of dimensions.
    statistic: ``'row'``, ``'col'`` or ``'scale'``.

  Returns:
    The statistic's sharding, of the same kind as ``sharding``.
  """
  if sharding is None:
    return None
  if isinstance(sharding, NamedSharding):
    spec = PartitionSpec(*statistic_axes(sharding.spec, ndim, statistic))
    return NamedSharding(sharding.mesh, spec, memory_kind=sharding.memory_kind)
  if isinstance(sharding, PartitionSpec):
    return PartitionSpec(*statistic_axes(sharding, ndim, statistic))
  if isinstance(sharding, tuple | list):
    return type(sharding)(statistic_axes(sharding, ndim, statistic))
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
    fn: Callable[[jax.Array], jax.Array], params: Any, statistic: Statistic
) -> Any:
  """``jax.tree.map(fn, params)``, re-annotating Flax boxes for the statistic.

  Mapping over boxed parameters keeps each box's metadata, which names the
  parameter's axes, on a statistic with fewer axes. This re-derives it with
  :func:`statistic_axes`, so that ``nn.get_partition_spec`` (linen) and
  ``nnx.get_partition_spec`` / ``nnx.Optimizer`` (NNX) shard each statistic
  like the table axes it keeps.

  Args:
    fn: computes the statistic from the (unboxed) parameter.
    params: parameters, boxed or not.
    statistic: ``'row'``, ``'col'`` or ``'scale'``.

  Returns:
    The statistics, boxed like ``params`` with re-derived axis metadata.
  """

  def apply(leaf: Any) -> Any:
    if is_nnx_variable(leaf):
      value = leaf.get_value()
      if not hasattr(value, 'ndim'):  # An optax.MaskedNode left by optax.partition.
        return jax.tree.map(fn, leaf)
      stat = fn(value)
      # Mapping through the pytree rebuilds the Variable without re-sharding it.
      new = jax.tree.map(lambda _: stat, leaf)
      metadata = leaf.get_metadata()
      for key in _NNX_SHARDING_KEYS:
        if metadata.get(key) is not None:
          new.set_metadata(key, statistic_sharding(metadata[key], value.ndim, statistic))
      return new
    if is_linen_box(leaf):
      value = leaf.unbox(apply_constraint=False) if _takes_apply_constraint(leaf) else leaf.unbox()
      if not hasattr(value, 'ndim'):
        return jax.tree.map(fn, leaf)
      new = leaf.replace_boxed(fn(value))
      names = getattr(new, 'names', None)
      if names is not None and dataclasses.is_dataclass(new):
        new = dataclasses.replace(new, names=statistic_axes(names, value.ndim, statistic))
      return new
    return fn(leaf)

  return jax.tree.map(apply, params, is_leaf=is_boxed)


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

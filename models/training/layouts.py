"""A fully sharded (FSDP-style) layout over a one-axis device mesh, for compile-only analysis.

Each parameter is split along its largest axis that the device count divides; the batch (and the
residual stream) along the batch axis. :func:`shard_shapes` gives one device's shards of a tree as
``jax.ShapeDtypeStruct``s, so that bytes per device follow from shapes alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

FSDP_AXIS = 'fsdp'


def fsdp_mesh(devices: int) -> Mesh:
  """A one-axis mesh over all of ``jax.devices()``, which must number ``devices``.

  Its axis is ``Auto``: XLA's sharding propagation lays out everything not constrained.
  """
  if jax.device_count() != devices:
    raise RuntimeError(f'asked for {devices} devices, JAX has {jax.device_count()}')
  return jax.make_mesh((devices,), (FSDP_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays split along their leading (batch) axis over ``mesh``."""
  return NamedSharding(mesh, PartitionSpec(FSDP_AXIS))


def fsdp_shardings(params: Any, mesh: Mesh, stacked: Callable[[Any], bool]) -> Any:
  """A fully sharded layout: each parameter split along its largest evenly divisible axis.

  Stacked layer parameters (``stacked(key_path)`` true) keep their leading layer axis whole, since
  the scan slices it; a parameter with no axis divisible by the device count is replicated.
  """
  n = mesh.size

  def sharding(path, leaf) -> NamedSharding:
    first = 1 if stacked(path) else 0
    axes = [a for a in range(first, leaf.ndim) if leaf.shape[a] % n == 0]
    spec = [None] * leaf.ndim
    if axes:
      spec[max(axes, key=lambda a: leaf.shape[a])] = FSDP_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree_util.tree_map_with_path(sharding, params)


def shard_shapes(tree: Any, shardings: Any) -> Any:
  """One device's shards of ``tree``'s arrays, as ``jax.ShapeDtypeStruct``s."""
  return jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(sharding.shard_shape(leaf.shape), leaf.dtype),
    tree,
    shardings,
  )

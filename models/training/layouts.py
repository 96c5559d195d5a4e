"""Parameter layouts over a one-axis device mesh: replicated, split by vocabulary, fully sharded.

In the fully sharded (FSDP-style) layout each parameter is split along its largest axis that the
device count divides; the batch (and the residual stream) along the batch axis. The same rule
serves the distributed program (:func:`param_specs`) and the memory benchmark's compile-only
analysis (:func:`fsdp_shardings`); :func:`shard_shapes` gives one device's shards of a tree as
``jax.ShapeDtypeStruct``s, so that bytes per device follow from shapes alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

FSDP_AXIS = 'fsdp'
LAYOUTS = ('replicated', 'vocab', 'fsdp')


def fsdp_axis(shape: tuple[int, ...], n_devices: int, first: int = 0) -> int | None:
  """The largest axis of ``shape`` (from ``first`` on) that ``n_devices`` divides, or ``None``."""
  axes = [a for a in range(first, len(shape)) if shape[a] % n_devices == 0]
  return max(axes, key=lambda a: shape[a]) if axes else None


def param_specs(params: Any, layout: str, n_devices: int, token_tables: Any, axis: str = 'x'):
  """A ``PartitionSpec`` per parameter for ``layout``, over mesh axis ``axis``.

  * ``replicated``: every device holds every parameter (plain data parallelism).
  * ``vocab``: the token tables (``token_tables``' ``"token_table"`` labels) split along their
    vocabulary axis, the longer of the two (an embedding by rows, a ``(D, V)`` head by columns);
    the body replicated.
  * ``fsdp``: every parameter split along its largest axis that ``n_devices`` divides.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')

  def spec(leaf, label) -> PartitionSpec:
    dims = [None] * leaf.ndim
    if layout == 'vocab' and label == 'token_table' and leaf.ndim == 2:
      dims[max(range(2), key=lambda a: leaf.shape[a])] = axis
    elif layout == 'fsdp' and leaf.ndim and (split := fsdp_axis(leaf.shape, n_devices)) is not None:
      dims[split] = axis
    return PartitionSpec(*dims)

  return jax.tree.map(spec, params, token_tables)


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
    split = fsdp_axis(leaf.shape, n, first=1 if stacked(path) else 0)
    spec = [None] * leaf.ndim
    if split is not None:
      spec[split] = FSDP_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree_util.tree_map_with_path(sharding, params)


def shard_shapes(tree: Any, shardings: Any) -> Any:
  """One device's shards of ``tree``'s arrays, as ``jax.ShapeDtypeStruct``s."""
  return jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(sharding.shard_shape(leaf.shape), leaf.dtype),
    tree,
    shardings,
  )

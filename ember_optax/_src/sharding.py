"""Shardings of an optimizer state that holds Ember statistics."""

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding
import numpy as np
import optax

from ember_optax._src import layout, sparse, transform


def _is_sharding_leaf(x: Any) -> bool:
  return x is None or isinstance(x, PartitionSpec | Sharding)


def _is_array_like(x: Any) -> bool:
  return hasattr(x, 'shape') and hasattr(x, 'dtype')


def state_shardings(
  opt_state: optax.OptState,
  param_shardings: Any,
  *,
  mesh: Mesh | None = None,
) -> Any:
  """Shardings for an optimizer state, given the parameters' shardings.

  Ember's statistics of a ``(..., V, D)`` table sharded as ``P(*lead, v, d)``
  are sharded like the table axes they keep: the row statistic ``(..., V)`` as
  ``P(*lead, v)``, the column statistic ``(..., D)`` as ``P(*lead, d)``, the
  scalar ``(...)`` as ``P(*lead)``. Statistics of parameters of fewer than two
  dimensions are sharded like the parameter (row) or replicated (col, scale).
  Everything else follows Optax's conventions: a subtree shaped like the
  parameters (AdamW's moments, possibly with ``optax.MaskedNode`` holes from
  :func:`optax.partition` or :func:`optax.masked`) is sharded like them, and any
  other leaf (step counts, schedule state) is replicated.

  Works for :func:`ember`, :func:`ember_adamw` and any chain, partition or mask
  that contains them, with concrete states or the abstract one from
  ``jax.eval_shape(optimizer.init, params)``. For :func:`sparse_ember`, whose
  state belongs to one ``(V, D)`` table, pass that table's sharding: the row
  statistic and the last steps are sharded like its rows, the column
  statistic like its columns.

  Args:
    opt_state: the optimizer state, concrete or abstract
      (``jax.ShapeDtypeStruct`` leaves).
    param_shardings: a pytree with the structure of the parameters whose
      leaves are ``jax.sharding.NamedSharding`` or ``PartitionSpec`` (mesh or
      logical axis names, e.g. from linen's ``nn.get_partition_spec``), or
      ``None`` for unspecified.
    mesh: if given, ``PartitionSpec`` results are returned as
      ``NamedSharding(mesh, spec)``.

  Returns:
    A pytree with the structure of ``opt_state``, ready for
    ``jax.jit(..., out_shardings=...)``, ``jax.device_put`` or Orbax restore
    targets: ``NamedSharding`` leaves when ``param_shardings`` holds them or
    ``mesh`` is given, else ``PartitionSpec`` leaves (pass logical ones through
    ``nn.logical_to_mesh_sharding``).

  Raises:
    TypeError: if a parameter's sharding is neither a ``NamedSharding`` nor a
      ``PartitionSpec``, so that Ember's statistics cannot be derived from it.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> import ember_optax
    >>> from ember_optax import state_shardings
    >>> params = {'embed': jnp.zeros((512, 16)), 'w': jnp.zeros((16, 16))}
    >>> optimizer = ember_optax.ember_adamw(1e-3, vocab_size=512)
    >>> specs = {'embed': P('model', None), 'w': P(None, 'model')}
    >>> shardings = state_shardings(jax.eval_shape(optimizer.init, params), specs)
    >>> shardings.inner_states['token_table'].inner_state[0].row['embed']
    P('model',)
  """
  param_treedef = jax.tree.structure(param_shardings, is_leaf=_is_sharding_leaf)
  param_leaves = param_treedef.flatten_up_to(param_shardings)

  if mesh is None:
    mesh = next((s.mesh for s in param_leaves if isinstance(s, NamedSharding)), None)
  replicated = PartitionSpec() if mesh is None else NamedSharding(mesh, PartitionSpec())

  def finish(sharding: Any) -> Any:
    if mesh is not None and isinstance(sharding, PartitionSpec):
      return NamedSharding(mesh, sharding)
    return sharding

  def ember_state(node: transform.ScaleByEmberState) -> transform.ScaleByEmberState:
    def stats(statistic: layout.Statistic) -> Any:
      def one(sharding: Any, row: Any, col: Any, scale: Any) -> Any:
        if isinstance(row, optax.MaskedNode):
          return row
        if np.ndim(col) == 0:  # A leaf of fewer than two dimensions.
          return finish(layout.statistic_sharding(sharding, np.ndim(row), statistic))
        shape = np.shape(row) + np.shape(col)[-1:]
        # The axis init factored against the last one, told by the statistics' shapes; where
        # several axes would fit (equal sizes), the default one.
        row_axis = layout.row_axis_from_statistics(shape, np.shape(col), np.shape(scale))
        return finish(layout.statistic_sharding(sharding, len(shape), statistic, row_axis))

      return jax.tree.map(
        one, param_shardings, node.row, node.col, node.scale, is_leaf=_is_sharding_leaf
      )

    return transform.ScaleByEmberState(
      count=replicated, row=stats('row'), col=stats('col'), scale=stats('scale')
    )

  def sparse_state(node: sparse.SparseEmberState) -> sparse.SparseEmberState:
    tables = [s for s in param_leaves if s is not None]
    if len(param_leaves) != 1:
      raise ValueError(
        f'state_shardings: a sparse_ember state belongs to one table, but param_shardings '
        f"holds {len(param_leaves)} shardings; pass the table's sharding alone."
      )
    row, col = (
      finish(layout.statistic_sharding(tables[0] if tables else None, 2, name, 0))
      for name in ('row', 'col')
    )
    return sparse.SparseEmberState(
      count=replicated, row=row, last_step=row, col=col, scale=replicated
    )

  def params_like(node: Any) -> Any | None:
    """The shardings of ``node`` if it is shaped like the params, else ``None``."""
    try:
      parts = param_treedef.flatten_up_to(node)
    except (ValueError, TypeError):
      return None
    out = []
    for sharding, part in zip(param_leaves, parts, strict=True):
      if isinstance(part, optax.MaskedNode) or part is None:
        out.append(part)
      elif _is_array_like(part) and _fits(sharding, np.ndim(part)):
        out.append(finish(sharding))
      else:
        return None
    return param_treedef.unflatten(out)

  def walk(node: Any) -> Any:
    if isinstance(node, transform.ScaleByEmberState):
      return ember_state(node)
    if isinstance(node, sparse.SparseEmberState):
      return sparse_state(node)
    if isinstance(node, optax.MaskedNode) or node is None:
      return node
    if not _is_array_like(node):
      matched = params_like(node)
      if matched is not None:
        return matched
      children, treedef = jax.tree.flatten(node, is_leaf=lambda x: x is not node)
      if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return replicated  # A leaf that is not an array (a Python scalar).
      return treedef.unflatten([walk(child) for child in children])
    if param_treedef.num_nodes == 1:
      # The parameters are a single array: a leaf of its shape is a moment.
      return params_like(node) or replicated
    return replicated

  return walk(opt_state)


def _fits(sharding: Any, ndim: int) -> bool:
  """Whether ``sharding`` can describe an array of ``ndim`` dimensions."""
  if sharding is None:
    return True
  spec = sharding.spec if isinstance(sharding, NamedSharding) else sharding
  if isinstance(spec, PartitionSpec | tuple):
    return len(spec) <= ndim
  return True  # Other Sharding kinds carry their own shape checks.

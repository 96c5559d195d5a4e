"""The train step and the evaluation of a language model, shared by every program in ``models``.

Functional NNX: a static graph and a pytree of parameters, and pure functions over the pytree,
which each caller jits with its own shardings and donation. The loss is the mean next-token
cross-entropy in float32 over the targets that are not padding (negative ids).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ember_optax


def loss_sums(model: nnx.Module, inputs, targets, rare_mask=None, ngram_rows=None):
  """``(loss sum, target count, rare-target loss sum, rare-target count)`` of one batch.

  Negative targets are padding and count nowhere. The mask also keeps the loss's gradient from
  being a constant, which XLA would try (slowly, at compile time) to fold through the scatter
  of the label lookup's gradient. ``ngram_rows``, if given, are the looked-up rows of the model's
  n-gram table (``GPT.__call__``).
  """
  logits = (model(inputs) if ngram_rows is None else model(inputs, ngram_rows)).astype(jnp.float32)
  counted = targets >= 0
  targets = jnp.maximum(targets, 0)
  losses = jnp.where(counted, optax.softmax_cross_entropy_with_integer_labels(logits, targets), 0.0)
  if rare_mask is None:
    return losses.sum(), counted.sum(), None, None
  rare = rare_mask[targets] & counted
  return losses.sum(), counted.sum(), jnp.where(rare, losses, 0.0).sum(), rare.sum()


def next_token_loss(model: nnx.Module, inputs, targets, ngram_rows=None) -> jax.Array:
  """Mean next-token cross-entropy over the targets that are not padding."""
  total, count, _, _ = loss_sums(model, inputs, targets, ngram_rows=ngram_rows)
  return total / jnp.maximum(count, 1)


def train_step(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  loss: Callable[..., jax.Array] = next_token_loss,
) -> Callable:
  """The pure step ``(params, opt_state, *batch) -> (params, opt_state, loss)``.

  Args:
    graphdef: the model's static graph.
    optimizer: the optimizer.
    loss: ``loss(model, *batch)``, a scalar to minimize; default the language model's
      ``next_token_loss(model, inputs, targets)`` (RL passes its policy loss).
  """

  def loss_fn(params, *batch):
    return loss(nnx.merge(graphdef, params), *batch)

  def step(params, opt_state, *batch):
    value, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return step


def ngram_train_step(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  table_optimizer: optax.GradientTransformation | ember_optax.SparseRowTransformation,
) -> Callable:
  """The pure step of a GPT with an n-gram table, differentiated against the table's rows.

  ``(params, opt_state, tables, table, table_state, inputs, targets) -> (params, opt_state, table,
  table_state, loss)``, for ``graphdef, params, tables = nnx.split(model, nnx.Param,
  NgramTable)`` and ``table = tables['ngram']['table']``. The loss is differentiated against the
  ``nnx.Param``s and against the n-gram rows the batch looks up, never against the table. A
  sparse-row table optimizer (``ember_optax.sparse_ember``) takes those rows' gradients; an Optax
  one (dense AdamW, say) takes the dense gradient they make, as autodiff of the lookup would.
  Donate ``table`` and ``table_state`` so that the table is updated in place.
  """

  def step(params, opt_state, tables, table, table_state, inputs, targets):
    tables = with_table(tables, table)
    ngram = nnx.merge(graphdef, params, tables).ngram
    ids = ngram.ids(inputs)

    def loss_fn(params, rows):
      return next_token_loss(nnx.merge(graphdef, params, tables), inputs, targets, rows)

    value, (grads, row_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
      params, ngram.lookup(ids)
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    table, table_state = update_table(table_optimizer, table, table_state, ids, row_grads)
    return params, opt_state, table, table_state, value

  return step


def update_table(
  table_optimizer: optax.GradientTransformation | ember_optax.SparseRowTransformation,
  table: jax.Array,
  table_state,
  ids: jax.Array,
  row_grads: jax.Array,
) -> tuple[jax.Array, object]:
  """A table's step from the gradients of the rows ``table[ids]``: ``(table, table_state)``.

  A sparse-row optimizer (``ember_optax.sparse_ember``) updates the touched rows; an Optax one
  takes the dense gradient that autodiff of the lookup would build, the rows scattered (and
  summed) into a table of zeros. Ids outside the table (``-1`` for a missing n-gram) add nothing.
  """
  if isinstance(table_optimizer, ember_optax.SparseRowTransformation):
    updates, table_state = table_optimizer.update(
      ember_optax.IndexedRows(ids, row_grads), table_state, table
    )
    return ember_optax.apply_row_updates(table, updates), table_state
  # A negative id would wrap around: send it past the end, where the scatter drops it.
  ids = jnp.where(ids < 0, table.shape[0], ids)
  grad = jnp.zeros_like(table).at[ids].add(row_grads.astype(table.dtype), mode='drop')
  updates, table_state = table_optimizer.update(grad, table_state, table)
  return optax.apply_updates(table, updates), table_state


def with_table(tables: nnx.State, table: jax.Array) -> nnx.State:
  """``tables`` (the n-gram table's state) holding ``table`` as its value."""
  return jax.tree.map(lambda _: table, tables)


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(graphdef, states, inputs, targets, rare_mask):
  # Module level with a static graph: compiled once and reused by every setup and seed.
  return loss_sums(nnx.merge(graphdef, *states), inputs, targets, rare_mask)


def evaluate(graphdef, params, batches: Sequence, rare_mask, tables=None) -> tuple[float, float]:
  """``(loss, rare-token loss)``: mean cross-entropy over every target, and over the rare ones.

  ``tables``: the n-gram table's state, for a model split as ``nnx.split(model, nnx.Param,
  NgramTable)``.
  """
  states = (params,) if tables is None else (params, tables)
  sums = np.zeros(4)
  for inputs, targets in batches:
    sums += np.array([float(v) for v in _eval_sums(graphdef, states, inputs, targets, rare_mask)])
  return sums[0] / sums[1], (sums[2] / sums[3] if sums[3] else float('nan'))

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


def loss_sums(model: nnx.Module, inputs, targets, rare_mask=None):
  """``(loss sum, target count, rare-target loss sum, rare-target count)`` of one batch.

  Negative targets are padding and count nowhere. The mask also keeps the loss's gradient from
  being a constant, which XLA would try (slowly, at compile time) to fold through the scatter
  of the label lookup's gradient.
  """
  logits = model(inputs).astype(jnp.float32)
  counted = targets >= 0
  targets = jnp.maximum(targets, 0)
  losses = jnp.where(counted, optax.softmax_cross_entropy_with_integer_labels(logits, targets), 0.0)
  if rare_mask is None:
    return losses.sum(), counted.sum(), None, None
  rare = rare_mask[targets] & counted
  return losses.sum(), counted.sum(), jnp.where(rare, losses, 0.0).sum(), rare.sum()


def next_token_loss(model: nnx.Module, inputs, targets) -> jax.Array:
  """Mean next-token cross-entropy over the targets that are not padding."""
  total, count, _, _ = loss_sums(model, inputs, targets)
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


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(graphdef, params, inputs, targets, rare_mask):
  # Module level with a static graph: compiled once and reused by every setup and seed.
  return loss_sums(nnx.merge(graphdef, params), inputs, targets, rare_mask)


def evaluate(graphdef, params, batches: Sequence, rare_mask) -> tuple[float, float]:
  """``(loss, rare-token loss)``: mean cross-entropy over every target, and over the rare ones."""
  sums = np.zeros(4)
  for inputs, targets in batches:
    sums += np.array([float(v) for v in _eval_sums(graphdef, params, inputs, targets, rare_mask)])
  return sums[0] / sums[1], (sums[2] / sums[3] if sums[3] else float('nan'))

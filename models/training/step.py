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


def train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation) -> Callable:
  """The pure step ``(params, opt_state, inputs, targets) -> (params, opt_state, loss)``."""

  def loss_fn(params, inputs, targets):
    total, count, _, _ = loss_sums(nnx.merge(graphdef, params), inputs, targets)
    return total / jnp.maximum(count, 1)

  def step(params, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

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

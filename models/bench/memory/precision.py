"""The memory benchmark's setups: the main job's, with float32 statistics, and their state bytes.

The setups are ``models.optim.registry``' (the body gets AdamW; they differ on the token tables),
at a constant learning rate and without clipping, which keep no state of their own.

Precisions: ``float32`` parameters, or ``bfloat16`` parameters (and activations) with float32
optimizer statistics. ``optax.adamw`` keeps its second moment in the parameters' dtype whatever
``mu_dtype`` says, so every setup is wrapped in :func:`float32_statistics`, which hands the
optimizer float32 views of the parameters: AdamW's ``mu`` and ``nu``, Adafactor's factors and
Ember's statistics are all float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import ember_optax
from ember_optax.diagnostics import tree_bytes
from models.optim import registry
from models.training.layouts import shard_shapes

SETUPS = registry.default_setups('memory')
PRECISIONS = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
LEARNING_RATE = 1e-3


def float32_statistics(
  optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Runs ``optimizer`` on float32 views of the parameters, so that its statistics are float32.

  ``optax.adamw`` and ``optax.adafactor`` size their statistics by the parameters' dtype (Adam's
  ``nu`` is ``zeros_like(params)``; ``mu_dtype`` covers only ``mu``), so bfloat16 parameters
  would get bfloat16 statistics. Here ``init`` and ``update`` see the parameters cast to float32
  (inside a jitted step the cast fuses into its consumers, and is dropped where only shapes are
  read), and updates come back in the gradients' dtype. Float32 parameters are unaffected.

  Args:
    optimizer: any Optax transformation.

  Returns:
    The wrapped :class:`optax.GradientTransformationExtraArgs`; its state is ``optimizer``'s.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {'w': jnp.zeros((4, 4), jnp.bfloat16)}
    >>> state = float32_statistics(optax.adamw(1e-3)).init(params)
    >>> state[0].nu['w'].dtype
    dtype('float32')
  """

  def init_fn(params: optax.Params) -> optax.OptState:
    return optimizer.init(optax.tree.cast(params, jnp.float32))

  def update_fn(updates, state, params=None, **extra_args):
    float32_params = None if params is None else optax.tree.cast(params, jnp.float32)
    new_updates, state = optax.with_extra_args_support(optimizer).update(
      updates, state, float32_params, **extra_args
    )
    return optax.tree.cast_like(new_updates, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def float32_statistics_optimizer(name: str, labels: Any) -> optax.GradientTransformationExtraArgs:
  """The whole-model optimizer of setup ``name``, with float32 statistics.

  Args:
    name: a setup name (``"adamw"``, ``"ember"``, ``"adafactor"``, ...; ``models.optim.registry``).
    labels: ``"token_table"`` or ``"body"`` (the rest) per parameter, as
      ``ember_optax.token_table_labels`` or ``models.nets.published.table_labels`` give them.

  Returns:
    The optimizer, wrapped in :func:`float32_statistics`.
  """
  try:
    setup = registry.Setup.parse(name)
  except ValueError as error:
    raise ValueError(f'setup {name!r}: {error}') from None
  return float32_statistics(registry.make_optimizer(setup, labels, learning_rate=LEARNING_RATE))


class StateBytes(NamedTuple):
  """Optimizer-state bytes of the token tables and of the whole model."""

  tables: int
  model: int


def optimizer_state_bytes(
  name: str, params: Any, labels: Any, param_shardings: Any | None = None
) -> StateBytes:
  """Optimizer-state bytes of setup ``name`` on ``params``: the token tables' and the model's.

  Computed from shapes alone (``jax.eval_shape``), so ``params`` may be abstract; exact on every
  backend. The tables' share is ``models.optim.registry.table_state_bytes`` of the state:
  AdamW's moments of the table leaves, or the state of the branch that optimizes the tables
  (Ember's or Adafactor's, step count included). Counts shared by the whole model (AdamW's)
  are in ``model`` only.

  Args:
    name: ``"adamw"``, ``"ember"`` or ``"adafactor"`` (see :func:`float32_statistics_optimizer`).
    params: the parameters (arrays or ``jax.ShapeDtypeStruct``s; a dict or an ``nnx.State``).
    labels: ``"token_table"``/``"body"`` per parameter.
    param_shardings: if given (``NamedSharding`` per parameter), the bytes are one device's,
      with the state laid out by ``ember_optax.state_shardings``.

  Returns:
    ``StateBytes(tables, model)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> params = {'embed': jax.ShapeDtypeStruct((1000, 64), jnp.float32),
    ...           'w': jax.ShapeDtypeStruct((64, 64), jnp.float32)}
    >>> labels = {'embed': 'token_table', 'w': 'body'}
    >>> optimizer_state_bytes('ember', params, labels)
    StateBytes(tables=4264, model=37036)
  """
  state = jax.eval_shape(float32_statistics_optimizer(name, labels).init, params)
  if param_shardings is not None:
    state = shard_shapes(state, ember_optax.state_shardings(state, param_shardings))
  return StateBytes(registry.table_state_bytes(state, labels), tree_bytes(state))

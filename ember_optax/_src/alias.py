"""Ready-to-use optimizers built on :func:`scale_by_ember`."""

from collections.abc import Callable
from typing import Any

import optax

from ember_optax._src import checks, routing, transform

MaskOrFn = Any | Callable[[optax.Params], Any] | None


def ember(
    learning_rate: optax.ScalarOrSchedule,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Ember optimizer, for a language model's token tables.

  Ember scales each table's gradient by a factored, first-moment-free estimate
  of its second moment (see :func:`scale_by_ember`), then applies decoupled
  weight decay and the learning rate as :func:`optax.adamw` does:

  .. math::
    W \leftarrow W - \eta\,\big(G / (\sqrt{\hat v} + \epsilon) + \lambda W\big).

  Its state is ``V + D + 1`` floats per ``(V, D)`` table, against Adam's
  ``2 V D``. To use it on the tables alone and AdamW on the rest of a model, see
  :func:`ember_adamw`.

  Args:
    learning_rate: A fixed learning rate or an Optax schedule.
    b2: Decay rate of the second-moment statistics, in ``[0, 1)``.
    eps: Term added to the denominator, ``>= 0``.
    weight_decay: Decoupled weight decay coefficient, ``>= 0``.
    mask: A pytree of booleans (or a function of the params returning one)
      selecting the leaves that weight decay applies to, as in
      :func:`optax.adamw`.

  Returns:
    The corresponding :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import ember_optax
    >>> params = {'embedding': jnp.ones((1000, 64))}
    >>> optimizer = ember_optax.ember(learning_rate=1e-2)
    >>> opt_state = optimizer.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p['embedding'] ** 2))(params)
    >>> updates, opt_state = optimizer.update(grads, opt_state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    *Token Geometry* (arXiv:2607.01455).
  """
  checks.check_non_negative('learning_rate', learning_rate)
  checks.check_non_negative('weight_decay', weight_decay)
  return optax.chain(
      transform.scale_by_ember(b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def ember_adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    vocab_size: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    weight_decay_mask: MaskOrFn = None,
    ember_learning_rate: optax.ScalarOrSchedule | None = None,
    ember_b2: float | None = None,
    ember_eps: float | None = None,
    ember_weight_decay: float = 0.0,
    labels: Any | Callable[[optax.Params], Any] | None = None,
    is_token_table: routing.TokenTablePredicate | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Ember on the token tables and :func:`optax.adamw` on everything else.

  Built on :func:`optax.partition`: the tables (found by
  :func:`token_table_labels`, or given by ``labels``) are optimized by
  :func:`ember`, every other parameter by AdamW. Works on plain dicts, linen
  ``params``, ``flax.training.train_state.TrainState`` and
  ``nnx.Optimizer(model, ember_adamw(...), wrt=nnx.Param)``.

  Args:
    learning_rate: Learning rate (or schedule) of the body, and of the tables
      unless ``ember_learning_rate`` is given.
    vocab_size: Vocabulary size; leaves with an axis of this size are tables.
    b1: AdamW's first-moment decay.
    b2: AdamW's second-moment decay, and Ember's unless ``ember_b2`` is given.
    eps: AdamW's epsilon, and Ember's unless ``ember_eps`` is given.
    weight_decay: AdamW's decoupled weight decay.
    weight_decay_mask: AdamW's ``mask`` for weight decay.
    ember_learning_rate: Learning rate (or schedule) for the tables.
    ember_b2: Ember's decay rate; defaults to ``b2``.
    ember_eps: Ember's epsilon; defaults to ``eps``.
    ember_weight_decay: Ember's decoupled weight decay on the tables.
    labels: Overrides detection: a pytree of ``"ember"``/``"adamw"`` labels
      matching the params, or a function from params to one.
    is_token_table: Overrides detection with a predicate ``(path, leaf) ->
      bool``; see :func:`token_table_labels`.

  Returns:
    The corresponding :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: at ``init``, if no token table is found or a label names no
      transform.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import ember_optax
    >>> params = {'embed': {'embedding': jnp.zeros((512, 16))},
    ...           'mlp': {'kernel': jnp.zeros((16, 16))},
    ...           'lm_head': {'kernel': jnp.zeros((16, 512))}}
    >>> optimizer = ember_optax.ember_adamw(3e-4, vocab_size=512)
    >>> opt_state = optimizer.init(params)
  """
  allowed = frozenset({routing.EMBER, routing.ADAMW})

  def param_labels(params: optax.Params) -> Any:
    if labels is None:
      return routing.token_table_labels(
          params, vocab_size=vocab_size, is_token_table=is_token_table
      )
    if not callable(labels):
      return labels  # Checked once, at construction.
    result = labels(params)
    routing.check_labels(result, allowed)
    return result

  if labels is not None and not callable(labels):
    routing.check_labels(labels, allowed)

  table_optimizer = ember(
      ember_learning_rate if ember_learning_rate is not None else learning_rate,
      b2=ember_b2 if ember_b2 is not None else b2,
      eps=ember_eps if ember_eps is not None else eps,
      weight_decay=ember_weight_decay,
  )
  checks.check_non_negative('learning_rate', learning_rate)
  checks.check_decay('b1', b1)
  checks.check_decay('b2', b2)
  checks.check_non_negative('eps', eps)
  checks.check_non_negative('weight_decay', weight_decay)
  body_optimizer = optax.adamw(
      learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask
  )
  return optax.partition(
      {routing.EMBER: table_optimizer, routing.ADAMW: body_optimizer}, param_labels
  )

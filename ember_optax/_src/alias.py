"""Ready-to-use optimizers built on :func:`scale_by_ember`."""

from collections.abc import Callable
from typing import Any

import jax
import optax

from ember_optax._src import checks, routing, transform

MaskOrFn = Any | Callable[[optax.Params], Any] | None
LabelsOrFn = Any | Callable[[optax.Params], Any] | None


def ember(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  mask: MaskOrFn = None,
  vocab_size: int | None = None,
  token_axis: transform.TokenAxis = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Ember optimizer, for a language model's token tables.

  Ember scales each table's gradient by a factored, first-moment-free estimate
  of its second moment (see :func:`scale_by_ember`), then applies decoupled
  weight decay and the learning rate as :func:`optax.adamw` does:

  .. math::
    W \leftarrow W - \eta\,\big(G / (\sqrt{\hat v} + \epsilon) + \lambda W\big).

  Its state is ``V + D + 1`` floats per ``(V, D)`` table, against Adam's
  ``2 V D``. To use it on the tables alone and another optimizer on the rest of
  a model, see :func:`ember_partition` and :func:`ember_adamw`.

  Args:
    learning_rate: A fixed learning rate or an Optax schedule.
    b2: Decay rate of the second-moment statistics, in ``[0, 1)``.
    eps: Term added to the denominator, ``>= 0``.
    weight_decay: Decoupled weight decay coefficient, ``>= 0``.
    mask: A pytree of booleans (or a function of the params returning one)
      selecting the leaves that weight decay applies to, as in
      :func:`optax.adamw`.
    vocab_size: The vocabulary size; only tables of three or more dimensions
      whose token axis is not one of their last two need it (see
      :func:`scale_by_ember`).
    token_axis: The tables' token axis instead (see :func:`scale_by_ember`).

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
    transform.scale_by_ember(b2=b2, eps=eps, vocab_size=vocab_size, token_axis=token_axis),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )


def ember_partition(
  body: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  *,
  vocab_size: int | None = None,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  token_axis: transform.TokenAxis = None,
  labels: LabelsOrFn = None,
  is_token_table: routing.TokenTablePredicate | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Ember on the token tables and ``body``, any Optax optimizer, on everything else.

  Built on :func:`optax.partition` with the labels :data:`TABLE_LABEL`
  (``"token_table"``, optimized by :func:`ember`) and :data:`BODY_LABEL`
  (``"body"``), so the state is an ``optax.PartitionState`` whose
  ``inner_states`` has those two keys. The body optimizer never sees a token
  table: its ``init`` and ``update`` get the parameters with the tables
  masked out (``optax.MaskedNode``). With :func:`optax.contrib.muon` as the
  body, Muon orthogonalizes the body's matrices and its own Adam fallback
  takes the body's other leaves.

  The tables are found once, at ``init`` (by :func:`token_table_labels`, or
  given by ``labels``); ``update`` routes as ``init`` did, reading the routing
  from the state, so under :func:`optax.inject_hyperparams` a ``vocab_size``
  that arrives traced is never needed to route. Callables that are not
  schedules (``labels``, ``is_token_table``, ``token_axis``) must be named in
  ``inject_hyperparams(..., static_args=...)``, as for any Optax optimizer.

  Args:
    body: The optimizer of every parameter that is not a token table, for
      example ``optax.adamw(3e-4)`` or ``optax.contrib.muon(0.02)``.
    learning_rate: Ember's learning rate (or schedule) on the tables.
    vocab_size: Vocabulary size: the tables are the leaves with an axis of this
      size (see :func:`token_table_labels`), and it tells the token axis of
      tables of three or more dimensions.
    b2: Ember's decay rate, in ``[0, 1)``.
    eps: Ember's epsilon.
    weight_decay: Ember's decoupled weight decay on the tables.
    token_axis: The tables' token axis, where ``vocab_size`` does not tell it
      (see :func:`scale_by_ember`).
    labels: Overrides detection: a pytree of ``"token_table"``/``"body"``
      labels matching the params, or a function from params to one.
    is_token_table: Overrides detection with a predicate ``(path, leaf) ->
      bool``; see :func:`token_table_labels`.

  Returns:
    The corresponding :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: at construction if a hyperparameter is out of range or a label
      names no transform; at ``init`` if no token table is found.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import ember_optax
    >>> params = {'embed': {'embedding': jnp.zeros((512, 16))},
    ...           'mlp': {'kernel': jnp.zeros((16, 16)), 'bias': jnp.zeros(16)},
    ...           'lm_head': {'kernel': jnp.zeros((16, 512))}}
    >>> optimizer = ember_optax.ember_partition(
    ...     optax.contrib.muon(0.02), learning_rate=3e-3, vocab_size=512)
    >>> opt_state = optimizer.init(params)
    >>> sorted(opt_state.inner_states)
    ['body', 'token_table']

  References:
    *Token Geometry* (arXiv:2607.01455).
  """
  allowed = frozenset({routing.TABLE_LABEL, routing.BODY_LABEL})
  if labels is not None and not callable(labels):
    routing.check_labels(labels, allowed)
  table_optimizer = ember(
    learning_rate,
    b2=b2,
    eps=eps,
    weight_decay=weight_decay,
    vocab_size=vocab_size,
    token_axis=token_axis,
  )
  transforms = {routing.TABLE_LABEL: table_optimizer, routing.BODY_LABEL: body}

  def param_labels(params: optax.Params) -> Any:
    if labels is None:
      return routing.token_table_labels(
        params, vocab_size=vocab_size, is_token_table=is_token_table
      )
    if not callable(labels):
      return labels  # Checked once, at construction.
    result = labels(params)
    routing.check_labels(result, allowed)
    if routing.TABLE_LABEL not in jax.tree.leaves(result):
      # update reads the routing from Ember's statistics, so there must be some.
      raise ValueError(
        f'ember_partition: labels(params) labels no parameter {routing.TABLE_LABEL!r}; '
        f'label the token tables, or use the body optimizer alone.'
      )
    return result

  def init_fn(params: optax.Params) -> optax.PartitionState:
    return optax.partition(transforms, param_labels(params)).init(params)

  def update_fn(
    updates: optax.Updates,
    state: optax.PartitionState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.PartitionState]:
    if labels is not None and not callable(labels):
      routing_now = labels
    else:
      routing_now = _labels_from_state(state, updates)
    return optax.partition(transforms, routing_now).update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _labels_from_state(state: optax.PartitionState, updates: optax.Updates) -> Any:
  """The labels ``init`` chose, read from where Ember's statistics are and are not.

  ``optax.partition`` keeps a ``MaskedNode`` in each group's state where a
  parameter belongs to another group, so Ember's row statistics mark the tables.
  """
  table_state = state.inner_states[routing.TABLE_LABEL]
  is_ember_state = lambda x: isinstance(x, transform.ScaleByEmberState)  # noqa: E731
  ember_states = [
    x for x in jax.tree.leaves(table_state, is_leaf=is_ember_state) if is_ember_state(x)
  ]
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  # One entry per parameter, in order. Flax boxes may differ between the state
  # (a statistic's axis names) and the gradients (boxed or not): only the order
  # of the leaves is shared, so the labels take the gradients' structure.
  rows = jax.tree.leaves(ember_states[0].row, is_leaf=is_masked)
  treedef = jax.tree.structure(updates)
  if len(rows) != treedef.num_leaves:
    raise ValueError(
      f'ember_partition: got {treedef.num_leaves} gradient leaves for the {len(rows)} '
      f'parameters that init was given; pass gradients with the structure of the parameters.'
    )
  return treedef.unflatten(
    [routing.BODY_LABEL if is_masked(row) else routing.TABLE_LABEL for row in rows]
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
  token_axis: transform.TokenAxis = None,
  labels: LabelsOrFn = None,
  is_token_table: routing.TokenTablePredicate | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Ember on the token tables and :func:`optax.adamw` on everything else.

  :func:`ember_partition` with an AdamW body: the tables (found by
  :func:`token_table_labels`, or given by ``labels``) are optimized by
  :func:`ember`, every other parameter by AdamW. Works on plain dicts, linen
  ``params``, ``flax.training.train_state.TrainState``,
  ``nnx.Optimizer(model, ember_adamw(...), wrt=nnx.Param)`` and under
  :func:`optax.inject_hyperparams`.

  Args:
    learning_rate: Learning rate (or schedule) of the body, and of the tables
      unless ``ember_learning_rate`` is given.
    vocab_size: Vocabulary size; the tables are the leaves with an axis of this
      size.
    b1: AdamW's first-moment decay.
    b2: AdamW's second-moment decay, and Ember's unless ``ember_b2`` is given.
    eps: AdamW's epsilon, and Ember's unless ``ember_eps`` is given.
    weight_decay: AdamW's decoupled weight decay.
    weight_decay_mask: AdamW's ``mask`` for weight decay.
    ember_learning_rate: Learning rate (or schedule) for the tables.
    ember_b2: Ember's decay rate; defaults to ``b2``.
    ember_eps: Ember's epsilon; defaults to ``eps``.
    ember_weight_decay: Ember's decoupled weight decay on the tables.
    token_axis: The tables' token axis, where ``vocab_size`` does not tell it
      (see :func:`scale_by_ember`).
    labels: Overrides detection: a pytree of ``"token_table"``/``"body"``
      labels matching the params, or a function from params to one.
    is_token_table: Overrides detection with a predicate ``(path, leaf) ->
      bool``; see :func:`token_table_labels`.

  Returns:
    The corresponding :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: at construction if a hyperparameter is out of range or a label
      names no transform; at ``init`` if no token table is found.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import ember_optax
    >>> params = {'embed': {'embedding': jnp.zeros((512, 16))},
    ...           'mlp': {'kernel': jnp.zeros((16, 16))},
    ...           'lm_head': {'kernel': jnp.zeros((16, 512))}}
    >>> optimizer = ember_optax.ember_adamw(3e-4, vocab_size=512)
    >>> opt_state = optimizer.init(params)
  """
  checks.check_non_negative('learning_rate', learning_rate)
  checks.check_decay('b1', b1)
  checks.check_decay('b2', b2)
  checks.check_non_negative('eps', eps)
  checks.check_non_negative('weight_decay', weight_decay)
  body = optax.adamw(
    learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask
  )
  return ember_partition(
    body,
    ember_learning_rate if ember_learning_rate is not None else learning_rate,
    vocab_size=vocab_size,
    b2=ember_b2 if ember_b2 is not None else b2,
    eps=ember_eps if ember_eps is not None else eps,
    weight_decay=ember_weight_decay,
    token_axis=token_axis,
    labels=labels,
    is_token_table=is_token_table,
  )

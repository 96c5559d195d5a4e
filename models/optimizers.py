"""The optimizer of each setup of the comparison, built from a resolved ``Plan``.

* ``adamw``: ``optax.adamw`` on every parameter.
* ``ember``: ``ember_optax.ember_adamw``: Ember on the token tables, AdamW on the body.
* ``adafactor``: ``optax.adafactor`` on the token tables, AdamW on the body; the closest factored
  peer. It runs with ``multiply_by_parameter_scale=False`` so that its learning rate means what
  AdamW's and Ember's do (a step size, not a fraction of the parameter's norm); its other settings
  are optax's defaults (no momentum, update clipping at 1, ``decay_rate=0.8``).

Every setup clips the gradient to the same global norm first (``plan.config.clip_norm``), and
every group follows the plan's schedule. The token tables are the model's own
(``models.gpt.is_token_table``): the setups differ on the token tables only.
"""

from __future__ import annotations

import jax
import optax

import ember_optax
from models.config import Plan
from models.gpt import is_token_table, table_labels

BODY = ember_optax.BODY_LABEL


def table_transform(setup: str, plan: Plan) -> optax.GradientTransformation:
  """The transform ``setup`` applies to the token tables (also used to measure their state)."""
  config = plan.config
  lr = plan.schedule(plan.learning_rates[setup][1])
  if setup == 'adamw':
    return optax.adamw(
      lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay
    )
  if setup == 'ember':
    return ember_optax.ember(lr, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay)
  if setup == 'adafactor':
    # optax's Adafactor does not multiply its weight decay by the learning rate; passing
    # weight_decay * lr(t) as the (scheduled) rate makes it the same decoupled decay as AdamW's.
    wd = config.weight_decay
    return optax.adafactor(
      lr,
      multiply_by_parameter_scale=False,
      weight_decay_rate=(lambda count: wd * lr(count)) if wd else None,
    )
  raise ValueError(f'unknown setup {setup!r}')


def make_optimizer(setup: str, plan: Plan) -> optax.GradientTransformation:
  """The whole-model optimizer of ``setup``: gradient clipping, then the setup's optimizers."""
  config = plan.config
  body_peak, table_peak = plan.learning_rates[setup]
  body = optax.adamw(
    plan.schedule(body_peak),
    b1=config.b1,
    b2=config.b2,
    eps=config.eps,
    weight_decay=config.weight_decay,
  )
  if setup == 'adamw' and table_peak == body_peak:
    optimizer = body  # One optax.adamw over everything: the plain baseline.
  elif setup == 'ember':
    optimizer = ember_optax.ember_adamw(
      plan.schedule(body_peak),
      b1=config.b1,
      b2=config.b2,
      eps=config.eps,
      weight_decay=config.weight_decay,
      ember_learning_rate=plan.schedule(table_peak),
      ember_weight_decay=config.weight_decay,  # The same decoupled decay as the other setups.
      is_token_table=is_token_table(plan.model),
    )
  else:
    # The tables' state is stored under the setup's own name ("adafactor", or "adamw_tables"
    # for AdamW at its own table learning rate).
    table_label = 'adamw_tables' if setup == 'adamw' else setup

    def labels(params):
      return jax.tree.map(
        lambda label: table_label if label == ember_optax.TABLE_LABEL else BODY,
        table_labels(params, plan.model),
      )

    optimizer = optax.partition({table_label: table_transform(setup, plan), BODY: body}, labels)
  if config.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), optimizer)
  return optimizer

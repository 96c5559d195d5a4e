"""Each table optimizer's and body's Optax transform, built from the settings every setup shares.

The registry (``models.optim.registry``) names them; a transform that Optax does not have lives in
a module of its own (``models.optim.rowwise``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

import ember_optax
from models.optim import rowwise

# How Muon's orthogonalized updates are scaled: to the RMS of a typical AdamW update.
MUON_CONSISTENT_RMS = 0.2


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
  """The settings every setup shares.

  Attributes:
    b1: AdamW's first-moment decay (the body's, and the tables' under ``adamw``).
    b2: second-moment decay of AdamW, Ember and row-wise RMSprop.
    table_b2: the tables' own second-moment decay (``None``: ``b2``), for AdamW, Ember and
      row-wise RMSprop tables.
    eps: their epsilon.
    table_b1: AdamW tables' own first-moment decay (``None``: ``b1``).
    table_eps: the tables' own epsilon (``None``: ``eps``).
    weight_decay: decoupled weight decay of every group (none under ``frozen``).
    clip_norm: clip the whole gradient to this global norm first; 0 turns clipping off.
  """

  b1: float = 0.9
  b2: float = 0.999
  table_b2: float | None = None
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float = 0.0
  table_b1: float | None = None
  table_eps: float | None = None

  @property
  def tables_b1(self) -> float:
    """AdamW tables' first-moment decay: ``table_b1``, else ``b1``."""
    return self.b1 if self.table_b1 is None else self.table_b1

  @property
  def tables_eps(self) -> float:
    """The tables' epsilon: ``table_eps``, else ``eps``."""
    return self.eps if self.table_eps is None else self.table_eps

  @property
  def tables_b2(self) -> float:
    """The tables' second-moment decay: ``table_b2``, else ``b2``."""
    return self.b2 if self.table_b2 is None else self.table_b2


def adamw_tables(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters, vocab_size: int | None
) -> optax.GradientTransformation:
  del vocab_size
  return optax.adamw(
    learning_rate,
    b1=hyper.tables_b1,
    b2=hyper.tables_b2,
    eps=hyper.tables_eps,
    weight_decay=hyper.weight_decay,
  )


def ember_tables(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters, vocab_size: int | None
) -> optax.GradientTransformation:
  del vocab_size
  return ember_optax.ember(
    learning_rate, b2=hyper.tables_b2, eps=hyper.tables_eps, weight_decay=hyper.weight_decay
  )


def adafactor_tables(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters, vocab_size: int | None
) -> optax.GradientTransformation:
  del vocab_size
  wd = hyper.weight_decay
  # optax's Adafactor does not multiply its weight decay by the learning rate; passing
  # weight_decay * lr(t) as the (scheduled) rate makes it the same decoupled decay as AdamW's.
  schedule = learning_rate if callable(learning_rate) else (lambda count: learning_rate)
  return optax.adafactor(
    learning_rate,
    multiply_by_parameter_scale=False,
    weight_decay_rate=(lambda count: wd * schedule(count)) if wd else None,
  )


def rowwise_tables(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters, vocab_size: int | None
) -> optax.GradientTransformation:
  if vocab_size is None:
    raise ValueError('the rowwise table optimizer needs vocab_size to find each token axis')
  return rowwise.rowwise(
    learning_rate,
    vocab_size,
    b2=hyper.tables_b2,
    eps=hyper.tables_eps,
    weight_decay=hyper.weight_decay,
  )


def sparse_ember_rows(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters
) -> ember_optax.SparseRowTransformation:
  return ember_optax.sparse_ember(
    learning_rate, b2=hyper.tables_b2, eps=hyper.tables_eps, weight_decay=hyper.weight_decay
  )


def sparse_rowwise_rows(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters
) -> ember_optax.SparseRowTransformation:
  if hyper.weight_decay:
    raise ValueError('sparse row-wise RMSprop has no weight decay; set it to 0')
  return rowwise.sparse_rowwise(learning_rate, b2=hyper.tables_b2, eps=hyper.tables_eps)


def frozen(learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters, *unused: Any):
  del learning_rate, hyper, unused
  return optax.set_to_zero()


def adamw_body(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters
) -> optax.GradientTransformation:
  return optax.adamw(
    learning_rate, b1=hyper.b1, b2=hyper.b2, eps=hyper.eps, weight_decay=hyper.weight_decay
  )


def muon_body(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters
) -> optax.GradientTransformation:
  return optax.contrib.muon(
    learning_rate,
    weight_decay=hyper.weight_decay,
    adam_b1=hyper.b1,
    adam_b2=hyper.b2,
    adam_weight_decay=hyper.weight_decay,
    consistent_rms=MUON_CONSISTENT_RMS,
  )


def table_schedule(
  learning_rate: optax.ScalarOrSchedule, warmup: int, every: int
) -> optax.ScalarOrSchedule:
  """The tables' rate with a warm-up of their own over ``warmup`` steps (on top of the shared
  schedule), counted in model steps under :func:`every` (whose inner count is the tables'
  updates: update ``c`` comes at step ``c * every + every - 1``)."""
  if not warmup and every == 1:
    return learning_rate
  schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)

  def rate(count):
    step = count * every + every - 1
    return schedule(step) * (1.0 if not warmup else jnp.minimum(1.0, (step + 1) / warmup))

  return rate


def scaled_rate(learning_rate: optax.ScalarOrSchedule, scale: float) -> optax.ScalarOrSchedule:
  """``learning_rate`` (a number or a schedule) times ``scale``."""
  if scale == 1:
    return learning_rate
  if callable(learning_rate):
    return lambda count: scale * learning_rate(count)
  return scale * learning_rate


def every(transform: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
  """``transform`` applied every ``steps`` steps to the mean of their gradients (a zero update
  between), by ``optax.MultiSteps``, which keeps one accumulator the size of the parameters."""
  if steps == 1:
    return transform
  return optax.MultiSteps(transform, steps).gradient_transformation()


def require_head_label(labels: Any, label: str, setup: str) -> Any:
  """``labels`` (a tree, or a function of the params), checked to name the LM head ``label``: at
  once for a tree, at ``init`` for a function."""

  def checked(tree):
    if label not in jax.tree.leaves(tree):
      raise ValueError(
        f'setup {setup} gives the LM head an optimizer of its own, but the labels name no '
        f'{label!r}: label the head so (models.nets.gpt.table_labels(..., head_label=...))'
      )
    return tree

  if callable(labels):
    return lambda params: checked(labels(params))
  return checked(labels)

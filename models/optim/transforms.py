"""Each table optimizer's and body's Optax transform, built from the settings every setup shares.

The registry (``models.optim.registry``) names them; a transform that Optax does not have lives in
a module of its own (``models.optim.rowwise``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

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
    weight_decay: decoupled weight decay of every group (none under ``frozen``).
    clip_norm: clip the whole gradient to this global norm first; 0 turns clipping off.
  """

  b1: float = 0.9
  b2: float = 0.999
  table_b2: float | None = None
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float = 0.0

  @property
  def tables_b2(self) -> float:
    """The tables' second-moment decay: ``table_b2``, else ``b2``."""
    return self.b2 if self.table_b2 is None else self.table_b2


def adamw_tables(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters, vocab_size: int | None
) -> optax.GradientTransformation:
  del vocab_size
  return optax.adamw(
    learning_rate, b1=hyper.b1, b2=hyper.tables_b2, eps=hyper.eps, weight_decay=hyper.weight_decay
  )


def ember_tables(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters, vocab_size: int | None
) -> optax.GradientTransformation:
  del vocab_size
  return ember_optax.ember(
    learning_rate, b2=hyper.tables_b2, eps=hyper.eps, weight_decay=hyper.weight_decay
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
    learning_rate, vocab_size, b2=hyper.tables_b2, eps=hyper.eps, weight_decay=hyper.weight_decay
  )


def sparse_ember_rows(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters
) -> ember_optax.SparseRowTransformation:
  return ember_optax.sparse_ember(
    learning_rate, b2=hyper.tables_b2, eps=hyper.eps, weight_decay=hyper.weight_decay
  )


def sparse_rowwise_rows(
  learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters
) -> ember_optax.SparseRowTransformation:
  if hyper.weight_decay:
    raise ValueError('sparse row-wise RMSprop has no weight decay; set it to 0')
  return rowwise.sparse_rowwise(learning_rate, b2=hyper.tables_b2, eps=hyper.eps)


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

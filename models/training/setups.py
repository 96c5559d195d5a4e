"""The optimizer setups: one optimizer for the token tables, one for the rest (the body).

A setup is data, ``Setup(tables, body)``, named ``"ember"`` (Ember tables, AdamW body) or
``"ember+muon"`` (Ember tables, Muon body). Every program builds its optimizer here, from the
model's own table labels (``"token_table"`` / ``"body"``, as ``ember_optax.token_table_labels``
gives them), so the setups differ only where they say they do.

Table optimizers (:data:`TABLE_OPTIMIZERS`):

* ``adamw``: ``optax.adamw``.
* ``ember``: ``ember_optax.ember``.
* ``adafactor``: ``optax.adafactor`` with ``multiply_by_parameter_scale=False``, so that its
  learning rate is a step size as AdamW's and Ember's are; its other settings are optax's defaults
  (no momentum, update clipping at 1, ``decay_rate=0.8``).
* ``rowwise``: row-wise RMSprop (``models.training.rowwise``): one statistic per token.
* ``frozen``: no update (``optax.set_to_zero``), for fine-tuning baselines.

Bodies (:data:`BODIES`): ``adamw`` (``optax.adamw``), ``muon`` (``optax.contrib.muon`` with
``consistent_rms=0.2``, which scales its orthogonalized updates to AdamW's typical RMS so that one
learning rate suits both bodies; its non-matrix parameters get its internal AdamW) and ``frozen``
(no update: tables-only fine-tuning, ``"ember+frozen"``). The tables are never in the body's
optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optax

import ember_optax
from ember_optax.diagnostics import state_bytes_by_group
from models.training import rowwise

TABLE_OPTIMIZERS = ('adamw', 'ember', 'adafactor', 'rowwise', 'frozen')
BODIES = ('adamw', 'muon', 'frozen')
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


@dataclasses.dataclass(frozen=True)
class Setup:
  """A table optimizer and a body optimizer.

  Example:
    >>> Setup.parse('ember+muon')
    Setup(tables='ember', body='muon')
    >>> Setup('rowwise').name
    'rowwise'
  """

  tables: str
  body: str = 'adamw'

  def __post_init__(self):
    if self.tables not in TABLE_OPTIMIZERS:
      raise ValueError(
        f'unknown table optimizer {self.tables!r}; choose from {", ".join(TABLE_OPTIMIZERS)}'
      )
    if self.body not in BODIES:
      raise ValueError(f'unknown body optimizer {self.body!r}; choose from {", ".join(BODIES)}')
    if self.tables == self.body == 'frozen':
      raise ValueError('frozen+frozen trains nothing; freeze the tables or the body, not both')

  @property
  def name(self) -> str:
    """``tables`` with an AdamW body, else ``tables+body``."""
    return self.tables if self.body == 'adamw' else f'{self.tables}+{self.body}'

  @classmethod
  def parse(cls, name: str) -> Setup:
    """The setup named ``tables`` or ``tables+body``; raises ``ValueError`` naming the choices."""
    tables, _, body = name.partition('+')
    return cls(tables, body or 'adamw')


def table_optimizer(
  tables: str,
  learning_rate: optax.ScalarOrSchedule,
  hyper: Hyperparameters,
  vocab_size: int | None = None,
) -> optax.GradientTransformation:
  """The transform of table optimizer ``tables`` (``vocab_size`` is needed by ``rowwise``)."""
  wd = hyper.weight_decay
  b2 = hyper.b2 if hyper.table_b2 is None else hyper.table_b2
  if tables == 'adamw':
    return optax.adamw(learning_rate, b1=hyper.b1, b2=b2, eps=hyper.eps, weight_decay=wd)
  if tables == 'ember':
    return ember_optax.ember(learning_rate, b2=b2, eps=hyper.eps, weight_decay=wd)
  if tables == 'adafactor':
    # optax's Adafactor does not multiply its weight decay by the learning rate; passing
    # weight_decay * lr(t) as the (scheduled) rate makes it the same decoupled decay as AdamW's.
    schedule = learning_rate if callable(learning_rate) else (lambda count: learning_rate)
    return optax.adafactor(
      learning_rate,
      multiply_by_parameter_scale=False,
      weight_decay_rate=(lambda count: wd * schedule(count)) if wd else None,
    )
  if tables == 'rowwise':
    if vocab_size is None:
      raise ValueError('the rowwise table optimizer needs vocab_size to find each token axis')
    return rowwise.rowwise(learning_rate, vocab_size, b2=b2, eps=hyper.eps, weight_decay=wd)
  if tables == 'frozen':
    return optax.set_to_zero()
  raise ValueError(f'unknown table optimizer {tables!r}; choose from {TABLE_OPTIMIZERS}')


def body_optimizer(
  body: str, learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters
) -> optax.GradientTransformation:
  """The transform of body optimizer ``body``."""
  if body == 'adamw':
    return optax.adamw(
      learning_rate, b1=hyper.b1, b2=hyper.b2, eps=hyper.eps, weight_decay=hyper.weight_decay
    )
  if body == 'muon':
    return optax.contrib.muon(
      learning_rate,
      weight_decay=hyper.weight_decay,
      adam_b1=hyper.b1,
      adam_b2=hyper.b2,
      adam_weight_decay=hyper.weight_decay,
      consistent_rms=MUON_CONSISTENT_RMS,
    )
  if body == 'frozen':
    return optax.set_to_zero()
  raise ValueError(f'unknown body optimizer {body!r}; choose from {BODIES}')


def make_optimizer(
  setup: Setup,
  labels: Any,
  learning_rate: optax.ScalarOrSchedule,
  table_learning_rate: optax.ScalarOrSchedule | None = None,
  hyper: Hyperparameters = Hyperparameters(),
  vocab_size: int | None = None,
) -> optax.GradientTransformation:
  """The whole-model optimizer of ``setup``: gradient clipping, then the tables' and the body's.

  Args:
    setup: the table and body optimizers.
    labels: ``"token_table"`` or ``"body"`` per parameter (a pytree, or a function of the
      params), as ``ember_optax.token_table_labels`` or the model's ``table_labels`` give them.
    learning_rate: the body's learning rate (a number or a schedule).
    table_learning_rate: the tables' (``None``: the body's).
    hyper: the shared settings.
    vocab_size: the vocabulary size (``rowwise`` finds each table's token axis by it).

  Returns:
    The optimizer. AdamW tables beside an AdamW body at the body's learning rate and ``b2`` are
    one ``optax.adamw`` over every parameter, the plain baseline; otherwise the state of the tables'
    optimizer is ``optax.partition``'s ``"token_table"`` branch.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> params = {'embed': jnp.zeros((1000, 64)), 'w': jnp.zeros((64, 64))}
    >>> labels = {'embed': 'token_table', 'w': 'body'}
    >>> tx = make_optimizer(Setup('ember'), labels, learning_rate=1e-3)
    >>> state = tx.init(params)
    >>> table_state_bytes(state, labels)
    4264
  """
  body = body_optimizer(setup.body, learning_rate, hyper)
  if setup == Setup('adamw') and table_learning_rate is None and hyper.table_b2 is None:
    optimizer = body
  else:
    if table_learning_rate is None:
      table_learning_rate = learning_rate
    tables = table_optimizer(setup.tables, table_learning_rate, hyper, vocab_size)
    optimizer = optax.partition(
      {ember_optax.TABLE_LABEL: tables, ember_optax.BODY_LABEL: body}, labels
    )
  if hyper.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(hyper.clip_norm), optimizer)
  return optimizer


def table_state_bytes(state: Any, labels: Any) -> int:
  """Bytes of the optimizer state that the token tables alone keep, read from ``state``.

  The ``"token_table"`` branch of the partition (its step count included), or, for one
  ``optax.adamw`` over every parameter, the moments of the table leaves.
  """
  return state_bytes_by_group(state, labels)[ember_optax.TABLE_LABEL]

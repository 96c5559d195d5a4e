"""A comparison's setup: its table and body optimizers, named ``TABLES[,OPTION=VALUE...][+BODY]``.

The grammar every ``--setups`` flag reads and every saved run's name keeps; the optimizers it names
are the registry's (:mod:`models.optim.registry`, which builds a setup's optimizer).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from models.optim.transforms import Hyperparameters

# The LM head's label under a setup that gives it an optimizer of its own (``Setup.head``).
HEAD_LABEL = 'head_table'

# A setup's table options, in the order its name writes them (``ember,b2=0.99+muon``).
TABLE_OPTIONS = ('head', 'head_lr', 'b1', 'b2', 'eps', 'warmup', 'every')


@dataclasses.dataclass(frozen=True)
class Setup:
  """A table optimizer and a body optimizer, and the tables' own options.

  A setup's name is ``TABLES[,OPTION=VALUE...][+BODY]``: ``tables``, the token tables' optimizer;
  ``body``, the body's (AdamW where none is named); and options (:data:`TABLE_OPTIONS`, each a
  field, ``None`` or its default where not given) for the token tables alone:

  * ``head=NAME``: the LM head under table optimizer ``NAME``, the input table under ``TABLES``
    (the model's labels must name the head :data:`HEAD_LABEL`); ``head_lr=X``: its rate, ``X``
    times the tables' (each table family at its own best rate).
  * ``b1=X``: the first-moment decay of AdamW tables (the body keeps its own).
  * ``b2=X``, ``eps=X``: the tables' second-moment decay and epsilon.
  * ``warmup=N``: the tables' own linear warm-up over the first ``N`` steps, on top of the shared
    schedule.
  * ``every=K``: the tables update every ``K`` steps on the mean of ``K`` steps' gradients
    (``optax.MultiSteps``; it keeps one table-sized accumulator), their schedule still in steps.

  Example:
    >>> Setup.parse('ember+muon') == Setup('ember', body='muon')
    True
    >>> Setup('rowwise').name
    'rowwise'
    >>> Setup.parse('ember,b2=0.990,head=adamw+muon').name
    'ember,head=adamw,b2=0.99+muon'
  """

  tables: str
  body: str = 'adamw'
  head: str | None = None
  head_lr: float = 1.0
  b1: float | None = None
  b2: float | None = None
  eps: float | None = None
  warmup: int = 0
  every: int = 1

  def __post_init__(self):
    # The registry imports this module: the names are checked against it once both are loaded.
    from models.optim import registry

    registry.check_names(self)
    if self.tables == self.body == 'frozen':
      raise ValueError('frozen+frozen trains nothing; freeze the tables or the body, not both')
    if self.head == self.tables:
      raise ValueError(f"head={self.head} repeats the tables' optimizer; leave head out")
    for name in ('b1', 'b2'):
      value = getattr(self, name)
      if value is not None and not 0 <= value < 1:
        raise ValueError(f'{name}={value} must be in [0, 1)')
    if self.head_lr != 1 and self.head is None:
      raise ValueError('head_lr is the rate of a head with an optimizer of its own; set head=')
    if self.b1 is not None and 'adamw' not in (self.tables, self.head):
      raise ValueError('b1 is the first moment of AdamW tables; this setup has none')
    for name, low in (('head_lr', 0), ('eps', 0), ('warmup', 0), ('every', 1)):
      if (value := getattr(self, name)) is not None and not value >= low:
        raise ValueError(f'{name}={value} must be >= {low}')

  @property
  def name(self) -> str:
    """``tables``, its options, and ``+body`` unless the body is AdamW."""
    options = ''.join(
      f',{key}={value:g}' if isinstance(value, float) else f',{key}={value}'
      for key in TABLE_OPTIONS
      if (value := getattr(self, key)) != _OPTION_DEFAULTS[key]
    )
    return self.tables + options + ('' if self.body == 'adamw' else f'+{self.body}')

  def table_hyper(self, hyper: Hyperparameters) -> Hyperparameters:
    """``hyper`` with the tables' own ``b1``, ``b2`` and ``eps`` where this setup sets them."""
    return dataclasses.replace(
      hyper,
      table_b1=hyper.table_b1 if self.b1 is None else self.b1,
      table_b2=hyper.table_b2 if self.b2 is None else self.b2,
      table_eps=hyper.table_eps if self.eps is None else self.eps,
    )

  @classmethod
  def parse(cls, name: str) -> Setup:
    """The setup named ``name``; raises ``ValueError`` naming what is wrong."""
    head, plus, body = name.rpartition('+')
    tables, *options = (head if plus else body).split(',')
    fields: dict[str, Any] = {'tables': tables, 'body': body if plus else 'adamw'}
    for option in options:
      key, equals, value = option.partition('=')
      if not equals or key not in TABLE_OPTIONS:
        raise ValueError(f'{option!r} is not OPTION=VALUE with OPTION one of {TABLE_OPTIONS}')
      if key in fields:
        raise ValueError(f'option {key} is given twice')
      try:
        fields[key] = value if key == 'head' else _OPTION_TYPES[key](value)
      except ValueError:
        raise ValueError(f'{key}={value}: not a number') from None
    return cls(**fields)


_OPTION_DEFAULTS = {key: Setup.__dataclass_fields__[key].default for key in TABLE_OPTIONS}
_OPTION_TYPES = {
  'head_lr': float,
  'b1': float,
  'b2': float,
  'eps': float,
  'warmup': int,
  'every': int,
}

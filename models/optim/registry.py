"""The registry of the comparisons' optimizers: table optimizers, bodies, and their setups.

A setup is data, ``Setup(tables, body)`` (:mod:`models.optim.setups`), named ``"ember"`` (Ember
tables, AdamW body) or ``"ember+muon"`` (Ember tables, Muon body), with the tables' own options
(``"ember,head=adamw+muon"``: Adam on the LM head). Every program, plot and benchmark reads the two
registries below, :data:`TABLE_OPTIMIZERS` and :data:`BODIES`: an entry knows how to build its
transform, its colour (or line style) and label in plots, the state it keeps per table, and in
which comparisons it takes part by default. Adding an optimizer to every comparison is one entry
here (and its test in ``tests/models/optim/test_registry.py``). Each program builds its optimizer
with :func:`make_optimizer`, from the model's own table labels (``"token_table"`` / ``"body"``, as
``ember_optax.token_table_labels`` gives them), so the setups differ only where they say they do.

Table optimizers: ``adamw`` (``optax.adamw``), ``ember`` (``ember_optax.ember``), ``adafactor``
(``optax.adafactor`` with ``multiply_by_parameter_scale=False``, so that its rate is a step size
as AdamW's and Ember's are; otherwise optax's defaults: no momentum, update clipping at 1,
``decay_rate=0.8``), ``rowwise`` (row-wise RMSprop, ``models.optim.rowwise``: one statistic per
token) and ``frozen`` (no update, ``optax.set_to_zero``, for fine-tuning baselines).

Bodies: ``adamw`` (``optax.adamw``), ``muon`` (``optax.contrib.muon`` with
``consistent_rms=0.2``, which scales its orthogonalized updates to AdamW's typical RMS so that one
learning rate suits both bodies; its non-matrix parameters get its internal AdamW) and ``frozen``
(no update: tables-only fine-tuning, ``"ember+frozen"``). The tables are never in the body's
optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any

import optax

import ember_optax
from ember_optax.diagnostics import state_bytes_by_group
from models.optim import transforms
from models.optim.setups import HEAD_LABEL, Setup
from models.optim.transforms import Hyperparameters


@dataclasses.dataclass(frozen=True)
class TableOptimizer:
  """A table optimizer of the comparisons: how to build it, draw it and count its state.

  Attributes:
    name: its name in setups (``"ember"``, ``"ember+muon"``) and on the command line.
    label: what it is, for legends and tables.
    color: its colour in every plot (a Matplotlib colour).
    build: ``build(learning_rate, hyper, vocab_size)``, its Optax transform for the tables.
    state: the numbers it keeps for one ``(V, D)`` table, as the READMEs write them.
    state_numbers: ``state_numbers(V, D)``, that count; the optimizer's one step count, shared
      by its tables, aside.
    comparisons: the programs that compare it by default (:data:`COMPARISONS`).
    trains: False for a baseline that does not update the tables (``frozen``).
    table_accesses: table-sized memory reads and writes of one fused step (the step
      benchmark's bandwidth yardstick); ``None``: not timed there.
    sparse: ``sparse(learning_rate, hyper)``, its exact update of the touched rows alone (an
      ``ember_optax.SparseRowTransformation``), for tables too large to update densely; ``None``:
      it has no sparse form (a first moment moves every row every step).
  """

  name: str
  label: str
  color: str
  build: Callable[[optax.ScalarOrSchedule, Hyperparameters, int | None], Any]
  state: str
  state_numbers: Callable[[int, int], int]
  comparisons: tuple[str, ...] = ()
  trains: bool = True
  table_accesses: int | None = None
  sparse: Callable[[optax.ScalarOrSchedule, Hyperparameters], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Body:
  """A body optimizer (everything but the token tables).

  Attributes:
    name: its name after the ``+`` of a setup (``"ember+muon"``); ``adamw`` is left unnamed.
    label: what it is, in legends and tables.
    line_style: how its setups are drawn in plots (the table optimizer gives the colour).
    build: ``build(learning_rate, hyper)``, its Optax transform.
  """

  name: str
  label: str
  line_style: str
  build: Callable[[optax.ScalarOrSchedule, Hyperparameters], Any]


# The programs whose default setups the registry gives (:func:`default_setups`): the main job and
# quality benchmark ('train'), scaling, memory, step, SFT, RL, and the n-gram table ('ngram').
COMPARISONS = ('train', 'scaling', 'memory', 'step', 'sft', 'rl', 'ngram')


def _registry(*entries):
  for entry in entries:
    unknown = set(getattr(entry, 'comparisons', ())) - set(COMPARISONS)
    if unknown:
      raise ValueError(f'{entry.name}: unknown comparisons {sorted(unknown)}; see COMPARISONS')
  return {entry.name: entry for entry in entries}


TABLE_OPTIMIZERS: dict[str, TableOptimizer] = _registry(
  TableOptimizer(
    'adamw',
    'AdamW',
    'tab:blue',
    transforms.adamw_tables,
    state='2·V·D',
    state_numbers=lambda v, d: 2 * v * d,
    comparisons=COMPARISONS,
    table_accesses=7,
  ),
  TableOptimizer(
    'ember',
    'Ember',
    'tab:red',
    transforms.ember_tables,
    state='V + D + 1',
    state_numbers=lambda v, d: v + d + 1,
    comparisons=COMPARISONS,
    table_accesses=5,
    sparse=transforms.sparse_ember_rows,
  ),
  TableOptimizer(
    'adafactor',
    'Adafactor',
    'tab:green',
    transforms.adafactor_tables,
    # optax factors a dimension pair only if both are at least min_dim_size_to_factor (128);
    # a narrower table keeps its whole second moment (and two placeholder factors).
    state='V + D + 1 (V·D + 2 under 128 columns)',
    state_numbers=lambda v, d: v + d + 1 if min(v, d) >= 128 else v * d + 2,
    comparisons=('train', 'scaling', 'memory', 'step', 'sft'),
    table_accesses=4,
  ),
  TableOptimizer(
    'rowwise',
    'row-wise RMSprop',
    'tab:purple',
    transforms.rowwise_tables,
    state='V',
    state_numbers=lambda v, d: v,
    comparisons=('scaling', 'step', 'sft', 'rl', 'ngram'),
    table_accesses=4,
    sparse=transforms.sparse_rowwise_rows,
  ),
  TableOptimizer(
    'frozen',
    'frozen',
    'tab:gray',
    transforms.frozen,
    state='0',
    state_numbers=lambda v, d: 0,
    comparisons=('sft',),
    trains=False,
  ),
)

BODIES: dict[str, Body] = _registry(
  Body('adamw', 'AdamW body', '-', transforms.adamw_body),
  Body('muon', 'Muon body', '--', transforms.muon_body),
  Body('frozen', 'frozen body', ':', transforms.frozen),
)


def default_setups(comparison: str) -> tuple[str, ...]:
  """The table optimizers that program ``comparison`` (one of :data:`COMPARISONS`) compares by
  default, in registry order, each beside an AdamW body.

  Example:
    >>> default_setups('train')
    ('adamw', 'ember', 'adafactor')
  """
  if comparison not in COMPARISONS:
    raise ValueError(f'unknown comparison {comparison!r}; choose from {", ".join(COMPARISONS)}')
  return tuple(name for name, entry in TABLE_OPTIMIZERS.items() if comparison in entry.comparisons)


def sparse_tables() -> tuple[str, ...]:
  """The table optimizers with a sparse form (``TableOptimizer.sparse``), in registry order."""
  return tuple(name for name, entry in TABLE_OPTIMIZERS.items() if entry.sparse is not None)


def sparse_table_optimizer(
  tables: str, learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters = Hyperparameters()
) -> ember_optax.SparseRowTransformation:
  """The sparse form of table optimizer ``tables``: its update of the rows a batch touched.

  Example:
    >>> import jax.numpy as jnp, ember_optax
    >>> tx = sparse_table_optimizer('ember', 1e-2)
    >>> grads = ember_optax.IndexedRows(jnp.array([3]), jnp.ones((1, 4)))
    >>> updates, _ = tx.update(grads, tx.init(jnp.zeros((100, 4))))
    >>> updates.ids.tolist()
    [3]
  """
  entry = TABLE_OPTIMIZERS.get(tables)
  if entry is None or entry.sparse is None:
    raise ValueError(
      f'table optimizer {tables!r} has no sparse form; choose from {", ".join(sparse_tables())}'
    )
  return entry.sparse(learning_rate, hyper)


def plot_style(setup: str) -> tuple[str, str]:
  """``(colour, line style)`` of the setup named ``setup``: its tables' colour, its body's line."""
  parsed = Setup.parse(setup)
  return TABLE_OPTIMIZERS[parsed.tables].color, BODIES[parsed.body].line_style


def table_optimizer(
  tables: str,
  learning_rate: optax.ScalarOrSchedule,
  hyper: Hyperparameters,
  vocab_size: int | None = None,
) -> optax.GradientTransformation:
  """The transform of table optimizer ``tables`` (``vocab_size`` is needed by ``rowwise``)."""
  return _entry(TABLE_OPTIMIZERS, 'table', tables).build(learning_rate, hyper, vocab_size)


def body_optimizer(
  body: str, learning_rate: optax.ScalarOrSchedule, hyper: Hyperparameters
) -> optax.GradientTransformation:
  """The transform of body optimizer ``body``."""
  return _entry(BODIES, 'body', body).build(learning_rate, hyper)


def check_names(setup: Setup) -> None:
  """Raises ``ValueError`` if ``setup`` names an optimizer that neither registry has."""
  for role, name in (('table', setup.tables), ('head', setup.head or setup.tables)):
    _entry(TABLE_OPTIMIZERS, role, name)
  _entry(BODIES, 'body', setup.body)


def _entry(entries: dict, role: str, name: str | None) -> Any:
  """``entries[name]``; raises ``ValueError`` naming the choices if there is none."""
  if name not in entries:
    raise ValueError(f'unknown {role} optimizer {name!r}; choose from {", ".join(entries)}')
  return entries[name]


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
      params), as ``ember_optax.token_table_labels`` or the model's ``table_labels`` give them;
      :data:`HEAD_LABEL` for the LM head where ``setup.head`` is set.
    learning_rate: the body's learning rate (a number or a schedule).
    table_learning_rate: the tables' (``None``: the body's).
    hyper: the shared settings.
    vocab_size: the vocabulary size (``rowwise`` finds each table's token axis by it).

  Returns:
    The optimizer: one ``optax.adamw`` for ``Setup('adamw')`` at one rate and ``b2`` (the plain
    baseline), else an ``optax.partition`` with a ``"token_table"`` branch.

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
    table_hyper = setup.table_hyper(hyper)
    rate = transforms.table_schedule(table_learning_rate, setup.warmup, setup.every)

    def tables(name: str, scale: float = 1.0) -> optax.GradientTransformation:
      scaled = transforms.scaled_rate(rate, scale)
      return transforms.every(table_optimizer(name, scaled, table_hyper, vocab_size), setup.every)

    branches = {ember_optax.TABLE_LABEL: tables(setup.tables), ember_optax.BODY_LABEL: body}
    if setup.head is not None:
      branches[HEAD_LABEL] = tables(setup.head, setup.head_lr)
      labels = transforms.require_head_label(labels, HEAD_LABEL, setup.name)
    optimizer = optax.partition(branches, labels)
  if hyper.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(hyper.clip_norm), optimizer)
  return optimizer


def table_state_bytes(state: Any, labels: Any) -> int:
  """Bytes of the optimizer state that the token tables alone keep, read from ``state``: the
  ``"token_table"`` branch of the partition (its step count included) and the head's where it has
  one, or, for one ``optax.adamw`` over every parameter, the moments of the table leaves."""
  groups = state_bytes_by_group(state, labels)
  return groups[ember_optax.TABLE_LABEL] + groups.get(HEAD_LABEL, 0)

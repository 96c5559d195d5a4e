"""One run of the GPT with a hashed n-gram table (``models.nets.ngram``), or without one.

The model's parameters train under the main job's setup (``ember``: Ember on the token tables,
AdamW on the body, the plan's schedule and clipping); the n-gram table, which is not an
``nnx.Param``, trains by the rows each batch looks up, under a table optimizer of the registry:
its sparse form where it has one (``ember`` -> ``ember_optax.sparse_ember``, ``rowwise`` -> sparse
row-wise RMSprop), else its dense Optax form on the gradient the lookup scatters into a table of
zeros (``adamw``: what a user without a sparse optimizer runs). The steps run in
``models.training.loop.run_steps``: a finished run is read back, an unfinished one resumes from
its checkpoint, a diverged one is a result.

A run's result adds to the main job's measures the whole step's peak memory as XLA plans it
(``compiled.memory_analysis()``: arguments, outputs and scratch, less what is donated), so that a
table's cost is read beside its quality.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import itertools
import time
from typing import Any

from flax import nnx
import jax
import numpy as np

from ember_optax.diagnostics import tree_bytes
from models.nets.ngram import NgramConfig, NgramTable
from models.optim import registry
from models.training import step as step_lib
from models.training.checkpoints import RunCheckpoints
from models.training.loop import Comparison, FinishedSteps, run_steps

# The main job's setup around the table: Ember on the token tables, AdamW on the body.
BASE_SETUP = registry.Setup('ember')


@dataclasses.dataclass(frozen=True)
class NgramRun:
  """What one run trains: a table of ``2**log_rows`` rows under ``tables`` at ``table_lr``, or no
  table (``log_rows`` None).

  Example:
    >>> NgramRun(20, 'ember', 0.01, seed=0).name
    'ember-rows2^20-lr0.01-seed0'
    >>> NgramRun(None, None, None, seed=1).name
    'none-seed1'
  """

  log_rows: int | None
  tables: str | None
  table_lr: float | None
  seed: int

  @property
  def name(self) -> str:
    if self.log_rows is None:
      return f'none-seed{self.seed}'
    return f'{self.tables}-rows2^{self.log_rows}-lr{self.table_lr:g}-seed{self.seed}'

  @property
  def setup(self) -> str:
    """The run's setup as tables report it: ``none``, or ``<tables>@2^<log_rows>``."""
    return 'none' if self.log_rows is None else f'{self.tables}@2^{self.log_rows}'

  @classmethod
  def of_setup(cls, setup: str, table_lr: float | None, seed: int) -> NgramRun:
    """The run of ``setup`` (as :attr:`setup` names it) at ``table_lr`` and ``seed``.

    Example:
      >>> NgramRun.of_setup('ember@2^20', 0.01, seed=0).name
      'ember-rows2^20-lr0.01-seed0'
    """
    if setup == 'none':
      return cls(None, None, None, seed)
    tables, _, rows = setup.partition('@2^')
    return cls(int(rows), tables, table_lr, seed)


def table_optimizer(run: NgramRun, schedule: Callable, hyper: registry.Hyperparameters) -> Any:
  """The n-gram table's optimizer: the sparse form of ``run.tables`` if it has one, else its
  dense transform (on the table's whole gradient)."""
  if run.tables in registry.sparse_tables():
    return registry.sparse_table_optimizer(run.tables, schedule, hyper)
  return registry.table_optimizer(run.tables, schedule, hyper)


def step_peak_bytes(jitted: Any, *args: Any) -> int:
  """The peak memory XLA plans for one call of ``jitted`` on ``args``: arguments, outputs and
  scratch, less the outputs that reuse donated arguments."""
  analysis = jitted.lower(*args).compile().memory_analysis()
  return int(
    analysis.argument_size_in_bytes
    + analysis.output_size_in_bytes
    + analysis.temp_size_in_bytes
    - analysis.alias_size_in_bytes
  )


@dataclasses.dataclass(frozen=True)
class NgramStep:
  """A run's model, its starting state and its compiled train step.

  Attributes:
    graphdef: the model's graph.
    tables: the n-gram table's ``nnx.State`` (its values are replaced by the state's), or None.
    state: the starting state: ``params``, ``opt_state``, and ``table``, ``table_state`` with a
      table.
    train_step: the jitted step on ``(*step_args(state), inputs, targets)``, donating the state.
    peak_bytes: the step's peak memory as XLA plans it (:func:`step_peak_bytes`).
    table_state_bytes: the n-gram table optimizer's state.
    body_state_bytes: the model's optimizer state.
  """

  graphdef: Any
  tables: Any
  state: dict
  train_step: Any
  peak_bytes: int
  table_state_bytes: int
  body_state_bytes: int

  def step(self, state: dict, batch) -> tuple[dict, jax.Array]:
    """One train step from ``state``: the new state and the batch's loss."""
    if self.tables is None:
      params, opt_state, loss = self.train_step(state['params'], state['opt_state'], *batch)
      return {'params': params, 'opt_state': opt_state}, loss
    params, opt_state, table, table_state, loss = self.train_step(
      state['params'], state['opt_state'], self.tables, state['table'], state['table_state'], *batch
    )
    return {
      'params': params,
      'opt_state': opt_state,
      'table': table,
      'table_state': table_state,
    }, loss

  def tables_of(self, state: dict):
    """The n-gram table's ``nnx.State`` holding ``state``'s table, or None."""
    return None if self.tables is None else step_lib.with_table(self.tables, state['table'])


def build_step(comparison: Comparison, run: NgramRun) -> NgramStep:
  """``run``'s model from its seed, its optimizers and its compiled train step."""
  plan = comparison.plan
  ngram = None if run.log_rows is None else NgramConfig(2**run.log_rows)
  model = comparison.init_model(run.seed, ngram=ngram)
  body_lr = plan.learning_rates[BASE_SETUP.name][0]
  optimizer = comparison.optimizer(BASE_SETUP, (body_lr, body_lr))
  if ngram is None:
    graphdef, params = nnx.split(model, nnx.Param)
    tables = None
    state = {'params': params, 'opt_state': optimizer.init(params)}
    train_step = jax.jit(step_lib.train_step(graphdef, optimizer), donate_argnums=(0, 1))
    step_args = (state['params'], state['opt_state'])
  else:
    graphdef, params, tables = nnx.split(model, nnx.Param, NgramTable)
    table = tables['ngram']['table'][...]
    rows_optimizer = table_optimizer(run, plan.schedule(run.table_lr), plan.hyper)
    state = {
      'params': params,
      'opt_state': optimizer.init(params),
      'table': table,
      'table_state': rows_optimizer.init(table),
    }
    train_step = jax.jit(
      step_lib.ngram_train_step(graphdef, optimizer, rows_optimizer), donate_argnums=(0, 1, 3, 4)
    )
    step_args = (state['params'], state['opt_state'], tables, state['table'], state['table_state'])
  inputs, targets = next(iter(comparison.train_batches(run.seed)))
  return NgramStep(
    graphdef=graphdef,
    tables=tables,
    state=state,
    train_step=train_step,
    peak_bytes=step_peak_bytes(train_step, *step_args, inputs, targets),
    table_state_bytes=0 if ngram is None else tree_bytes(state['table_state']),
    body_state_bytes=tree_bytes(state['opt_state']),
  )


def time_steps(comparison: Comparison, run: NgramRun, steps: int, warmup: int = 3) -> list[float]:
  """Seconds of each of ``steps`` train steps of ``run`` from its start, after ``warmup`` steps
  (the first compiles); each waits for its loss, so it covers the whole step."""
  built = build_step(comparison, run)
  state, times = built.state, []
  batches = itertools.islice(comparison.train_batches(run.seed), warmup + steps)
  for number, batch in enumerate(batches):
    started = time.perf_counter()
    state, loss = built.step(state, batch)
    float(loss)
    if number >= warmup:
      times.append(time.perf_counter() - started)
  return times


def train_ngram(
  comparison: Comparison,
  run: NgramRun,
  checkpoints: RunCheckpoints | None = None,
  log: Callable[[str], None] = print,
) -> dict:
  """Trains ``run``'s model from its seed; returns its measures and curves.

  Args:
    comparison: what the runs share (the plan's body learning rate is ``ember``'s).
    run: the table, its optimizer and rate, and the seed.
    checkpoints: read back, resume and save the run (``run_steps``).
    log: where the run's messages go.

  Returns:
    The main job's result fields (``final_val_loss``, ``rare_val_loss``, curves,
    ``mean_step_time_s``, ``params_sha256``, ...) with the run's ``log_rows``, ``tables``,
    ``table_lr``, ``steps``, ``table_state_bytes`` (the n-gram table's optimizer state) and
    ``step_peak_bytes``.
  """
  plan = comparison.plan
  built = build_step(comparison, run)
  graphdef, tables_of = built.graphdef, built.tables_of
  body_lr = plan.learning_rates[BASE_SETUP.name][0]

  def curve_point(state: dict) -> float:
    batches, mask = comparison.curve_batches, comparison.rare_mask
    return step_lib.evaluate(graphdef, state['params'], batches, mask, tables_of(state))[0]

  def step(number: int, state: dict, batch) -> tuple[dict, dict]:
    state, loss = built.step(state, batch)
    return state, {'loss': loss}

  def record(number: int, state: dict, metrics: dict, progress: dict) -> dict[str, str]:
    progress['train_curve'].append((number, metrics['loss']))
    if number % plan.eval_every == 0 and number < plan.steps:
      progress['val_curve'].append((number, curve_point(state)))
    return {'val': f'{progress["val_curve"][-1][1]:.3f}'}

  def finish(finished: FinishedSteps) -> dict:
    progress, final = finished.progress, finished.state
    if finished.diverged:
      final_val = rare_val = float('nan')
    else:
      final_val, rare_val = step_lib.evaluate(
        graphdef, final['params'], comparison.val_batches, comparison.rare_mask, tables_of(final)
      )
      progress['val_curve'].append((plan.steps, final_val))
    train_curve = progress['train_curve']
    return {
      'setup': run.setup,
      'log_rows': run.log_rows,
      'tables': run.tables,
      'seed': run.seed,
      'lr': body_lr,
      'table_lr': run.table_lr,
      'steps': plan.steps,
      'final_val_loss': final_val,
      'rare_val_loss': rare_val,
      'final_train_loss': float('nan')
      if finished.diverged
      else float(np.mean([v for _, v in train_curve[-10:]])),
      'table_state_bytes': built.table_state_bytes,
      'model_state_bytes': built.body_state_bytes + built.table_state_bytes,
      'step_peak_bytes': built.peak_bytes,
      **finished.summary(),
      'train_loss_curve': [list(point) for point in train_curve],
      'val_loss_curve': [list(point) for point in progress['val_curve']],
    }

  result, _ = run_steps(
    f'[ngram] {run.name}',
    built.state,
    steps=plan.steps,
    step=step,
    batches=lambda start: comparison.train_batches(run.seed, start=start),
    begin=lambda state: {'train_curve': [], 'val_curve': [(0, curve_point(state))]},
    record=record,
    finish=finish,
    checkpoints=checkpoints,
    log=log,
    bar=f'{run.setup:>14} seed {run.seed}' if plan.progress else None,
  )
  return result

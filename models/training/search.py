"""The learning-rate search every comparison shares: a grid per setup that grows until it brackets
the setup's best, more seeds at the best, and the selection and comparison read from the runs.

A program's settings combine :class:`~models.training.config.TrainConfig` with
:class:`SearchOptions` (the quality benchmark, fine-tuning); :func:`run_search` trains the grid
through :func:`models.training.loop.train_one`, keeping every finished run (so that a search
resumes), and :func:`summarize_search` selects each setup's best learning rate and compares the
setups from the runs alone, so that saved runs give the same tables again. RL and the scaling
sweep use the same pieces (:func:`bracket_best`, :func:`best_learning_rate`) on runs of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import operator
from pathlib import Path
import time
from typing import Any

import numpy as np

from models import cli
from models.cli import ConfigError, option
from models.data.corpus import Corpus
from models.reporting import results as results_lib
from models.reporting import search as search_report
from models.reporting import stats, tables
from models.training import checkpoints as checkpoints_lib
from models.training.config import TrainConfig, resolve
from models.training.loop import Comparison, train_one
from models.training.presets import Preset

# The starting grid of the main job's learning rates; a search extends it wherever a best lands
# on its edge.
DEFAULT_LRS = (2e-3, 4e-3, 8e-3)
SWEEPS = search_report.SWEEPS


@dataclasses.dataclass(frozen=True)
class SearchOptions:
  """The settings of a learning-rate search, combined with a program's ``TrainConfig``."""

  best_seeds: tuple[int, ...] = option(
    (), "more seeds, run only at each setup's best learning rate once the grid brackets it"
  )
  lrs: tuple[float, ...] = option(DEFAULT_LRS, 'the starting grid of peak learning rates')
  sweep: str = option(
    'lr',
    "lr: each setup's peak learning rate, body and tables alike; table-lr: the tables' alone, "
    'the body at --lr',
    choices=tuple(SWEEPS),
  )
  extend: int = option(2, "how many times a grid may grow on each side to bracket a setup's best")


@dataclasses.dataclass(frozen=True)
class SearchConfig(SearchOptions, TrainConfig):
  """A training comparison with its learning rates searched: what :func:`run_search` runs."""


def run_search(
  config: SearchConfig,
  verbose: bool = True,
  *,
  preset: Preset | None = None,
  corpus: Corpus | None = None,
  runs_dir: str | Path | None = None,
  comparison: Comparison | None = None,
  settings: Mapping[str, Any] | None = None,
) -> dict:
  """Sweeps ``config.lrs`` for every setup and seed of ``config``; returns the results.

  ``config`` is a :class:`SearchConfig`, or a program's settings that extend it (the quality
  benchmark's, fine-tuning's).

  The runs' learning-rate settings other than the body's ``lr`` (for ``sweep="table-lr"``) are
  replaced by the sweep; a grid grows up to ``config.extend`` times on each side to bracket a
  setup's best, which then gets ``config.best_seeds`` too.

  Args:
    config: the settings.
    verbose: print progress and the tables.
    preset: the model size to resolve ``config`` against (default: ``config.preset``'s).
    corpus: the corpus, if already loaded (it must match ``config``'s corpus settings).
    runs_dir: keep each finished run's results here as ``<run>.json`` (needs
      ``config.checkpoint_dir``); default: beside its checkpoints.
    comparison: what the runs share, if built already (fine-tuning builds its own: a
      pretrained start, instruction batches); its plan must be ``config`` resolved.
    settings: more of what the runs' numbers depend on (a base model's key, say), recorded with
      the results and checked against saved runs.

  Returns:
    The dict of :func:`summarize_search`, plus ``"data"``, ``"environment"`` and
    ``"total_time_s"``.
  """
  lrs, sweep, extend = config.lrs, config.sweep, config.extend
  if sweep not in SWEEPS:
    raise ConfigError(f'--sweep must be one of {list(SWEEPS)}, got {sweep!r}')
  check_search(lrs, extend, config.seeds, config.best_seeds)
  if runs_dir is not None and not config.checkpoint_dir:
    raise ConfigError('keeping runs apart from their checkpoints needs --checkpoint-dir')
  if sweep == 'lr' and config.lr is not None:
    raise ConfigError(
      '--sweep lr sets every learning rate itself: drop --lr, or use '
      '--sweep table-lr to keep the body at --lr'
    )
  plan = resolve(config, preset) if comparison is None else comparison.plan
  log = print if verbose else (lambda *a, **k: None)
  if comparison is None:
    comparison = Comparison.build(plan, corpus, verbose=verbose)
  settings = {**plan.training_settings(), **(settings or {}), 'sweep': sweep}
  losses = stats.LOSSES + tuple(f'{name}_loss' for name in comparison.extra_evals)
  folder = results_folder = None
  if plan.checkpoint_dir:
    folder = checkpoints_lib.open_folder(plan.checkpoint_dir, settings)
  if runs_dir is not None:
    results_folder = checkpoints_lib.open_folder(runs_dir, settings)
  started = time.perf_counter()
  runs = []

  def run_point(setup, lr: float, seeds: Sequence[int]) -> list[dict]:
    body_lr = plan.learning_rates[setup.name][0]
    rates = (lr, lr) if sweep == 'lr' else (body_lr, lr)
    point = []
    for seed in seeds:
      checkpoints = None
      if folder is not None:
        name = run_name(setup.name, sweep, lr, seed)
        checkpoints = checkpoints_lib.RunCheckpoints(
          folder, name, plan.checkpoint_every, results=results_folder
        )
      point.append(train_one(comparison, setup, seed, rates, checkpoints, log=log))
    return point

  for setup in plan.setups:

    def run_grid_point(lr: float, setup=setup) -> list[dict]:
      point = run_point(setup, lr, plan.seeds)
      summary = stats.summarize(point)[setup.name]['final_val_loss']
      log(
        f'[bench] {setup.name} at {sweep} {lr:g}: final val loss {tables.format_loss(summary)}',
        flush=True,
      )
      return point

    setup_runs, best = bracket_best(
      lrs, extend, run_grid_point, lambda runs: best_learning_rate(runs, SWEEPS[sweep])
    )
    runs.extend(setup_runs)
    if config.best_seeds:
      runs.extend(run_point(setup, best, config.best_seeds))
      log(f'[bench] {setup.name}: seeds {list(config.best_seeds)} at its best, {sweep} {best:g}')
  train_fields = {field.name for field in dataclasses.fields(TrainConfig)}
  given = {k: v for k, v in dataclasses.asdict(plan.config).items() if k in train_fields}
  results = summarize_search({**given, 'sweep': sweep}, settings, runs, losses)
  corpus = comparison.corpus
  results['data'] = {k: v for k, v in corpus.info.items() if k != 'val_file_list'}
  results['environment'] = results_lib.environment(corpus.cache_dir)
  results['total_time_s'] = time.perf_counter() - started
  search_report.report(results, Path(config.out) if config.out else None, verbose=verbose)
  return results


def check_search(
  lrs: Sequence[float], extend: int, seeds: Sequence[int], best_seeds: Sequence[int]
) -> None:
  """Raises ``ConfigError`` for a learning-rate search that cannot run (``--lrs``, ``--extend``,
  ``--seeds``, ``--best-seeds``), before anything trains."""
  if not lrs or any(
    isinstance(lr, bool) or not (isinstance(lr, int | float) and np.isfinite(lr) and lr > 0)
    for lr in lrs
  ):
    raise ConfigError(f'--lrs must be positive, finite learning rates, got {list(lrs)}')
  if len(set(lrs)) != len(lrs):
    raise ConfigError(f'--lrs must not repeat a learning rate, got {list(lrs)}')
  if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
    raise ConfigError(f'--extend must be an integer >= 0, got {extend!r}')
  for name, values in (('seeds', seeds), ('best_seeds', best_seeds)):
    for seed in values:
      if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f'{cli.flag(name)} must be integers >= 0, got {list(values)}')
    if len(set(values)) != len(values):
      raise ConfigError(f'{cli.flag(name)} must not repeat a seed, got {list(values)}')
  if not seeds:
    raise ConfigError('--seeds: name at least one seed')
  if set(best_seeds) & set(seeds):
    raise ConfigError(
      f'--best-seeds must not repeat a seed of --seeds, got {list(best_seeds)} and {list(seeds)}'
    )


def bracket_best(
  lrs: Sequence[float],
  extend: int,
  run_point: Callable[[float], list[dict]],
  best_of: Callable[[list[dict]], float],
) -> tuple[list[dict], float]:
  """Runs a grid of learning rates, growing it until it brackets the best; one setup's search.

  Args:
    lrs: the starting grid.
    extend: how many times the grid may grow on each side: a best on an edge adds a point
      beyond it, at the ratio of the two outermost points.
    run_point: ``run_point(lr)``, the runs (one per seed) at a learning rate.
    best_of: the best learning rate of the runs so far.

  Returns:
    ``(runs, best)``: every run, and the best learning rate of the final grid.
  """
  grid, done, extensions, runs = sorted(float(lr) for lr in lrs), set(), {'low': 0, 'high': 0}, []
  while True:
    for lr in grid:
      if lr not in done:
        runs.extend(run_point(lr))
        done.add(lr)
    best = best_of(runs)
    if len(grid) > 1 and best == grid[0] and extensions['low'] < extend:
      grid.insert(0, grid[0] ** 2 / grid[1])
      extensions['low'] += 1
    elif len(grid) > 1 and best == grid[-1] and extensions['high'] < extend:
      grid.append(grid[-1] ** 2 / grid[-2])
      extensions['high'] += 1
    else:
      return runs, best


def run_name(setup: str, sweep: str, lr: float, seed: int) -> str:
  """The name a run's checkpoints and saved results go by, e.g. ``ember-lr0.004-seed0``."""
  return f'{setup}-{sweep}{lr:g}-seed{seed}'


def _mean_loss(runs: Sequence[dict], loss: Callable[[dict], float]) -> float:
  """Mean ``loss`` of the runs, with a diverged grid point (None or NaN) ranked last."""
  values = [loss(r) for r in runs]
  mean = float(np.mean(np.asarray([np.nan if v is None else v for v in values], dtype=float)))
  return float('inf') if np.isnan(mean) else mean


def best_learning_rate(
  runs: Sequence[dict],
  key: str,
  loss: Callable[[dict], float] = operator.itemgetter('final_val_loss'),
) -> float:
  """The learning rate (``key``: ``"lr"`` or ``"table_lr"``) of one setup's ``runs`` with the
  lowest mean ``loss`` (default: the final validation loss) over the seeds that every grid
  point ran.

  Seeds added at the best point alone (``--best-seeds``) do not take part, so every point is
  judged on the same seeds.
  """
  by_lr: dict[float, dict[int, dict]] = {}
  for r in runs:
    by_lr.setdefault(r[key], {})[r['seed']] = r
  common = set.intersection(*(set(seeds) for seeds in by_lr.values()))
  return min(
    sorted(by_lr), key=lambda lr: _mean_loss([by_lr[lr][seed] for seed in sorted(common)], loss)
  )


def summarize_search(
  config: dict, settings: dict, runs: list[dict], losses: Sequence[str] = stats.LOSSES
) -> dict:
  """Selects each setup's best learning rate and compares the setups, from the runs alone.

  Args:
    config: the benchmark's configuration (``dataclasses.asdict`` of its ``TrainConfig``, with
      ``"sweep"``).
    settings: the runs' training settings (``Plan.training_settings()``, with ``"sweep"``).
    runs: the main job's run entries of every setup, seed and learning rate.
    losses: the runs' losses to summarize and compare (``stats.LOSSES``, plus a comparison's
      ``extra_evals``).

  Returns:
    ``{"config", "settings", "sweep", "grid", "best", "paired", "lr_rule", "runs", "grid_table",
    "table", "paired_table"}``: ``grid[setup][lr]`` is the setup's summary at that learning rate
    (``reporting.summarize``), ``best[setup]`` the summary at its best learning rate plus
    ``"best_lr"`` and ``"lr_on_grid_edge"``, ``paired`` Ember minus every other setup at their
    best learning rates (``reporting.paired_differences``), and ``lr_rule`` Ember's best
    learning rate over AdamW's.
  """
  key = SWEEPS[settings['sweep']]
  setups = list(dict.fromkeys(r['setup'] for r in runs))
  grid, best, at_best = {}, {}, {}
  for setup in setups:
    lrs = sorted({r[key] for r in runs if r['setup'] == setup})
    grid[setup] = {
      lr: stats.summarize([r for r in runs if r['setup'] == setup and r[key] == lr], losses)[setup]
      for lr in lrs
    }
    best_lr = best_learning_rate([r for r in runs if r['setup'] == setup], key)
    best[setup] = {
      **grid[setup][best_lr],
      'best_lr': best_lr,
      'lr_on_grid_edge': len(lrs) > 1 and best_lr in (lrs[0], lrs[-1]),
    }
    at_best[setup] = [r for r in runs if r['setup'] == setup and r[key] == best_lr]
  paired = stats.paired_differences(at_best, losses=losses)
  lr_rule = None
  if 'ember' in best and 'adamw' in best:
    lr_rule = best['ember']['best_lr'] / best['adamw']['best_lr']
  return {
    'config': config,
    'settings': settings,
    'sweep': settings['sweep'],
    'grid': {s: {str(lr): v for lr, v in g.items()} for s, g in grid.items()},
    'best': best,
    'paired': paired,
    'lr_rule': lr_rule,
    'runs': runs,
    'grid_table': tables.format_grid(grid, best, key),
    'table': tables.format_best(best, key),
    'paired_table': tables.format_paired(paired),
  }

"""Row steps of the token tables: how far each token's row moves per step, and how evenly.

    python -m models.bench.row_steps                                  # d128-b64, Ember and AdamW
    python -m models.bench.row_steps --point d128-b8 --lrs 0.004
    python -m models.bench.row_steps --sweep tiny --point t16-b2 --out DIR   # seconds

The scaling benchmark (``models.bench.scaling``) finds where a table optimizer's best learning
rate stops following AdamW's; this program measures the steps behind it. At one point of a
scaling sweep (``models.training.sweep``) it trains each ``--setups`` at each ``--lrs`` (body
and tables at that rate, seed ``--seed``, the point's own schedule and batches) and records after
every step, for each token table:

* ``moved``: the fraction of its rows that moved (Ember moves only the rows with a gradient; Adam
  keeps moving the others on its momentum);
* ``median_step_per_lr``: the median moved row's RMS step divided by the step's learning rate,
  the typical per-coordinate step in units of the rate (about 1 for sign-like steps, less where a
  momentum averages noisy gradients away);
* ``p99_ratio`` and ``max_ratio``: the 99th percentile and the largest row step relative to the
  median row's (``ember_optax.diagnostics.row_step_ratios``): how far the rarest, stalest rows
  overshoot the typical one.

Writes ``row_steps.json`` (strict JSON: the per-step series and their means over the run),
``row_steps.md`` and ``row_steps.png`` to ``--out`` (default
``models/results/row_steps/<point>`` for the full sweep).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from pathlib import Path

import jax
import numpy as np

import ember_optax
from ember_optax import diagnostics
from models import cli
from models.cli import ConfigError, option
from models.data import corpus as data_lib
from models.nets.gpt import table_labels
from models.optim.registry import Setup, plot_style
from models.reporting import results as results_lib
from models.reporting import tables
from models.training import sweep as sweep_lib
from models.training.config import corpus_option, resolve
from models.training.loop import Comparison, train_one

PROG = 'python -m models.bench.row_steps'
DEFAULT_OUT = Path('models', 'results', 'row_steps')
MEASURES = ('moved', 'median_step_per_lr', 'p99_ratio', 'max_ratio')


@dataclasses.dataclass(frozen=True)
class RowStepsConfig:
  """The point, the setups and rates to measure, and where the results go."""

  sweep: str = option(
    'full', 'the scaling sweep whose point to run', choices=tuple(sweep_lib.SWEEPS)
  )
  point: str = option('d128-b64', 'the point of the sweep, e.g. d128-b8')
  setups: tuple[str, ...] = option(('ember', 'adamw'), 'the setups, TABLES or TABLES+BODY')
  lrs: tuple[float, ...] = option(
    (0.004, 0.016), 'peak learning rates, body and tables alike; every setup runs each'
  )
  seed: int = option(0, 'the initialization and batch-order seed')
  table_b2: float | None = option(
    None, "the token tables' own second-moment decay (default: the sweep's b2, 0.999)"
  )
  out: str | None = option(
    None, 'results folder (default: models/results/row_steps/<point>, with '
    '-table-b2-<b2> if set, for the full sweep; out/row_steps/<sweep>/... otherwise)',
  )  # fmt: skip
  text: str | None = corpus_option('text')
  cache_dir: str | None = corpus_option('cache_dir')


def token_tables(params, plan) -> list[tuple[int, str, int]]:
  """``(leaf index, path, token axis)`` of each token table among ``jax.tree.leaves(params)``;
  the token axis is the one of size ``vocab_size``."""
  labels = table_labels(params, plan.model)
  found = []
  for index, ((path, label), leaf) in enumerate(
    zip(jax.tree_util.tree_leaves_with_path(labels), jax.tree.leaves(params), strict=True)
  ):
    if label == ember_optax.TABLE_LABEL:
      name = '/'.join(str(key.key) for key in path if hasattr(key, 'key'))
      found.append((index, name, list(leaf.shape).index(plan.vocab_size)))
  return found


def step_measures(update: jax.Array, token_axis: int, lr: float) -> dict[str, float] | None:
  """The :data:`MEASURES` of one table's update at learning rate ``lr`` (``None`` if no row
  moved, as at a warm-up's first step, whose rate is 0)."""
  rms = np.asarray(diagnostics.row_rms(update, token_axis=token_axis))
  moved = rms > 0
  if lr <= 0 or not moved.any():
    return None
  median = float(np.median(rms[moved]))
  ratios = rms[moved] / median  # row_step_ratios' reference set: the rows that moved.
  return {
    'moved': float(moved.mean()),
    'median_step_per_lr': median / lr,
    'p99_ratio': float(np.percentile(ratios, 99)),
    'max_ratio': float(ratios.max()),
  }


def measure_run(comparison: Comparison, setup: str, lr: float, seed: int) -> dict:
  """Trains ``setup`` at peak rate ``lr`` (body and tables) and returns its losses with the
  :data:`MEASURES` of every step of every token table (the steps where it moved), and their
  means over the run."""
  plan = comparison.plan
  schedule = plan.schedule(lr)
  tables_found: list[tuple[int, str, int]] = []
  series: dict[str, dict[str, list[float]]] = {}

  def observe(step: int, before, after) -> None:
    if not tables_found:
      tables_found.extend(token_tables(before, plan))
    rate = float(schedule(step - 1))  # The rate of step ``step``: optax counts from 0.
    old, new = jax.tree.leaves(before), jax.tree.leaves(after)
    for index, name, axis in tables_found:
      measures = step_measures(new[index] - old[index], axis, rate)
      values = series.setdefault(name, {'step': [], **{m: [] for m in MEASURES}})
      if measures is not None:
        values['step'].append(step)
        for m in MEASURES:
          values[m].append(measures[m])

  result = train_one(
    comparison, Setup.parse(setup), seed, (lr, lr), log=lambda *a, **k: None, observe=observe
  )
  return {
    'setup': setup,
    'lr': lr,
    'seed': seed,
    'final_val_loss': result['final_val_loss'],
    'rare_val_loss': result['rare_val_loss'],
    'diverged_at_step': result['diverged_at_step'],
    'tables': {
      name: {
        'token_axis': axis,
        'mean': {m: float(np.mean(series[name][m])) for m in MEASURES},
        'series': series[name],
      }
      for _, name, axis in tables_found
    },
  }


def out_folder(config: RowStepsConfig) -> Path:
  if config.out is not None:
    return Path(config.out)
  name = config.point if config.table_b2 is None else f'{config.point}-table-b2-{config.table_b2:g}'
  if config.sweep == 'full':
    return DEFAULT_OUT / name
  return Path('out', 'row_steps', config.sweep, name)


def run_row_steps(config: RowStepsConfig, verbose: bool = True) -> dict:
  """Measures every setup at every rate at ``config.point``; writes and returns the results."""
  sweep = sweep_lib.SWEEPS[config.sweep]
  known = {p.name: p for p in sweep.points()}
  if config.point not in known:
    raise ConfigError(f'--point: unknown point {config.point!r}; choose from {" ".join(known)}')
  for name in config.setups:
    try:
      Setup.parse(name)
    except ValueError as error:
      raise ConfigError(f'--setups: {error}') from None
  if not config.lrs or any(not (np.isfinite(lr) and lr > 0) for lr in config.lrs):
    raise ConfigError(f'--lrs must be positive, finite learning rates, got {list(config.lrs)}')
  point = known[config.point]
  out = out_folder(config)
  # The point's own search settings, to train each run as the sweep does (no checkpoints).
  bench, preset = sweep_lib.point_config(
    sweep, point, out, text=config.text, cache_dir=config.cache_dir
  )
  bench = dataclasses.replace(bench, setups=tuple(config.setups), table_b2=config.table_b2)
  plan = resolve(bench, preset)
  corpus = data_lib.load_corpus(
    config.text, vocab_size=sweep.vocab_size, cache_dir=config.cache_dir, verbose=verbose
  )
  comparison = Comparison.build(plan, corpus, verbose=verbose)
  runs = []
  for setup in config.setups:
    for lr in config.lrs:
      run = measure_run(comparison, setup, lr, config.seed)
      runs.append(run)
      if verbose:
        print(
          f'[row_steps] {setup} at lr {lr:g}: final val loss {run["final_val_loss"]:.4f}',
          flush=True,
        )
  result = {
    'point': point.name,
    'sweep': config.sweep,
    'steps': plan.steps,
    'batch_size': plan.batch_size,
    'settings': plan.training_settings(),
    'runs': runs,
  }
  result['table'] = format_table(runs)
  out.mkdir(parents=True, exist_ok=True)
  results_lib.write_json(out / 'row_steps.json', result)
  (out / 'row_steps.md').write_text(
    f'Row steps at {point.name} ({plan.steps} steps of {plan.batch_size} sequences), '
    f'seed {config.seed}, table b2 {plan.hyper.table_b2 or plan.hyper.b2:g}: means over the '
    'run\n\n' + result['table'] + '\n'
  )
  plot(runs, out / 'row_steps.png', title=f'{point.name}, seed {config.seed}')
  if verbose:
    print('\n' + result['table'])
    print(f'[row_steps] wrote {out / "row_steps.json"}, row_steps.md and row_steps.png')
  return result


def format_table(runs: Sequence[dict]) -> str:
  """One row per run and table: the final loss and the run's mean of every measure."""
  rows = []
  for run in runs:
    for name, table in run['tables'].items():
      mean = table['mean']
      rows.append(
        [
          run['setup'],
          f'{run["lr"]:g}',
          f'{run["final_val_loss"]:.4f}',
          name,
          f'{mean["moved"]:.3f}',
          f'{mean["median_step_per_lr"]:.3f}',
          f'{mean["p99_ratio"]:.2f}',
          f'{mean["max_ratio"]:.1f}',
        ]
      )
  header = [
    'setup',
    'lr',
    'final val loss',
    'table',
    'rows moved',
    'median row step / lr',
    'p99 row ratio',
    'max row ratio',
  ]
  return tables.markdown_table(header, rows)


def plot(runs: Sequence[dict], path: Path, title: str) -> None:
  """The median row step per unit rate and the p99 row ratio against the step, per table."""
  import matplotlib.pyplot as plt

  names = list(dict.fromkeys(name for run in runs for name in run['tables']))
  fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.6 * len(names)), squeeze=False)
  styles = ['-', '--', ':', '-.']
  lrs = sorted({run['lr'] for run in runs})
  for row, name in zip(axes, names, strict=True):
    for run in runs:
      series = run['tables'][name]['series']
      steps = series['step']
      label = f'{run["setup"]} lr {run["lr"]:g}'
      style = styles[lrs.index(run['lr']) % len(styles)]
      for ax, measure in zip(row, ('median_step_per_lr', 'p99_ratio'), strict=True):
        ax.plot(
          steps, series[measure], style, color=plot_style(run['setup'])[0], label=label, lw=1.1
        )
    row[0].set_ylabel(f'{name}\nmedian row step / lr')
    row[1].set_ylabel('p99 row step / median row step')
    row[1].set_yscale('log')
    for ax in row:
      ax.set_xlabel('step')
      ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def build_parser() -> cli.Parser:
  return cli.parser_for(
    RowStepsConfig,
    PROG,
    "The token tables' row steps at one point of a scaling sweep: the typical row's step per "
    'unit learning rate and how far the largest rows overshoot it, every step, per setup and '
    'rate.',
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run_row_steps(cli.from_args(args, RowStepsConfig)))


if __name__ == '__main__':
  main()

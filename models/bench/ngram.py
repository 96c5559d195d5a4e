"""N-gram table benchmark: does a hashed table of millions of rows buy quality at the base model's
speed, and which table optimizer serves it best?

    python -m models.bench.ngram                      # the README run; resumes from saved runs
    python -m models.bench.ngram --log-rows 18 --tables ember rowwise   # a part of it
    python -m models.bench.ngram --summarize          # tables and plots from the saved runs
    python -m models.bench.ngram --preset tiny --log-rows 8 10 --out DIR   # seconds: CI's

The main job's GPT (``--preset``; Ember on its token tables, AdamW on the body, the preset's
rate) with a hashed bigram and trigram table of ``2**k`` rows for each ``--log-rows k``
(``models.nets.ngram``: the rows summed and added to every block's input), against the same model
without it (``none``). The table trains by the rows each batch looks up under each ``--tables``
optimizer of the registry: its sparse form where it has one (``ember`` -> ``sparse_ember``,
``rowwise`` -> sparse row-wise RMSprop), else densely (``adamw``, up to ``--dense-max-log-rows``:
a dense step reads and writes the whole table and its two moments). Each (size, optimizer) sweeps
the table's learning rate on ``--seeds`` (a grid that grows until it brackets the best, as the
quality benchmark's), then runs ``--best-seeds`` at its best; within a seed every run starts from
the same initialization and sees the same batches. ``--long-steps`` then reruns the baseline and
the ``--long-log-rows`` tables at their best rates for a run several times longer: memorised
n-grams may need to be seen more than once.

Every finished run is kept as JSON in ``<out>/runs/steps<N>/`` (committed under
``models/results/bench_ngram/``), so the benchmark resumes from them on any machine; an unfinished
run resumes from its Orbax checkpoint in ``--checkpoint-dir``. After each (size, optimizer), and
with ``--summarize``, it rewrites ``bench_ngram.json``, ``bench_ngram.md`` and the plots from the
saved runs: validation and rare-token loss at equal steps with 95% intervals against ``none`` and
between the table optimizers, time per step and the whole step's peak memory. The time per step
is the timing phase's (:func:`time_setups`: every setup stepped side by side in one process once
the runs are done), else the runs' own.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from pathlib import Path

import numpy as np

from models import cli
from models.cli import ConfigError, option
from models.optim import registry
from models.reporting import ngram as report
from models.reporting import results as results_lib
from models.training import checkpoints as checkpoints_lib
from models.training import ngram_summary, search
from models.training.config import TrainConfig, corpus_option, resolve
from models.training.loop import Comparison
from models.training.ngram_runs import BASE_SETUP, NgramRun, time_steps, train_ngram
from models.training.presets import PRESETS

PROG = 'python -m models.bench.ngram'
DEFAULT_OUT = Path('models', 'results', 'bench_ngram')
TIMING_FILE = 'timing.json'


@dataclasses.dataclass(frozen=True)
class NgramBenchConfig:
  """The n-gram table benchmark's settings."""

  preset: str = option('small', 'the GPT and its training settings', choices=tuple(PRESETS))
  log_rows: tuple[int, ...] = option(
    (22, 20, 18), 'table sizes, as log2 of the number of rows, in the order they run'
  )
  tables: tuple[str, ...] = option(
    registry.default_setups('ngram'), "table optimizers of the n-gram table (the registry's)"
  )
  lrs: tuple[float, ...] = option(
    (4e-3, 1.6e-2, 6.4e-2), "the starting grid of the table's rate (the body's is the preset's)"
  )
  extend: int = option(2, 'how many times a grid may grow on each side to bracket the best')
  seeds: tuple[int, ...] = option((0,), 'seeds of every grid point')
  best_seeds: tuple[int, ...] = option((1, 2), "more seeds at each table's best rate")
  steps: int | None = option(None, "steps of the main runs (default: the preset's)")
  long_steps: int | None = option(None, 'steps of the longer runs (default: 3x --steps; 0: none)')
  long_log_rows: tuple[int, ...] = option((22,), 'table sizes of the longer runs')
  long_tables: tuple[str, ...] = option(
    registry.sparse_tables(),
    'table optimizers of the longer runs (default: the sparse ones; a dense step of a 2^22-row '
    "table is 6x the model's)",
  )
  dense_max_log_rows: int = option(
    22, 'the largest table a dense optimizer (one without a sparse form) trains'
  )
  summarize: bool = option(False, 'train nothing: rebuild the tables and plots from saved runs')
  out: str | None = option(
    None,
    'results folder (default: models/results/bench_ngram; other presets: out/bench_ngram/<preset>)',
  )
  checkpoint_dir: str = option(
    str(Path('out', 'bench_ngram', 'checkpoints')), 'Orbax checkpoints of unfinished runs'
  )
  checkpoint_every: int = option(200, 'steps between checkpoints')
  time_steps: int = option(
    20, 'steps timed per setup and pass by the timing phase, after 3 warm-up steps (0: none)'
  )
  time_passes: int = option(
    2, "passes of the timing phase over the setups; a setup's time is its fastest pass's median"
  )
  retime: bool = option(False, 'time every setup again, even those timing.json holds')
  text: str | None = corpus_option('text')
  cache_dir: str | None = corpus_option('cache_dir')
  progress: bool = option(True, 'progress bars (--no-progress: none)')


def check(config: NgramBenchConfig) -> None:
  """Raises ``ConfigError`` naming the first setting that cannot run, before anything trains."""
  for name in ('log_rows', 'long_log_rows'):
    values = getattr(config, name)
    if not all(1 <= k <= 30 for k in values) or len(set(values)) != len(values):
      raise ConfigError(f'{cli.flag(name)} {list(values)} must be distinct sizes from 1 to 30')
  for name in (*config.tables, *config.long_tables):
    if name not in registry.TABLE_OPTIMIZERS or not registry.TABLE_OPTIMIZERS[name].trains:
      trained = [n for n, e in registry.TABLE_OPTIMIZERS.items() if e.trains]
      raise ConfigError(f'--tables: unknown table optimizer {name!r}; choose from {trained}')
  if not config.tables:
    raise ConfigError('--tables names none')
  search.check_search(config.lrs, config.extend, config.seeds, config.best_seeds)
  if config.long_steps is not None and config.long_steps < 0:
    raise ConfigError(f'--long-steps must be at least 0, got {config.long_steps}')
  if config.time_steps < 0 or config.time_passes < 1:
    raise ConfigError(
      f'--time-steps must be >= 0 and --time-passes >= 1, got {config.time_steps} and '
      f'{config.time_passes}'
    )
  missing = sorted(set(config.long_log_rows) - set(config.log_rows))
  if missing and config.long_steps != 0:
    raise ConfigError(f'--long-log-rows {missing} are not among --log-rows: they need a best rate')


def out_folder(config: NgramBenchConfig) -> Path:
  if config.out:
    return Path(config.out)
  return DEFAULT_OUT if config.preset == 'small' else Path('out', 'bench_ngram', config.preset)


def lengths(config: NgramBenchConfig) -> tuple[int, int]:
  """``(steps, long_steps)`` of the runs; ``long_steps`` 0 when there are no longer runs."""
  steps = PRESETS[config.preset].steps if config.steps is None else config.steps
  return steps, 3 * steps if config.long_steps is None else config.long_steps


def comparison(config: NgramBenchConfig, steps: int, corpus=None) -> Comparison:
  """What every run of ``steps`` steps shares: the main job's plan for the base setup."""
  plan = resolve(
    TrainConfig(
      preset=config.preset,
      setups=(BASE_SETUP.name,),
      steps=steps,
      text=config.text,
      cache_dir=config.cache_dir,
      progress=config.progress,
    )
  )
  return Comparison.build(plan, corpus, verbose=config.progress)


class Runner:
  """Runs (or reads back) the runs of one length, keeping each finished run in ``runs_dir``."""

  def __init__(self, config: NgramBenchConfig, comparison: Comparison, out: Path):
    plan = comparison.plan
    self.comparison, self.every = comparison, config.checkpoint_every
    settings = plan.training_settings()
    self.runs_dir = checkpoints_lib.open_folder(out / 'runs' / f'steps{plan.steps}', settings)
    self.folder = checkpoints_lib.open_folder(
      Path(config.checkpoint_dir) / config.preset / f'steps{plan.steps}', settings
    )

  def __call__(self, run: NgramRun) -> dict:
    checkpoints = checkpoints_lib.RunCheckpoints(
      self.folder, run.name, self.every, results=self.runs_dir
    )
    return train_ngram(self.comparison, run, checkpoints)


def schedule(config: NgramBenchConfig, long: bool) -> list[tuple[int, str]]:
  """The ``(log_rows, tables)`` pairs of one length, in the order they run: the sparse
  optimizers at every size first (in ``--log-rows`` order), then the dense ones from the smallest
  table up, since one dense step of a large table costs many sparse runs.

  Example:
    >>> config = NgramBenchConfig(log_rows=(22, 18), dense_max_log_rows=20)
    >>> schedule(config, long=False)
    [(22, 'ember'), (22, 'rowwise'), (18, 'ember'), (18, 'rowwise'), (18, 'adamw')]
  """
  sparse = [name for name in config.tables if name in registry.sparse_tables()]
  dense = [name for name in config.tables if name not in sparse]
  sizes = config.long_log_rows if long else config.log_rows
  pairs = [(k, name) for k in sizes for name in sparse]
  pairs += [(k, name) for k in sorted(sizes) for name in dense if k <= config.dense_max_log_rows]
  return [(k, name) for k, name in pairs if not long or name in config.long_tables]


def run_length(config: NgramBenchConfig, runner: Runner, out: Path, long: bool) -> None:
  """The runs of one length: the baseline, then each (size, optimizer) of :func:`schedule`: the
  grid on ``--seeds`` and ``--best-seeds`` at its best; at the longer length, each at the best
  rate of the main length. The results are rewritten after each (size, optimizer)."""
  seeds = (*config.seeds, *config.best_seeds)
  for seed in seeds:
    runner(NgramRun(None, None, None, seed))
  best = ngram_summary.best_rates(ngram_summary.load_runs(out, lengths(config)[0])) if long else {}
  for log_rows, tables in schedule(config, long):
    if long:
      rate = best.get(NgramRun(log_rows, tables, None, 0).setup)
      for seed in seeds if rate is not None else ():
        runner(NgramRun(log_rows, tables, rate, seed))
    else:

      def point(lr: float, log_rows=log_rows, tables=tables) -> list[dict]:
        return [runner(NgramRun(log_rows, tables, lr, seed)) for seed in config.seeds]

      _, rate = search.bracket_best(
        config.lrs,
        config.extend,
        point,
        lambda runs: search.best_learning_rate(runs, 'table_lr'),
      )
      for seed in config.best_seeds:
        runner(NgramRun(log_rows, tables, rate, seed))
    write_results(config, out)


def time_setups(config: NgramBenchConfig, shared: Comparison, out: Path) -> dict[str, float]:
  """The timing phase: every setup with runs (the model without a table, and each table at its
  best rate), stepped from its start in this one process, one setup after another,
  ``--time-passes`` times; a setup's seconds per step is the lowest of its passes' medians.

  So the setups are timed side by side on one machine at one time (the runs' own step times come
  from runs hours apart, two at a time on a shared machine). Kept in ``<out>/timing.json``;
  setups it already holds are not timed again unless ``--retime``.
  """
  path = out / TIMING_FILE
  settings = {'steps': config.time_steps, 'passes': config.time_passes}
  saved = results_lib.read_json(path) if path.exists() and not config.retime else {}
  if saved.get('settings') != settings:
    saved = {}
  timed = dict(saved.get('seconds_per_step', {}))
  best = ngram_summary.best_rates(ngram_summary.load_runs(out, shared.plan.steps))
  wanted = [ngram_summary.NONE, *best]
  todo = [setup for setup in wanted if setup not in timed]
  if not todo or not config.time_steps:
    return timed
  medians = {setup: [] for setup in todo}
  for _ in range(config.time_passes):
    for setup in todo:
      run = NgramRun.of_setup(setup, best.get(setup), seed=0)
      seconds = time_steps(shared, run, config.time_steps)
      medians[setup].append(float(np.median(seconds)))
      if config.progress:
        print(f'[ngram] timing {setup}: {1e3 * medians[setup][-1]:.0f} ms per step', flush=True)
  timed.update({setup: min(values) for setup, values in medians.items()})
  passes = {**saved.get('passes', {}), **medians}
  environment = results_lib.environment(config.cache_dir)
  results_lib.write_json(
    path,
    {'settings': settings, 'seconds_per_step': timed, 'passes': passes, 'environment': environment},
  )
  return timed


def write_results(config: NgramBenchConfig, out: Path) -> dict:
  """Summarizes every saved run of each length and writes ``bench_ngram.json`` (strict), ``.md``
  and the plots into ``out``; returns the JSON's content."""
  summaries = {}
  runs_by_length = {}
  timing = out / TIMING_FILE
  timed = results_lib.read_json(timing)['seconds_per_step'] if timing.exists() else {}
  for steps in lengths(config):
    runs = ngram_summary.load_runs(out, steps) if steps else []
    if runs:
      runs_by_length[steps] = runs
      summaries[str(steps)] = ngram_summary.summarize(runs, timed)
  results = {
    'config': dataclasses.asdict(config),
    'lengths': summaries,
    'environment': results_lib.environment(config.cache_dir),
  }
  if summaries:
    report.plot_loss_against_rows(summaries, out / 'loss_vs_rows.png')
    report.plot_loss_against_time(runs_by_length, summaries, out / 'loss_vs_time.png')
  results_lib.write_report(out, 'bench_ngram', results, report.format_tables(summaries))
  return results


def run_benchmark(config: NgramBenchConfig) -> dict:
  check(config)
  out = out_folder(config)
  if not config.summarize:
    steps, long_steps = lengths(config)
    corpus = None
    for length, long in ((steps, False), (long_steps, True)):
      if not length:
        continue
      shared = comparison(config, length, corpus)
      corpus = shared.corpus
      run_length(config, Runner(config, shared, out), out, long)
    time_setups(config, comparison(config, steps, corpus), out)
  return write_results(config, out)


def build_parser() -> cli.Parser:
  return cli.parser_for(
    NgramBenchConfig,
    PROG,
    'The GPT with a hashed n-gram table of 2^k rows trained by each table optimizer (sparse '
    'where it can be), against the GPT without one: quality at equal steps, time and memory.',
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run_benchmark(cli.from_args(args, NgramBenchConfig)))


if __name__ == '__main__':
  main()

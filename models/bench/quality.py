"""Quality benchmark: each optimizer setup at its own best learning rate, over several seeds.

    python -m models.bench.quality                                 # the main job's settings
    python -m models.bench.quality --lrs 1e-3 3e-3 1e-2 --seeds 0 1 2 --steps 300 --out DIR
    python -m models.bench.quality --sweep table-lr --setups ember --lr 2e-3   # the tables alone

The benchmark builds the main job's comparison once (``models.training.loop.Comparison``: the
corpus, the validation set) and trains every setup on every seed at every learning rate of the
grid; within a seed all setups and learning rates start from the same initialization and see the
same batches. ``--sweep lr`` (the default) sweeps each setup's peak learning rate, body and token
tables alike; ``--sweep table-lr`` keeps the body at ``--lr`` (or the preset's rate) and sweeps the
token tables' alone, which is how a user of ``ember_adamw`` picks ``ember_learning_rate`` next to
the AdamW learning rate they already have.

Each setup is reported at the grid point with the lowest mean final validation loss over the
seeds. A best point on the edge of the grid makes the benchmark extend the grid on that side (by
the ratio of the two outermost points, up to ``--extend`` times), so that the best is bracketed.
``--best-seeds`` then adds seeds at each setup's best point alone: a wide grid on one seed, the
interval from several.
Within a seed the setups differ only by their optimizer, so Ember is compared with each other setup
seed by seed (each at its own best learning rate): the mean difference with its 95% t interval,
and a verdict, "better" (the whole interval below zero), "worse" (above) or "no different".

Writes ``bench.json`` (strict JSON: every run, the grid, the selection, the comparison) and
``bench.md`` (the tables) to ``--out`` (default ``out/bench_quality/<date-time>``).
``--summarize BENCH_JSON...`` trains nothing and recomputes the tables from saved runs, merging
several files (a sweep and its extension, say). With ``--checkpoint-dir``, an interrupted sweep
resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime
from pathlib import Path

from models import cli
from models.cli import ConfigError, option
from models.reporting import results as results_lib
from models.reporting import search as search_report
from models.training.search import SearchConfig, run_search, summarize_search

PROG = 'python -m models.bench.quality'
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class QualityConfig(SearchConfig):
  """The main job's settings (its learning rates swept by ``SearchOptions``) and the benchmark's
  own."""

  seeds: tuple[int, ...] = option(DEFAULT_SEEDS, 'seeds of every grid point')
  summarize: tuple[str, ...] | None = option(
    None,
    'train nothing: recompute the tables from the runs of saved bench.json files, merging '
    'several (default: train)',
    metavar='BENCH_JSON',
  )


def summarize_saved(
  paths: Sequence[Path], out_dir: str | Path | None = None, verbose: bool = True
) -> dict:
  """The benchmark's results from the runs of saved ``bench.json`` files, merged.

  Raises:
    ConfigError: if a (setup, seed, learning rate) run repeats, or the files' runs were trained
      with different settings.
  """
  saved = [results_lib.read_json(path) for path in paths]
  runs = [r for result in saved for r in result['runs']]
  keys = {(r['setup'], r['seed'], r['lr'], r['table_lr']) for r in runs}
  if len(keys) != len(runs):
    raise ConfigError(f'{[str(p) for p in paths]}: a (setup, seed, learning rate) run repeats')
  settings = saved[0]['settings']
  for path, result in zip(paths[1:], saved[1:], strict=True):
    other = result['settings']
    if other != settings:
      differing = sorted(
        k for k in settings.keys() | other.keys() if settings.get(k) != other.get(k)
      )
      raise ConfigError(f"{path}: its runs differ from {paths[0]}'s in {differing}; not merged")
  results = {**saved[0], **summarize_search(saved[0]['config'], settings, runs)}
  results['total_time_s'] = sum(result.get('total_time_s', 0.0) for result in saved)
  search_report.report(results, Path(out_dir) if out_dir else None, verbose=verbose)
  return results


def build_parser() -> cli.Parser:
  return cli.parser_for(
    QualityConfig,
    PROG,
    'Learning-rate sweep x seeds for each optimizer setup; each setup is reported '
    'at its own best learning rate, and Ember is compared with each other setup seed by seed.',
    skip=('lr_for', 'table_lr', 'table_lr_for'),
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)

  def benchmark():
    config = cli.from_args(args, QualityConfig)
    if config.summarize:
      return summarize_saved([Path(path) for path in config.summarize], config.out)
    if config.out is None:
      stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
      config = dataclasses.replace(config, out=str(Path('out', 'bench_quality', stamp)))
    return run_search(config)

  return cli.run_command(PROG, benchmark)


if __name__ == '__main__':
  main()

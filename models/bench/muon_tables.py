"""Token tables beside a Muon body at large batch: which table, which mechanism, which recipe.

    python -m models.bench.muon_tables                # the README run; resumes from saved runs
    python -m models.bench.muon_tables --summarize    # tables and plots from the saved runs
    python -m models.bench.muon_tables --preset tiny --batch-size 8 --steps 8 --out DIR   # CI's

The ``small`` GPT at 64 x 128 tokens a step for 300 steps (warm-up 15, then the main job's cosine),
the body under Muon at ``--body-lr`` (0.016, the scaling sweep's best Muon body at this batch),
the token tables under each ``--variants`` setup of the registry's grammar
(``models.optim.setups.Setup``): by default (:data:`VARIANTS`) Adam and Ember tables,
``ember,head=adamw,head_lr=4+muon`` (Ember on the input table, AdamW on the LM head at 4 times
its rate), ``adamw,b1=0+muon``
(AdamW tables without momentum) and ``ember,b2=0.99+muon``; :data:`MORE_VARIANTS` (the reverse
split, ``every=2``, ``eps=1e-10``, ``warmup=60``, ``b2=0.95``) with ``--variants``.

Three stages, each resumable from the runs it saved:

1. **Variants** at ``--batch-size``: each sweeps the tables' rate on seed 0 (``--lrs``, a grid that
   grows until it brackets the best), the body held at its rate.
2. **Finalists**: the two baselines (Adam tables, ``adamw+muon``; Ember tables, ``ember+muon``)
   and the ``--finalists`` best variants with Ember on the input table get ``--best-seeds`` at
   their best rates, for 95% intervals against Adam tables seed by seed.
3. **The batch trend**: the two baselines and the best finalist at each ``--trend-batches`` size,
   the same steps, seed 0 and ``--best-seeds``, both rates scaled from their best at
   ``--batch-size`` by the cube root of the batch ratio (the line through the scaling sweep's best
   Muon body rates, 0.008 at batch 8 and 0.016 at 64; not searched again, to fit the budget).

Every finished run is kept as JSON in ``<out>/b<batch>/runs/`` (committed under
``models/results/muon_tables/``); an unfinished one resumes from its Orbax checkpoint in
``--checkpoint-dir``. After each setup, and with ``--summarize``, the program rewrites
``muon_tables.json`` (strict), ``muon_tables.md`` and the plots (``models.reporting.muon_tables``).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from pathlib import Path

from models import cli
from models.cli import ConfigError, option
from models.data import corpus as data_lib
from models.optim import registry
from models.reporting import muon_tables as report
from models.reporting import results as results_lib
from models.training import search
from models.training.config import corpus_option
from models.training.presets import PRESETS

PROG = 'python -m models.bench.muon_tables'
DEFAULT_OUT = Path('models', 'results', 'muon_tables')

# The setups of stage 1, in the order they run: the baselines; which table (Ember on the input
# table, Adam on the head, as the paper's record attempt ran; the head at 4x the input table's rate,
# the ratio of Adam tables' best rate to Ember tables', 0.032 to 0.008, so that each table family
# is swept along the line through both its bests); momentum (Adam tables without it);
# the second moment's horizon (the record attempt's b2). Each costs about 0.8 CPU-hours on a 2-core
# machine, so the default stops there (the budget is 6); MORE_VARIANTS, the rest of the
# question, run with --variants.
VARIANTS = (
  report.ADAM,
  report.EMBER,
  'ember,head=adamw,head_lr=4+muon',
  'adamw,b1=0+muon',
  'ember,b2=0.99+muon',
)
# The reverse split; an update every other step on two steps' gradients (the record attempt's);
# epsilon; the tables' own warm-up; a shorter horizon still.
MORE_VARIANTS = (
  'adamw,head=ember,head_lr=0.25+muon',
  'ember,every=2+muon',
  'ember,eps=1e-10+muon',
  'ember,warmup=60+muon',
  'ember,b2=0.95+muon',
)


@dataclasses.dataclass(frozen=True)
class MuonTablesConfig:
  """The study's settings."""

  preset: str = option('small', 'the GPT and its corpus settings', choices=tuple(PRESETS))
  variants: tuple[str, ...] = option(VARIANTS, 'table setups of stage 1, in the order they run')
  batch_size: int = option(64, 'sequences per step of stages 1 and 2')
  steps: int = option(300, 'steps of every run')
  warmup_steps: int = option(15, 'linear warm-up steps of the shared schedule')
  eval_every: int = option(50, 'steps between validation points')
  eval_batches: int = option(8, 'validation batches of the final evaluation')
  body_lr: float = option(0.016, "the Muon body's peak rate at --batch-size")
  lrs: tuple[float, ...] = option((0.008, 0.016, 0.032), "the starting grid of the tables' rate")
  extend: int = option(2, 'how many times a grid may grow on each side to bracket the best')
  best_seeds: tuple[int, ...] = option((1, 2), "more seeds at each finalist's best rate")
  finalists: int = option(1, 'variants with Ember on the input table that get --best-seeds')
  trend_batches: tuple[int, ...] = option((16, 8), 'batch sizes of stage 3')
  summarize: bool = option(False, 'train nothing: rebuild the tables and plots from saved runs')
  out: str | None = option(None, 'results folder (default: models/results/muon_tables)')
  checkpoint_dir: str = option(
    str(Path('out', 'muon_tables', 'checkpoints')), 'Orbax checkpoints of unfinished runs'
  )
  checkpoint_every: int = option(50, 'steps between checkpoints')
  text: str | None = corpus_option('text')
  cache_dir: str | None = corpus_option('cache_dir')
  progress: bool = option(True, 'progress bars (--no-progress: none)')


def check(config: MuonTablesConfig) -> None:
  """Raises ``ConfigError`` naming the first setting that cannot run, before anything trains."""
  for text in config.variants:
    try:
      setup = registry.Setup.parse(text)
    except ValueError as error:
      raise ConfigError(f'--variants: setup {text!r}: {error}') from None
    if setup.name != text:
      raise ConfigError(f'--variants: write {text!r} as {setup.name!r}, the name its runs keep')
  for baseline in (report.ADAM, report.EMBER):
    if baseline not in config.variants:
      raise ConfigError(f'--variants must include the baseline {baseline}')
  if len(set(config.variants)) != len(config.variants):
    raise ConfigError(f'--variants must not repeat a setup, got {list(config.variants)}')
  search.check_search(config.lrs, config.extend, (0,), config.best_seeds)
  if not config.body_lr > 0:
    raise ConfigError(f'--body-lr must be positive, got {config.body_lr}')
  if config.finalists < 0:
    raise ConfigError(f'--finalists must be at least 0, got {config.finalists}')
  batches = (config.batch_size, *config.trend_batches)
  if any(b < 1 for b in batches) or len(set(batches)) != len(batches):
    raise ConfigError(
      f'--batch-size and --trend-batches must be distinct sizes >= 1, got {list(batches)}'
    )


def out_folder(config: MuonTablesConfig) -> Path:
  return Path(config.out) if config.out else DEFAULT_OUT


def body_rate(config: MuonTablesConfig, batch: int) -> float:
  """The body's peak rate at ``batch``: ``--body-lr`` scaled by the cube root of the batch ratio,
  to three significant digits.

  Example:
    >>> body_rate(MuonTablesConfig(), 8), body_rate(MuonTablesConfig(), 16)
    (0.008, 0.0101)
  """
  return _scaled(config.body_lr, batch / config.batch_size)


def _scaled(rate: float, batch_ratio: float) -> float:
  return float(f'{rate * batch_ratio ** (1 / 3):.3g}')


class Stages:
  """Runs (or reads back) the study's runs, one learning-rate search at a time."""

  def __init__(self, config: MuonTablesConfig):
    self.config, self.out = config, out_folder(config)
    self.corpus = data_lib.load_corpus(
      config.text,
      vocab_size=PRESETS[config.preset].vocab_size,
      cache_dir=config.cache_dir,
      verbose=config.progress,
    )

  def search(self, batch: int, setup: str, lrs: Sequence[float], seeds: Sequence[int]) -> None:
    """Sweeps ``setup``'s table rate over ``lrs`` (growing it when there is more than one) on
    ``seeds`` at ``batch``, keeping each run in ``<out>/b<batch>/runs``."""
    config = self.config
    grows = len(lrs) > 1
    bench = search.SearchConfig(
      preset=config.preset,
      setups=(setup,),
      seeds=tuple(seeds),
      lrs=tuple(lrs),
      extend=config.extend if grows else 0,
      sweep='table-lr',
      lr=body_rate(config, batch),
      steps=config.steps,
      batch_size=batch,
      warmup_steps=config.warmup_steps,
      eval_every=config.eval_every,
      eval_batches=config.eval_batches,
      text=config.text,
      cache_dir=config.cache_dir,
      checkpoint_dir=str(Path(config.checkpoint_dir) / config.preset / f'b{batch}'),
      checkpoint_every=config.checkpoint_every,
      progress=config.progress,
    )
    runs_dir = report.runs_dir(self.out, batch)
    search.run_search(bench, verbose=True, corpus=self.corpus, runs_dir=runs_dir)
    write_results(config)

  def best_rate(self, batch: int, setup: str) -> float:
    """``setup``'s best table rate at ``batch``, from its saved runs."""
    runs = [r for r in report.load_runs(self.out, batch) if r['setup'] == setup]
    return search.best_learning_rate(runs, 'table_lr')


def finalists(config: MuonTablesConfig, runs: Sequence[dict]) -> tuple[str, ...]:
  """The baselines, then the ``--finalists`` variants with Ember on the input table whose best
  seed-0 loss is lowest."""
  seed0 = report.best_on_seed0(runs)
  candidates = [
    v
    for v in config.variants
    if v in seed0 and v not in (report.ADAM, report.EMBER) and v.startswith('ember')
  ]
  chosen = sorted(candidates, key=seed0.get)[: config.finalists]
  return (report.ADAM, report.EMBER, *chosen)


def run_study(config: MuonTablesConfig) -> dict:
  check(config)
  if config.summarize:
    return write_results(config)
  stages = Stages(config)
  batch = config.batch_size
  for setup in config.variants:
    stages.search(batch, setup, config.lrs, (0,))
  chosen = finalists(config, report.load_runs(stages.out, batch))
  if config.best_seeds:
    for setup in chosen:
      stages.search(batch, setup, (stages.best_rate(batch, setup),), config.best_seeds)
  best = report.best_variant(report.load_runs(stages.out, batch), chosen)
  for trend_batch in config.trend_batches:
    for setup in dict.fromkeys((report.ADAM, report.EMBER, best)):
      rate = _scaled(stages.best_rate(batch, setup), trend_batch / batch)
      stages.search(trend_batch, setup, (rate,), (0, *config.best_seeds))
  return write_results(config)


def write_results(config: MuonTablesConfig) -> dict:
  """Summarizes every saved run and writes ``muon_tables.json`` (strict), ``.md`` and the plots;
  returns the JSON's content."""
  out = out_folder(config)
  runs_by_batch = {}
  for batch in (config.batch_size, *config.trend_batches):
    runs = report.load_runs(out, batch)
    if runs:
      runs_by_batch[batch] = runs
  summaries = {str(b): report.summarize(runs) for b, runs in runs_by_batch.items()}
  results = {
    'config': dataclasses.asdict(config),
    'batches': summaries,
    'environment': results_lib.environment(config.cache_dir),
  }
  if runs_by_batch:
    report.plot_curves(runs_by_batch[config.batch_size], out / 'curves.png')
    report.plot_batch_trend(summaries, out / 'batch_trend.png')
  results_lib.write_report(out, 'muon_tables', results, report.format_tables(summaries))
  return results


def build_parser() -> cli.Parser:
  return cli.parser_for(
    MuonTablesConfig,
    PROG,
    'Token-table setups beside a Muon body at large batch, each at its own best table rate: '
    'which table and which mechanism close the gap between Ember and Adam tables.',
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run_study(cli.from_args(args, MuonTablesConfig)))


if __name__ == '__main__':
  main()

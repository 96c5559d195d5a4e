"""Scaling benchmark: Ember against the other table optimizers as the model and the batch grow.

    python -m models.bench.scaling                           # the whole sweep; resumes
    python -m models.bench.scaling --points d128-b8 d128-b64 # some points only
    python -m models.bench.scaling --summarize               # tables, plots from saved runs
    python -m models.bench.scaling --preset tiny --out DIR   # seconds: what CI runs

A *point* is a model size and a batch size (``models.training.sweep``). The size axis runs four
GPTs at 8 sequences per step, from d_model 64 (one layer) to d_model 192 (four layers), 36x in
non-embedding parameters; the batch axis runs the ``small`` GPT (d_model 128) at 1 to 64 sequences
per step. Every point runs the registry's scaling setups (``adamw``, ``ember``, ``adafactor``,
``rowwise``) on the token tables beside an AdamW body, and four points (the small size, the
largest, and the batch extremes) also run Adam and Ember tables beside a Muon body
(``adamw+muon``, ``ember+muon``).

Tokens per run follow one rule: ``BASE_TOKENS * (N / N_small) ** (1/4)`` for ``N`` non-embedding
parameters, so a larger model trains on more tokens; the batch axis keeps the small model's
budget and trades steps for batch. Warm-up is 5% of the steps, then cosine decay to a tenth.

At each point each setup is swept by the learning-rate search (``models.training.search``): a grid
of peak learning rates (body and tables alike) on seed 0, centred on a guess that grows with the
square root of the batch and shrinks with the width, extended wherever the best is on an edge and
widened to the span of every best beside the same body (``status``); then two more seeds at the
best. Ember is compared with every other setup seed by seed, and ``ember+muon`` with
``adamw+muon``, with 95% t intervals and verdicts.
At ``table_rate_points`` each pair of Ember and Adam tables beside the same body then sweeps the
tables' rate alone, the body at the best rate of Adam tables beside it (``<point>/table_rates/``).

Every finished run is kept as JSON in ``<out>/<point>/runs/`` (committed under
``models/results/bench_scaling/``), so the sweep resumes from them on any machine; an
unfinished run resumes from its Orbax checkpoint in ``--checkpoint-dir`` on the same machine.
After each point, and with ``--summarize``, the benchmark rewrites ``scaling.json`` (strict JSON),
``scaling.md`` and the PNGs in ``--out`` from every saved run (``summary``, ``report``).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from pathlib import Path

from models import cli
from models.bench.scaling.config import (
  ScalingConfig,
  out_folder,
  point_config,
  selected_points,
  table_rate_config,
)
from models.bench.scaling.status import point_status, shared_span
from models.bench.scaling.summary import summarize
from models.data import corpus as data_lib
from models.reporting import results as results_lib
from models.training import search
from models.training.checkpoints import load_saved_runs
from models.training.sweep import SWEEPS, TABLE_RATES, Point, Sweep, body_rates

PROG = 'python -m models.bench.scaling'


def run_scaling(config: ScalingConfig, verbose: bool = True) -> dict:
  """Runs (or resumes) every point of the sweep, then summarizes; returns the summary."""
  sweep = SWEEPS[config.preset]
  out = out_folder(config)
  points = selected_points(sweep, config.points, config.setups)
  if config.summarize:
    return summarize(sweep, config, out, verbose=verbose)
  log = print if verbose else (lambda *a, **k: None)
  corpus = data_lib.load_corpus(
    config.text, vocab_size=sweep.vocab_size, cache_dir=config.cache_dir, verbose=verbose
  )
  for point in points:
    bench, preset = point_config(sweep, point, config, out)
    log(
      f'[scaling] {point.name}: {sweep.non_embedding_params(point.size):,} non-embedding '
      f'parameters, {preset.steps} steps of {point.batch_size} x {sweep.seq_len} tokens, '
      f'setups {" ".join(point.setups)}',
      flush=True,
    )
    runs_dir = out / point.name / 'runs'
    for grid in dict.fromkeys(sweep.grid_for(point, s) for s in point.setups):
      setups = tuple(s for s in point.setups if sweep.grid_for(point, s) == grid)
      grown = dataclasses.replace(bench, setups=setups, lrs=grid)
      search.run_search(grown, verbose=verbose, preset=preset, corpus=corpus, runs_dir=runs_dir)
    while True:  # Widen each grid to the span of every setup's best, until the span holds still.
      runs = load_saved_runs(runs_dir)
      span = shared_span(sweep, point, runs)
      missing = {
        setup: span[setup] - {r['lr'] for r in runs if r['setup'] == setup}
        for setup in point.setups
      }
      if not any(missing.values()):
        break
      for setup, rates in missing.items():
        if rates:
          grid = {r['lr'] for r in runs if r['setup'] == setup} | rates
          log(f'[scaling] {point.name}: {setup} also at {sorted(rates)}, the span of the bests')
          widened = dataclasses.replace(bench, setups=(setup,), lrs=tuple(sorted(grid)))
          search.run_search(
            widened, verbose=verbose, preset=preset, corpus=corpus, runs_dir=runs_dir
          )
    if point.name in sweep.table_rate_points:
      run_table_rates(sweep, point, config, out, corpus, verbose)
    summarize(sweep, config, out, verbose=False)
  return summarize(sweep, config, out, verbose=verbose)


def run_table_rates(
  sweep: Sweep, point: Point, config: ScalingConfig, out: Path, corpus, verbose: bool
) -> None:
  """Sweeps the tables' rate of each ``RATE_PAIRS`` setup at ``point``, once its learning-rate
  sweep is complete, the body at :func:`body_rates`.

  A grid point where the tables' rate equals the body's is the learning-rate sweep's run at that
  rate (the same computation), so it is taken from there instead of trained again.
  """
  runs = load_saved_runs(out / point.name / 'runs')
  if point_status(sweep, point, runs) != 'complete':
    return
  best = {
    s: search.best_learning_rate([r for r in runs if r['setup'] == s], 'lr') for s in point.setups
  }
  runs_dir = out / point.name / TABLE_RATES / 'runs'
  for setup, body_lr in body_rates(point, best).items():
    bench, preset = table_rate_config(sweep, point, config, out, setup, body_lr)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
      if run['setup'] == setup and run['lr'] == body_lr:
        path = runs_dir / f'{search.run_name(setup, "table-lr", body_lr, run["seed"])}.json'
        if not path.exists():
          results_lib.write_json(path, run, indent=None)
    search.run_search(bench, verbose=verbose, preset=preset, corpus=corpus, runs_dir=runs_dir)


def build_parser() -> cli.Parser:
  return cli.parser_for(
    ScalingConfig,
    PROG,
    'Ember against AdamW, row-wise RMSprop and Adafactor on the token tables (and against Adam '
    'tables beside a Muon body) across model sizes and batch sizes, each setup at its own '
    'best learning rate, with paired 95% intervals over seeds.',
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run_scaling(cli.from_args(args, ScalingConfig)))


if __name__ == '__main__':
  main()

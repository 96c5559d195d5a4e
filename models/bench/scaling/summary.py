"""The scaling sweep's summary, rebuilt from the runs saved in its results folder.

:func:`summarize` reads every point's saved runs (and its table-rate sweeps'), writes each point's
``bench.json`` and ``bench.md`` (``models.reporting.search``), and the sweep's ``scaling.json``
(strict JSON), ``scaling.md`` and plots (``models.bench.scaling.report``); it trains nothing, so
the committed runs give the same tables on any machine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from models.bench.scaling.config import ScalingConfig, point_config, table_rate_config
from models.bench.scaling.report import format_tables, plot_all
from models.bench.scaling.status import grid_status, point_status
from models.reporting import results as results_lib
from models.reporting import search as search_report
from models.reporting import stats
from models.training import checkpoints as checkpoints_lib
from models.training import search
from models.training.sweep import (
  MUON_PAIR,
  RATE_PAIRS,
  TABLE_PEERS,
  TABLE_RATES,
  Point,
  Sweep,
  body_rates,
)


def summarize(sweep: Sweep, config: ScalingConfig, out: Path, verbose: bool = True) -> dict:
  """Rebuilds every point's tables and the sweep's from the runs saved in ``out``."""
  points = {}
  for point in sweep.points():
    folder = out / point.name
    runs = checkpoints_lib.load_saved_runs(folder / 'runs')
    status = point_status(sweep, point, runs)
    bench, preset = point_config(sweep, point, config, out)
    entry = {
      'size': point.size,
      'batch_size': point.batch_size,
      'non_embedding_params': sweep.non_embedding_params(point.size),
      'steps': preset.steps,
      'tokens': preset.steps * point.batch_size * sweep.seq_len,
      'setups': list(point.setups),
      'status': status,
      'runs': len(runs),
      'train_time_s': float(sum(r.get('train_time_s', 0.0) for r in runs)),
    }
    if runs:
      settings = results_lib.read_json(folder / 'runs' / checkpoints_lib.SETTINGS_FILE)
      summary = search.summarize_search(dataclasses.asdict(bench), settings, runs)
      search_report.report(summary, folder, verbose=False)
      best = summary['best']
      at_best = {
        s: [r for r in runs if r['setup'] == s and r['lr'] == best[s]['best_lr']] for s in best
      }
      muon = {s: at_best[s] for s in MUON_PAIR if s in at_best}
      paired_muon = {}
      if len(muon) == 2:
        paired_muon = stats.paired_differences(muon, reference=MUON_PAIR[0])
      entry.update(
        best={
          s: {
            'best_lr': b['best_lr'],
            'lr_on_grid_edge': b['lr_on_grid_edge'],
            'grid': sorted({r['lr'] for r in runs if r['setup'] == s}),
            'seeds': b['seeds'],
            'final_val_loss': b['final_val_loss'],
            'rare_val_loss': b['rare_val_loss'],
            'table_state_bytes': b['table_state_bytes'],
            'initial_val_loss': float(np.mean([r['initial_val_loss'] for r in at_best[s]])),
          }
          for s, b in best.items()
        },
        paired={s: v for s, v in summary['paired'].items() if s in TABLE_PEERS},
        paired_muon=paired_muon,
      )
    if point.name in sweep.table_rate_points:
      entry['table_rates'] = summarize_table_rates(sweep, point, config, out, entry.get('best', {}))
    points[point.name] = entry
  result = {
    'sweep': config.preset,
    'rule': {
      'base_tokens': sweep.base_tokens,
      'tokens': 'base_tokens * (N / N_base) ** 0.25',
      'base_size': sweep.base_size,
      'lr_centre': 'base_lr * 2 ** round(log2(sqrt(batch / base_batch) * d_base / d))',
      'base_lr': sweep.base_lr,
      'grid': list(sweep.grid),
      'muon_lr_ratio': sweep.muon_lr_ratio,
      'extend': sweep.extend,
      'grid_seeds': list(sweep.grid_seeds),
      'best_seeds': list(sweep.best_seeds),
    },
    'points': points,
    'train_time_s': float(sum(p['train_time_s'] for p in points.values())),
  }
  result['tables'] = format_tables(sweep, result)
  out.mkdir(parents=True, exist_ok=True)
  results_lib.write_json(out / 'scaling.json', result)
  (out / 'scaling.md').write_text(result['tables'] + '\n')
  plot_all(sweep, result, out)
  if verbose:
    print('\n' + result['tables'])
    print(f'[scaling] wrote {out / "scaling.json"}, scaling.md and the plots')
  return result


def summarize_table_rates(
  sweep: Sweep, point: Point, config: ScalingConfig, out: Path, best: dict
) -> dict:
  """The table-rate sweeps of ``point`` (:func:`run_table_rates`) from their saved runs.

  Args:
    best: the point's ``best`` entry of :func:`summarize` (each setup's best rate).

  Returns:
    ``{"status"}``, and once runs are saved ``"pair_status"`` (per Adam setup of ``RATE_PAIRS``,
    the status of its pair alone), ``"best"`` (per setup: the body's rate, the tables'
    best rate and its ratio to the body's, the grid, the losses) and ``"paired"`` (per Adam
    setup of ``RATE_PAIRS``: the Ember setup beside the same body minus it, each at its tables'
    best rate). Also writes the sub-folder's ``bench.json`` and ``bench.md``.
  """
  folder = out / point.name / TABLE_RATES
  runs = checkpoints_lib.load_saved_runs(folder / 'runs')
  body_lrs = body_rates(point, {s: b['best_lr'] for s, b in best.items()})
  if not runs or not body_lrs:
    return {'status': 'not run'}
  start = {s: {lr * ratio for ratio in sweep.table_rate_ratios} for s, lr in body_lrs.items()}
  first = next(iter(body_lrs))
  bench, _ = table_rate_config(sweep, point, config, out, first, body_lrs[first])
  bench = dataclasses.replace(
    bench, setups=tuple(body_lrs), lr_for=body_lrs, lrs=tuple(sorted(set.union(*start.values())))
  )
  settings = results_lib.read_json(folder / 'runs' / checkpoints_lib.SETTINGS_FILE)
  summary = search.summarize_search(dataclasses.asdict(bench), settings, runs)
  search_report.report(summary, folder, verbose=False)
  at_best = {
    s: [r for r in runs if r['setup'] == s and r['table_lr'] == b['best_lr']]
    for s, b in summary['best'].items()
  }
  paired = {}
  for ember_setup, adam_setup in RATE_PAIRS:
    if ember_setup in at_best and adam_setup in at_best:
      pair = {ember_setup: at_best[ember_setup], adam_setup: at_best[adam_setup]}
      paired.update(stats.paired_differences(pair, reference=ember_setup))
  pair_status = {}
  for pair in RATE_PAIRS:
    if set(pair) <= set(start):
      mine = [r for r in runs if r['setup'] in pair]
      pair_status[pair[1]] = grid_status(sweep, {s: start[s] for s in pair}, mine, 'table_lr')
  return {
    'status': grid_status(sweep, start, runs, 'table_lr'),
    'pair_status': pair_status,
    'best': {
      s: {
        'body_lr': body_lrs[s],
        'best_table_lr': b['best_lr'],
        'ratio': b['best_lr'] / body_lrs[s],
        'lr_on_grid_edge': b['lr_on_grid_edge'],
        'grid': sorted({r['table_lr'] for r in runs if r['setup'] == s}),
        'seeds': b['seeds'],
        'final_val_loss': b['final_val_loss'],
        'rare_val_loss': b['rare_val_loss'],
      }
      for s, b in summary['best'].items()
    },
    'paired': paired,
  }

"""The Muon-tables study's summary, tables and plots (``models.bench.muon_tables``), from its saved
runs alone: each setup's best table rate, its validation curve there, and its difference from Adam
tables seed by seed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from models.reporting import stats
from models.reporting.tables import format_bytes, format_interval, format_loss, markdown_table
from models.training import search
from models.training.checkpoints import load_saved_runs

# The baselines: Adam tables and Ember tables beside the Muon body.
ADAM = 'adamw+muon'
EMBER = 'ember+muon'


def runs_dir(out: Path, batch: int) -> Path:
  return Path(out) / f'b{batch}' / 'runs'


def load_runs(out: Path, batch: int) -> list[dict]:
  """Every finished run at ``batch`` saved under ``out``, in name order."""
  return load_saved_runs(runs_dir(out, batch))


def _by_setup(runs: Sequence[dict]) -> dict[str, list[dict]]:
  grouped: dict[str, list[dict]] = {}
  for run in runs:
    grouped.setdefault(run['setup'], []).append(run)
  return grouped


def best_on_seed0(runs: Sequence[dict]) -> dict[str, float]:
  """Each setup's lowest seed-0 final validation loss over its table rates (NaN ranks last)."""
  best = {}
  for setup, mine in _by_setup(runs).items():
    losses = [r['final_val_loss'] for r in mine if r['seed'] == 0]
    finite = [v for v in losses if v is not None and np.isfinite(v)]
    if losses:
      best[setup] = min(finite) if finite else float('inf')
  return best


def best_variant(runs: Sequence[dict], setups: Sequence[str]) -> str:
  """Of ``setups`` other than the baselines, the one with the lowest mean loss over the seeds of
  its best rate (the Ember baseline if there is none)."""
  summary = summarize([r for r in runs if r['setup'] in setups])['best']
  others = [s for s in setups if s in summary and s not in (ADAM, EMBER)]
  if not others:
    return EMBER
  return min(others, key=lambda s: summary[s]['final_val_loss']['mean'])


def summarize(runs: Sequence[dict]) -> dict:
  """The summary of one batch size's runs.

  Returns:
    ``{"best", "grid", "versus_adam"}``: ``best[setup]`` its ``stats.summarize`` entry at its best
    table rate plus ``best_lr``, ``lr_on_grid_edge`` and ``val_curve`` (``[step, mean loss over
    its seeds]``); ``grid[setup][lr]`` the seed-0 final validation loss; ``versus_adam[setup]``
    the setup minus Adam tables, seed by seed, each at its best rate (``stats.paired_differences``;
    negative: lower loss than Adam tables).
  """
  best, grid, at_best = {}, {}, {}
  for setup, mine in _by_setup(runs).items():
    rate = search.best_learning_rate(mine, 'table_lr')
    at_best[setup] = [r for r in mine if r['table_lr'] == rate]
    rates = sorted({r['table_lr'] for r in mine})
    grid[setup] = {
      str(lr): next(
        (r['final_val_loss'] for r in mine if r['table_lr'] == lr and not r['seed']), None
      )
      for lr in rates
    }
    curves = [np.asarray(r['val_loss_curve'], dtype=float) for r in at_best[setup]]
    curve = np.mean(curves, axis=0) if len({c.shape for c in curves}) == 1 else curves[0]
    best[setup] = {
      **stats.summarize(at_best[setup])[setup],
      'best_lr': rate,
      'lr_on_grid_edge': len(rates) > 1 and rate in (rates[0], rates[-1]),
      'val_curve': curve.tolist(),
    }
  versus_adam = {}
  if ADAM in at_best:
    for setup, mine in at_best.items():
      if setup != ADAM:
        paired = stats.paired_differences({setup: mine, ADAM: at_best[ADAM]}, reference=setup)
        versus_adam[setup] = paired[ADAM]
  return {'best': best, 'grid': grid, 'versus_adam': versus_adam}


def format_batch(summary: dict) -> str:
  """One batch size's tables: each setup at its best table rate, then the grid."""
  best = summary['best']
  steps = sorted({int(step) for s in best.values() for step, _ in s['val_curve'][1:]})
  rows = []
  for setup, s in best.items():
    at = {int(step): loss for step, loss in s['val_curve']}
    paired = summary['versus_adam'].get(setup)
    rows.append(
      (
        setup,
        f'{s["best_lr"]:g}' + (' (edge)' if s['lr_on_grid_edge'] else ''),
        str(len(s['seeds'])),
        *(f'{at[step]:.3f}' if step in at else '—' for step in steps[:-1]),
        format_loss(s['final_val_loss']),
        '—'
        if paired is None
        else f'{format_interval(paired["final_val_loss"])} ({paired["final_val_loss"]["verdict"]})',
        format_bytes(s['table_state_bytes']),
      )
    )
  header = (
    'setup',
    'best table lr',
    'seeds',
    *(f'val at {step}' for step in steps[:-1]),
    f'final ({steps[-1] if steps else "end"})',
    f'minus {ADAM}',
    'table opt. state',
  )
  rates = sorted({float(lr) for g in summary['grid'].values() for lr in g})
  grid_rows = [
    (
      setup,
      *(
        '—' if (v := g.get(str(lr))) is None else f'{v:.4f}' if np.isfinite(v) else 'diverged'
        for lr in rates
      ),
    )
    for setup, g in summary['grid'].items()
  ]
  grid = markdown_table(('seed 0, table lr', *(f'{lr:g}' for lr in rates)), grid_rows)
  return markdown_table(header, rows) + '\n\n' + grid


def format_tables(summaries: Mapping[str, dict]) -> str:
  """Every batch size's tables, under a heading naming it."""
  if not summaries:
    return 'No finished runs yet.\n'
  parts = [f'## Batch {batch}\n\n{format_batch(summary)}' for batch, summary in summaries.items()]
  note = (
    "Each setup at its best table rate (seed 0's grid; the body's rate held); validation loss "
    'at each evaluation step is the mean over the seeds of that rate, the final loss mean ± std; '
    f'the difference from {ADAM} is paired by seed (same initialization and batches) with its '
    '95% t interval (negative: lower loss than Adam tables). Table opt. state: the bytes of the '
    "tables' optimizer state, read from the state."
  )
  return '\n\n'.join([*parts, note]) + '\n'


def plot_curves(runs: Sequence[dict], path: Path) -> None:
  """Validation loss against steps at one batch size: the baselines and every setup with more
  than one seed, each at its best table rate (mean over seeds)."""
  import matplotlib.pyplot as plt

  best = summarize(runs)['best']
  shown = [s for s in best if s in (ADAM, EMBER) or len(best[s]['seeds']) > 1]
  fig, (ax, late) = plt.subplots(1, 2, figsize=(12, 4.2))
  for index, setup in enumerate(shown):
    curve = np.asarray(best[setup]['val_curve'], dtype=float)
    style = '-' if setup in (ADAM, EMBER) else ['--', ':', '-.'][index % 3]
    color = 'tab:blue' if setup == ADAM else 'tab:red' if setup == EMBER else f'C{index + 2}'
    label = f'{setup} (table lr {best[setup]["best_lr"]:g}, {len(best[setup]["seeds"])} seeds)'
    for axis in (ax, late):
      axis.plot(curve[:, 0], curve[:, 1], style, color=color, marker='o', ms=3, label=label)
  half = max((c[0] for s in shown for c in best[s]['val_curve']), default=0) / 2
  late.set_xlim(left=half)
  tail = [c[1] for s in shown for c in best[s]['val_curve'] if c[0] >= half]
  if tail:
    late.set_ylim(min(tail) - 0.02, max(tail) + 0.02)
  for axis, title in ((ax, 'validation loss'), (late, 'second half')):
    axis.set_xlabel('step')
    axis.set_ylabel('validation loss (nats)')
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_batch_trend(summaries: Mapping[str, dict], path: Path) -> None:
  """Each setup minus Adam tables (final validation loss, 95% interval) against the batch size."""
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  setups = dict.fromkeys(s for summary in summaries.values() for s in summary['versus_adam'])
  for index, setup in enumerate(setups):
    points = sorted(
      (int(batch), summary['versus_adam'][setup]['final_val_loss'])
      for batch, summary in summaries.items()
      if setup in summary['versus_adam']
    )
    if len(points) < 2:
      continue
    xs = [b for b, _ in points]
    ys = [d['mean'] for _, d in points]
    errors = np.asarray(
      [
        [0.0, 0.0]
        if np.isnan(d['ci95'][0])
        else [d['mean'] - d['ci95'][0], d['ci95'][1] - d['mean']]
        for _, d in points
      ]
    ).T
    color = 'tab:red' if setup == EMBER else f'C{index + 2}'
    ax.errorbar(xs, ys, yerr=errors, fmt='o-', color=color, capsize=3, label=setup)
  ax.axhline(0.0, color='tab:blue', lw=0.8, label=f'{ADAM} (reference)')
  ax.set_xscale('log', base=2)
  ax.set_xlabel('batch (sequences of 128 tokens)')
  ax.set_ylabel(f'final validation loss minus {ADAM} (nats)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)

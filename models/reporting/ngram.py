"""The n-gram table benchmark's tables and plots (``models.bench.ngram``), from its summary
(``models.training.ngram_summary``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from models.optim import registry
from models.reporting.tables import format_bytes, format_interval, format_loss, markdown_table

NONE = 'none'


def _rows(log_rows: int | None) -> str:
  return '—' if log_rows is None else f'2^{log_rows}'


def _verdict(paired: dict) -> str:
  return f'{format_interval(paired)} ({paired["verdict"]})'


def step_seconds(entry: dict) -> float:
  """A setup's seconds per step: the timing phase's, else its runs' mean."""
  return entry.get('timed_step_s', entry['mean_step_time_s'])


def format_length(summary: dict) -> str:
  """The tables of one length: each setup at its best rate, and the paired differences."""
  best = summary['best']
  base = best.get(NONE)
  rows = []
  for setup, s in best.items():
    paired = summary['versus_none'].get(setup)
    time_ratio = step_seconds(s) / step_seconds(base) if base else float('nan')
    rows.append(
      (
        setup,
        _rows(s['log_rows']),
        '—' if setup == NONE else f'{s["best_lr"]:g}' + (' (edge)' if s['lr_on_grid_edge'] else ''),
        str(len(s['seeds'])),
        format_loss(s['final_val_loss']),
        format_loss(s['rare_val_loss']),
        '—' if paired is None else _verdict(paired['final_val_loss']),
        '—' if paired is None else _verdict(paired['rare_val_loss']),
        f'{1e3 * step_seconds(s):.0f} ms ({time_ratio:.2f}×)'
        + ('' if 'timed_step_s' in s else '*'),
        format_bytes(s['step_peak_bytes']),
        format_bytes(s['table_state_bytes']),
      )
    )
  header = (
    'setup',
    'rows',
    'best table lr',
    'seeds',
    'val loss',
    'rare-token val loss',
    'minus no table (val)',
    'minus no table (rare)',
    'time per step',
    'step peak memory',
    'table opt. state',
  )
  tables = [markdown_table(header, rows)]
  peer_rows = [
    (setup, other, _verdict(p['final_val_loss']), _verdict(p['rare_val_loss']))
    for setup, others in summary['peers'].items()
    for other, p in others.items()
  ]
  if peer_rows:
    tables.append(
      markdown_table(('Ember table', 'minus', 'val loss', 'rare-token val loss'), peer_rows)
    )
  return '\n\n'.join(tables)


def format_tables(summaries: Mapping[str, dict]) -> str:
  """Every length's tables, under a heading naming its steps."""
  if not summaries:
    return 'No finished runs yet.\n'
  parts = []
  for steps, summary in summaries.items():
    parts.append(f'## {steps} steps\n\n{format_length(summary)}')
  note = (
    "Means ± std over seeds at each setup's best table rate; differences are paired by seed "
    '(same initialization and batches) with 95% t intervals; negative: lower loss than the '
    "other. Time per step: the timing phase's (every setup stepped in one process, one after "
    "another, the lowest of its passes' medians), and its ratio to the model without a table; "
    "marked * where a setup has only its runs' own mean (runs hours apart, on a shared "
    'machine). Step peak memory: arguments, outputs and scratch of the compiled step, as XLA '
    'plans it.'
  )
  return '\n\n'.join([*parts, note]) + '\n'


def plot_loss_against_rows(summaries: Mapping[str, dict], path: Path) -> None:
  """Validation loss at the best rate against the table's rows, one line per table optimizer,
  the model without a table as a horizontal line; one panel per length."""
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(summaries), figsize=(6.4 * len(summaries), 4.2), squeeze=False)
  for ax, (steps, summary) in zip(axes[0], summaries.items(), strict=True):
    best = summary['best']
    for tables in dict.fromkeys(s['tables'] for s in best.values() if s['tables']):
      points = sorted(
        (s['log_rows'], s['final_val_loss']) for s in best.values() if s['tables'] == tables
      )
      xs = [2**k for k, _ in points]
      ys = [loss['mean'] for _, loss in points]
      errors = [loss['std'] if loss['n'] > 1 else 0.0 for _, loss in points]
      entry = registry.TABLE_OPTIMIZERS[tables]
      ax.errorbar(xs, ys, yerr=errors, fmt='o-', color=entry.color, capsize=3, label=entry.label)
    if NONE in best:
      loss = best[NONE]['final_val_loss']
      ax.axhline(loss['mean'], color='black', lw=0.8, label='no table')
      if loss['n'] > 1:
        low, high = loss['mean'] - loss['std'], loss['mean'] + loss['std']
        ax.axhspan(low, high, color='black', alpha=0.08)
    ax.set_xscale('log', base=2)
    ax.set_xlabel('n-gram table rows')
    ax.set_ylabel('final validation loss (nats; ± std over seeds)')
    ax.set_title(f'{steps} steps, each at its best table rate', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_loss_against_time(
  runs_by_length: Mapping[int, Sequence[dict]], summaries: Mapping[str, dict], path: Path
) -> None:
  """Validation loss against training time (steps times the run's mean step time), each setup at
  its best rate, mean over seeds, one panel per length."""
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(
    1, len(runs_by_length), figsize=(6.4 * len(runs_by_length), 4.2), squeeze=False
  )
  for ax, (steps, runs) in zip(axes[0], runs_by_length.items(), strict=True):
    best = summaries[str(steps)]['best']
    # The largest table solid, smaller ones dashed and dotted; the colour is the optimizer's.
    sizes = sorted({s['log_rows'] for s in best.values() if s['log_rows']}, reverse=True)
    for setup, s in best.items():
      mine = [
        r for r in runs if r['setup'] == setup and (setup == NONE or r['table_lr'] == s['best_lr'])
      ]
      curves = [np.asarray(r['val_loss_curve'], dtype=float) for r in mine]
      if not curves or len({c.shape for c in curves}) != 1:
        continue
      mean = np.mean(curves, axis=0)
      seconds = mean[:, 0] * step_seconds(s)
      if setup == NONE:
        color, style = 'black', '-.'
      else:
        color = registry.TABLE_OPTIMIZERS[s['tables']].color
        style = ['-', '--', ':', '-.'][sizes.index(s['log_rows']) % 4]
      ax.plot(seconds, mean[:, 1], style, color=color, label=setup, lw=1.1)
    late = [v for r in runs for _, v in r['val_loss_curve'][1:] if v is not None and np.isfinite(v)]
    if late:
      ax.set_ylim(min(late) - 0.05, np.percentile(late, 90) + 0.2)
    ax.set_xlabel('training time (s): steps × time per step')
    ax.set_ylabel('validation loss (nats)')
    ax.set_title(f'{steps} steps', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)

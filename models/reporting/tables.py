"""Markdown tables of a comparison: losses over seeds, paired differences, byte counts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import math


def format_bytes(n: float) -> str:
  """Human-readable byte count (powers of 1024)."""
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if n < 1024 or unit == 'GiB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024
  raise AssertionError


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  """A Markdown table from a header and rows of already formatted cells."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines)


def format_loss(described: dict, signed: bool = False) -> str:
  """A loss over seeds: ``mean ± std`` to four decimals, or the value alone for one seed."""
  mean = f'{described["mean"]:+.4f}' if signed else f'{described["mean"]:.4f}'
  return mean if described['n'] < 2 else f'{mean} ± {described["std"]:.4f}'


def format_interval(described: dict) -> str:
  """``mean [low, high]`` (the 95% interval), or the mean alone without an interval."""
  low, high = described['ci95']
  if low is None or math.isnan(low):
    return f'{described["mean"]:+.4f}'
  return f'{described["mean"]:+.4f} [{low:+.4f}, {high:+.4f}]'


def format_summary(summary: dict) -> str:
  """Markdown table of :func:`summarize`: one row per setup."""
  header = (
    'setup',
    'lr (body / tables)',
    'seeds',
    'final val loss',
    'spread over seeds',
    'rare-token val loss',
    'opt. state, tables',
    'opt. state, model',
  )
  return markdown_table(
    header,
    (
      (
        setup,
        f'{s["lr"]:.3g} / {s["table_lr"]:.3g}',
        str(len(s['seeds'])),
        format_loss(s['final_val_loss']),
        _format_spread(s['final_val_loss']),
        format_loss(s['rare_val_loss']),
        format_bytes(s['table_state_bytes']),
        format_bytes(s['model_state_bytes']),
      )
      for setup, s in summary.items()
    ),
  )


def _format_spread(described: dict) -> str:
  """Max - min over the seeds; a single seed has no spread to show."""
  return f'{described["spread"]:.4f}' if described['n'] > 1 else 'n/a (1 seed)'


def format_paired(paired: dict, reference: str = 'ember') -> str:
  """Markdown table of :func:`paired_differences`; empty if there is nothing to compare."""
  if not paired:
    return ''
  header = (
    f'{reference} minus',
    'seeds',
    'final val loss, mean [95% CI]',
    'verdict',
    'per seed',
    'rare-token val loss, mean [95% CI]',
    'verdict',
  )

  return markdown_table(
    header,
    (
      (
        setup,
        str(len(d['seeds'])),
        format_interval(d['final_val_loss']),
        d['final_val_loss']['verdict'],
        ' '.join(f'{v:+.4f}' for v in d['final_val_loss']['values']),
        format_interval(d['rare_val_loss']),
        d['rare_val_loss']['verdict'],
      )
      for setup, d in paired.items()
    ),
  )


def format_grid(grid: dict, best: dict, key: str) -> str:
  """Markdown table: mean ± std of the final validation loss of every setup at every point, each
  setup's best (``best[setup]["best_lr"]``) in bold."""
  lrs = sorted({lr for by_lr in grid.values() for lr in by_lr})
  rows = []
  for setup, by_lr in grid.items():
    best_lr = best[setup]['best_lr']
    cells = []
    for lr in lrs:
      if lr not in by_lr:
        cells.append('')
        continue
      cell = format_loss(by_lr[lr]['final_val_loss'])
      cells.append(f'**{cell}**' if lr == best_lr else cell)
    rows.append([setup, *cells])
  name = 'lr' if key == 'lr' else 'table lr'
  return markdown_table(['setup'] + [f'{name} {lr:g}' for lr in lrs], rows)


def format_best(best: dict, key: str) -> str:
  """Markdown table: each setup at its own best learning rate, mean ± std over seeds."""
  header = (
    'setup',
    'best lr (body / tables)',
    'seeds',
    'final val loss',
    'rare-token val loss',
    'opt. state, tables',
    'opt. state, model',
  )
  return markdown_table(
    header,
    (
      (
        setup,
        f'{s["lr"]:g} / {s["table_lr"]:g}' + (' (grid edge)' if s['lr_on_grid_edge'] else ''),
        str(len(s['seeds'])),
        format_loss(s['final_val_loss']),
        format_loss(s['rare_val_loss']),
        format_bytes(s['table_state_bytes']),
        format_bytes(s['model_state_bytes']),
      )
      for setup, s in best.items()
    ),
  )

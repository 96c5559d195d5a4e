"""The report of the RL comparison (``models.rl``): its tables, its reward curves, its files.

:func:`write` prints the tables and writes ``results.json`` (strict JSON), ``results.md`` and
``reward_curves.png`` from the results alone, so that saved runs give the same report again.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from models.optim import registry
from models.reporting import results as results_lib
from models.reporting import tables


def _reward(described: dict) -> str:
  mean = described['mean']
  if mean is None or math.isnan(mean):
    return 'diverged'
  std = described['std']
  return f'{mean:.3f}' if described['n'] < 2 else f'{mean:.3f} ± {std:.3f}'


def _grid_table(grid: dict, best: dict) -> str:
  """Held-out reward per setup and learning rate; each setup's best in bold."""
  lrs = sorted({float(lr) for by_lr in grid.values() for lr in by_lr})
  rows = []
  for setup, by_lr in grid.items():
    cells = []
    for lr in lrs:
      cell = _reward(by_lr[str(lr)]) if str(lr) in by_lr else ''
      cells.append(f'**{cell}**' if cell and lr == best[setup]['best_lr'] else cell)
    rows.append([setup, *cells])
  return tables.markdown_table(['setup', *[f'lr {lr:g}' for lr in lrs]], rows)


def _best_table(best: dict) -> str:
  header = (
    'setup', 'best lr', 'seeds', 'held-out reward', 'groups with equal rewards',
    'opt. state, tables',
  )  # fmt: skip
  rows = (
    (
      setup,
      f'{s["best_lr"]:g}' + (' (grid edge)' if s['lr_on_grid_edge'] else ''),
      str(len(s['seeds'])),
      _reward(s['final_reward']),
      f'{s["zero_advantage_share"]:.0%}',
      tables.format_bytes(s['table_state_bytes']),
    )
    for setup, s in best.items()
  )
  return tables.markdown_table(header, rows)


def _paired_table(pairs: dict) -> str:
  rows = (
    (
      setup,
      str(len(d['seeds'])),
      tables.format_interval(d['final_reward']),
      d['final_reward']['verdict'],
      ' '.join(f'{v:+.3f}' for v in d['final_reward']['values']),
    )
    for setup, d in pairs.items()
  )
  header = ('ember minus', 'seeds', 'held-out reward [95% CI]', 'verdict', 'per seed')
  return tables.markdown_table(header, rows)


def format_tables(results: dict) -> str:
  """The base model's reward, then per batch shape the grid, the best rates and Ember's pairs."""
  base = results['base_model']
  lines = [f'Base model {base["key"]}: held-out reward {base["held_out_reward"]:.3f}.']
  for batch, best in results['best'].items():
    prompts, group = batch.lower().split('x')
    lines += ['', f'Batch {batch}: {prompts} prompts x {group} completions per step.', '']
    lines += [_grid_table(results['grid'][batch], best), '', _best_table(best)]
    if results['paired'][batch]:
      lines += ['', _paired_table(results['paired'][batch])]
    if batch in results['targets']:
      met = results['targets'][batch]['no_worse_than_adamw_tables']
      lines.append(f'\nEmber no worse than AdamW tables at {batch}: {"met" if met else "not met"}.')
  return '\n'.join(lines)


def plot_curves(results: dict, path: Path) -> None:
  """Held-out reward against step, one panel per batch shape, each setup at its best rate
  (mean over seeds; thin lines: each seed)."""
  import matplotlib.pyplot as plt

  batches = list(results['best'])
  fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
  for ax, batch in zip(axes[0], batches, strict=True):
    for setup, s in results['best'][batch].items():
      runs = [
        r for r in results['runs']
        if r['batch'] == batch and r['setup'] == setup and r['lr'] == s['best_lr']
      ]  # fmt: skip
      color, line_style = registry.plot_style(setup)
      curves = [np.array(r['reward_curve'], dtype=float) for r in runs if r['reward_curve']]
      for curve in curves:
        ax.plot(curve[:, 0], curve[:, 1], color=color, ls=line_style, lw=0.6, alpha=0.4)
      same = [c for c in curves if c.shape == curves[0].shape]
      if same:
        mean = np.mean([c[:, 1] for c in same], axis=0)
        label = f'{setup} (lr {s["best_lr"]:g})'
        ax.plot(same[0][:, 0], mean, marker='o', ls=line_style, color=color, ms=3, label=label)
    ax.axhline(results['base_model']['held_out_reward'], color='black', lw=0.8, ls=':')
    ax.set_title(f'batch {batch} (prompts x group)')
    ax.set_xlabel('GRPO step')
    ax.set_ylabel('held-out reward')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(results: dict, out: Path, verbose: bool = True) -> None:
  """Writes ``results.json``, ``results.md`` (``results["tables"]``) and ``reward_curves.png``
  to ``out``, and prints the tables."""
  out.mkdir(parents=True, exist_ok=True)
  results_lib.write_json(out / 'results.json', results)
  (out / 'results.md').write_text(results['tables'] + '\n')
  plot_curves(results, out / 'reward_curves.png')
  if verbose:
    print('\n' + results['tables'])
    print(f'[rl] wrote {out / "results.json"}, results.md and reward_curves.png')

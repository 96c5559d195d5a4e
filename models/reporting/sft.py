"""Supervised fine-tuning's report (``models.sft``): the comparison, its tables and its plots.

:func:`compare` pairs Ember with each other setup of its body, seed by seed at their best rates,
and checks the targets; :func:`format_tables` writes the Markdown; :func:`write` saves
``results.json``, ``results.md``, ``frontier.png`` (table-state bytes against held-out loss, from
:func:`plot_frontier`) and ``curves.png``::

  results = {**summary, **compare(summary, base_model), 'base_model': base_model, ...}
  results['tables'] = format_tables(results)
  write(results, Path('out/sft/tiny'))
"""

from __future__ import annotations

from pathlib import Path

from models.optim import registry
from models.optim.registry import Setup
from models.reporting import plots, stats, tables
from models.reporting import results as results_lib

FORGETTING = 'pretrain_val'  # The extra evaluation: the pretraining domain's validation set.


def _body(setup: str) -> str:
  return Setup.parse(setup).body


def compare(summary: dict, base_model: dict) -> dict:
  """Ember against each other setup of its body, at their best rates, and the targets.

  Args:
    summary: the learning-rate search's summary (``models.training.search.summarize_search``).
    base_model: the base model's record (``models.training.finetune.build_comparison``).

  Returns:
    ``"paired"``: per reference (``ember``, ``ember+frozen``), its paired differences from each
    other setup of its body; ``"targets"``: the fine-tuning targets, met or not;
    ``"forgetting"``: per setup, its pretraining validation loss after minus before.
  """
  losses = (*stats.LOSSES, f'{FORGETTING}_loss')
  best = summary['best']
  at_best = {
    setup: [r for r in summary['runs'] if r['setup'] == setup and r['lr'] == s['best_lr']]
    for setup, s in best.items()
  }
  paired = {}
  for reference in ('ember', 'ember+frozen'):
    if reference not in at_best:
      continue
    same_body = {s: runs for s, runs in at_best.items() if _body(s) == _body(reference)}
    paired[reference] = stats.paired_differences(same_body, reference, losses)
  targets = {}
  ember_pairs = paired.get('ember', {})

  def held_out(other: str) -> dict | None:
    diff = ember_pairs.get(other)
    return None if diff is None else diff['final_val_loss']

  if 'adamw' in ember_pairs:
    diff = held_out('adamw')
    high = diff['ci95'][1]
    targets['no_worse_than_adamw_tables'] = {
      'difference': diff,
      'met': high is not None and high <= 0,
    }
    targets['table_state_ratio_adamw_over_ember'] = (
      best['adamw']['table_state_bytes'] / best['ember']['table_state_bytes']
    )
  for other in ('frozen', 'rowwise'):
    if other in ember_pairs:
      diff = held_out(other)
      targets[f'better_than_{other}'] = {'difference': diff, 'met': diff['verdict'] == 'better'}
  forgetting = {
    setup: {
      'mean': s[f'{FORGETTING}_loss']['mean'] - base_model['pretrain_val_loss'],
      'ci95': [v - base_model['pretrain_val_loss'] for v in s[f'{FORGETTING}_loss']['ci95']],
    }
    for setup, s in best.items()
  }
  return {'paired': paired, 'targets': targets, 'forgetting': forgetting}


def format_tables(results: dict) -> str:
  """The base model, the grid, each setup at its best rate, the paired differences and the
  targets, as Markdown."""
  base = results['base_model']
  best, forgetting = results['best'], results['forgetting']
  pairs = base['pairs']
  lines = [
    f'Base model {base["key"]}: held-out response loss {base["held_out_response_loss"]:.4f}, '
    f'pretraining validation loss {base["pretrain_val_loss"]:.4f}; {pairs["train"]} training '
    f'and {pairs["held_out"]} held-out pairs ({pairs["response_tokens_held_out"]} held-out '
    'response tokens).',
    '',
    results['grid_table'],
    '',
  ]
  rows = []
  for setup, s in best.items():
    edge = ' (grid edge)' if s['lr_on_grid_edge'] else ''
    rows.append(
      (
        setup,
        f'{s["best_lr"]:g}{edge}',
        str(len(s['seeds'])),
        tables.format_loss(s['final_val_loss']),
        tables.format_loss(s['rare_val_loss']),
        f'{forgetting[setup]["mean"]:+.4f}',
        tables.format_bytes(s['table_state_bytes']),
        tables.format_bytes(s['model_state_bytes']),
      )
    )
  lines.append(
    tables.markdown_table(
      (
        'setup',
        'best lr',
        'seeds',
        'held-out response loss',
        'rare tokens',
        'forgetting (pretrain val, after - before)',
        'opt. state, tables',
        'opt. state, model',
      ),
      rows,
    )
  )
  for reference, paired in results['paired'].items():
    rows = [
      (
        other,
        str(len(d['seeds'])),
        tables.format_interval(d['final_val_loss']),
        d['final_val_loss']['verdict'],
        tables.format_interval(d['rare_val_loss']),
        tables.format_interval(d[f'{FORGETTING}_loss']),
        d[f'{FORGETTING}_loss']['verdict'],
      )
      for other, d in paired.items()
    ]
    if rows:
      lines += [
        '',
        tables.markdown_table(
          (
            f'{reference} minus',
            'seeds',
            'held-out response loss [95% CI]',
            'verdict',
            'rare tokens [95% CI]',
            'pretrain val loss [95% CI]',
            'verdict',
          ),
          rows,
        ),
      ]
  targets = results['targets']
  if targets:
    lines.append('')
    for name, target in targets.items():
      if isinstance(target, dict):
        diff = target['difference']
        lines.append(
          f'- {name}: {"met" if target["met"] else "not met"} '
          f'({tables.format_interval(diff)}, {diff["verdict"]})'
        )
      else:
        lines.append(f'- {name}: {target:.0f}x')
  return '\n'.join(lines)


def plot_frontier(results: dict, path: Path) -> None:
  """Held-out response loss (mean, 95% interval) against the tables' optimizer-state bytes."""
  import matplotlib.pyplot as plt

  best = results['best']
  nonzero = [s['table_state_bytes'] for s in best.values() if s['table_state_bytes']]
  # No state (frozen tables) has no place on a log axis: it is drawn a decade left of the least.
  zero_at = min(nonzero) / 10 if nonzero else 1.0
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for setup, s in best.items():
    parsed = Setup.parse(setup)
    loss = s['final_val_loss']
    low, high = loss['ci95']
    x = s['table_state_bytes'] or zero_at
    error = None if low is None else [[loss['mean'] - low], [high - loss['mean']]]
    ax.errorbar(
      x,
      loss['mean'],
      yerr=error,
      fmt='o' if parsed.body == 'adamw' else 's',
      mfc=None if parsed.body == 'adamw' else 'white',
      color=registry.TABLE_OPTIMIZERS[parsed.tables].color,
      capsize=3,
      label=setup,
    )
  base = results['base_model']['held_out_response_loss']
  ax.axhline(base, color='black', lw=0.8, ls=':', label='base model')
  ax.set_xscale('log')
  high = max(nonzero or [zero_at]) * 3
  ax.set_xlim(zero_at / 3, high)
  # Ticks at 1 KiB times powers of 8, so that their labels are round byte counts.
  ticks = [1024 * 8.0**k for k in range(-4, 12) if zero_at * 3 < 1024 * 8.0**k < high]
  ax.set_xticks([zero_at, *ticks])
  ax.set_xticklabels(['0', *[tables.format_bytes(t) for t in ticks]])
  ax.minorticks_off()
  ax.set_xlabel("token tables' optimizer state (log scale)")
  ax.set_ylabel('held-out response loss (95% interval)')
  ax.set_title('SFT: memory against quality (filled: AdamW body; open: body frozen)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(results: dict, out: Path, verbose: bool = True) -> None:
  """Writes ``results.json``, ``results.md``, ``frontier.png`` and ``curves.png`` into ``out``.

  Args:
    results: the comparison's results, ``results["tables"]`` from :func:`format_tables`.
    out: the folder (it exists: the runs are kept in it).
    verbose: print the tables and what was written.
  """
  results_lib.write_json(out / 'results.json', results)
  (out / 'results.md').write_text(results['tables'] + '\n')
  plot_frontier(results, out / 'frontier.png')
  best = results['best']
  plots.plot_curves(
    [r for r in results['runs'] if r['lr'] == best[r['setup']]['best_lr']],
    out / 'curves.png',
    title='SFT from the base model: held-out response loss, each setup at its best rate',
  )
  if verbose:
    print('\n' + results['tables'])
    print(f'[sft] wrote {out / "results.json"}, results.md, frontier.png and curves.png')

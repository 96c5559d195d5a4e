"""The scaling sweep's report: markdown tables and plots of the summary (``summary.summarize``).

Each setup's colour and line style come from the registry (``registry.plot_style``): the tables'
colour, the body's line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.optim.registry import Setup, plot_style
from models.reporting import tables
from models.training.checkpoints import load_saved_runs
from models.training.sweep import MUON_PAIR, RATE_PAIRS, TABLE_PEERS, Sweep


def _interval(diff: dict) -> str:
  """``-0.031 [-0.045, -0.017] better`` from a paired difference."""
  values = diff['final_val_loss']
  if values['n'] < 2:
    return f'{values["mean"]:+.3f} (1 seed)'
  low, high = values['ci95']
  return f'{values["mean"]:+.3f} [{low:+.3f}, {high:+.3f}] {values["verdict"]}'


def _rare(diff: dict) -> str:
  values = diff['rare_val_loss']
  if values['n'] < 2:
    return f'{values["mean"]:+.3f}'
  return f'{values["mean"]:+.3f} {values["verdict"]}'


def _setup_order(sweep: Sweep) -> list[str]:
  return [*sweep.setups, *MUON_PAIR]


def format_tables(sweep: Sweep, result: dict) -> str:
  """The sweep's markdown tables: the gaps along each axis, beside Muon, and the best rates."""
  points = result['points']
  sections = []
  size_axis = [f'{size}-b{sweep.base_batch}' for size in sweep.sizes]
  batch_axis = [f'{sweep.base_size}-b{b}' for b in sweep.batches]
  for title, names in (('Size axis', size_axis), ('Batch axis', batch_axis)):
    rows = []
    for name in names:
      p = points[name]
      paired = p.get('paired', {})
      rows.append(
        [
          name,
          f'{p["non_embedding_params"]:,}',
          f'{p["steps"]} x {p["batch_size"]}',
          p['status'],
          *(_interval(paired[s]) if s in paired else '' for s in TABLE_PEERS),
          *(_rare(paired[s]) if s in paired else '' for s in TABLE_PEERS),
        ]
      )
    header = [
      'point',
      'non-emb. params',
      'steps x batch',
      'status',
      *(f'ember - {s}, val loss' for s in TABLE_PEERS),
      *(f'ember - {s}, rare' for s in TABLE_PEERS),
    ]
    sections.append(f'### {title}\n\n' + tables.markdown_table(header, rows))
  muon_rows = []
  for name in (n for n in sweep.order if n in sweep.muon_points):
    p = points[name]
    paired = p.get('paired_muon', {})
    muon_rows.append(
      [
        name,
        p['status'],
        _interval(paired[MUON_PAIR[1]]) if MUON_PAIR[1] in paired else '',
        _rare(paired[MUON_PAIR[1]]) if MUON_PAIR[1] in paired else '',
      ]
    )
  sections.append(
    '### Beside a Muon body\n\n'
    + tables.markdown_table(
      ['point', 'status', 'ember+muon - adamw+muon, val loss', 'rare'], muon_rows
    )
  )
  rate_rows = []
  for name in (n for n in sweep.order if n in sweep.table_rate_points):
    rates = points[name].get('table_rates', {'status': 'not run'})
    for ember_setup, adam_setup in RATE_PAIRS:
      cells = []
      for setup in (ember_setup, adam_setup):
        b = rates.get('best', {}).get(setup)
        if b is None:
          cells.append('')
          continue
        edge = ' (edge)' if b['lr_on_grid_edge'] else ''
        loss = tables.format_loss(b['final_val_loss'])
        cells.append(f'{b["best_table_lr"]:g} / {b["body_lr"]:g}{edge}: {loss}')
      paired = rates.get('paired', {}).get(adam_setup)
      cells += [_interval(paired), _rare(paired)] if paired else ['', '']
      body = Setup.parse(ember_setup).body
      status = rates.get('pair_status', {}).get(adam_setup, rates['status'])
      rate_rows.append([name, body, status, *cells])
  sections.append(
    "### Each setup's tables at their own rate, the body at Adam tables' best rate\n\n"
    + tables.markdown_table(
      [
        'point',
        'body',
        'status',
        'Ember tables: tables / body rate, val loss',
        'Adam tables: tables / body rate, val loss',
        'Ember - Adam tables, val loss',
        'rare',
      ],
      rate_rows,
    )
  )
  setups = [s for s in _setup_order(sweep) if any(s in p.get('best', {}) for p in points.values())]
  lr_rows = []
  for name in sweep.order:
    best = points[name].get('best', {})
    cells = []
    for s in setups:
      if s not in best:
        cells.append('')
        continue
      b = best[s]
      loss = tables.format_loss(b['final_val_loss'])
      edge = ' (edge)' if b['lr_on_grid_edge'] else ''
      cells.append(f'{b["best_lr"]:g}{edge}: {loss}')
    lr_rows.append([name, *cells])
  sections.append(
    '### Best learning rate and final validation loss at it (mean ± std over seeds)\n\n'
    + tables.markdown_table(['point', *setups], lr_rows)
  )
  hours = result['train_time_s'] / 3600
  sections.append(f"Sum of the saved runs' training times: {hours:.2f} h.")
  return '\n\n'.join(sections)


def plot_all(sweep: Sweep, result: dict, out: Path) -> None:
  """Writes ``gap_vs_params.png``, ``gap_vs_batch.png``, ``best_lr_vs_batch.png`` and
  ``curves_extremes.png`` from ``result``."""
  import matplotlib
  import matplotlib.pyplot as plt

  points = result['points']
  size_axis = [f'{size}-b{sweep.base_batch}' for size in sweep.sizes]
  batch_axis = [f'{sweep.base_size}-b{b}' for b in sweep.batches]
  for names, x_of, xlabel, base, path in (
    (
      size_axis,
      lambda p: p['non_embedding_params'],
      'non-embedding parameters',
      10,
      'gap_vs_params',
    ),
    (batch_axis, lambda p: p['batch_size'], 'sequences per step (fixed tokens)', 2, 'gap_vs_batch'),
  ):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pairs = [(peer, 'paired', peer) for peer in TABLE_PEERS]
    pairs.append(('adamw+muon', 'paired_muon', 'muon body: ember - adamw'))
    for k, (peer, key, label) in enumerate(pairs):
      xs, ys, lo, hi = [], [], [], []
      for name in names:
        diff = points[name].get(key, {}).get(peer)
        if diff is None or diff['final_val_loss']['n'] < 2:
          continue
        values = diff['final_val_loss']
        # Spread the peers a little sideways so that their intervals do not hide each other.
        xs.append(x_of(points[name]) * 1.04 ** (k - 1.5))
        ys.append(values['mean'])
        lo.append(values['mean'] - values['ci95'][0])
        hi.append(values['ci95'][1] - values['mean'])
      if xs:
        color, style = plot_style(peer)  # The Muon pair's dashes are the Muon body's.
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt='o' + style, color=color, capsize=3, label=label)
    ax.axhline(0.0, color='black', lw=0.8)
    ax.set_xscale('log', base=base)
    if base == 2:
      ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
    ax.set_xlabel(xlabel)
    ax.set_ylabel('Ember minus peer, final val loss (nats)')
    ax.set_title('Ember minus each peer (95% interval over seeds); below 0: Ember better')
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f'{path}.png', dpi=120)
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  setups = [
    s for s in _setup_order(sweep) if any(s in points[n].get('best', {}) for n in batch_axis)
  ]
  for setup in setups:
    xs = [points[n]['batch_size'] for n in batch_axis if setup in points[n].get('best', {})]
    ys = [
      points[n]['best'][setup]['best_lr'] for n in batch_axis if setup in points[n].get('best', {})
    ]
    color, style = plot_style(setup)
    ax.plot(xs, ys, 'o' + style, color=color, label=setup)
  ax.set_xscale('log', base=2)
  ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
  ax.set_yscale('log', base=2)
  ax.set_xlabel('sequences per step (fixed tokens)')
  ax.set_ylabel('best peak learning rate')
  ax.set_title(f'Best learning rate against batch size, {sweep.base_size}')
  ax.grid(alpha=0.3)
  if setups:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / 'best_lr_vs_batch.png', dpi=120)
  plt.close(fig)

  extremes = list(dict.fromkeys([size_axis[0], size_axis[-1], batch_axis[0], batch_axis[-1]]))
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
  for ax in axes.flat[len(extremes) :]:
    ax.set_visible(False)
  for ax, name in zip(axes.flat, extremes, strict=False):
    _plot_point_curves(ax, out / name / 'runs', points[name].get('best', {}))
    ax.set_title(name)
  fig.suptitle("Validation loss at each setup's best learning rate, seeds averaged (★ final)")
  fig.tight_layout()
  fig.savefig(out / 'curves_extremes.png', dpi=120)
  plt.close(fig)


def _plot_point_curves(ax, runs_dir: Path, best: dict) -> None:
  """Each setup's validation curve at its ``best`` rate, averaged over seeds, on ``ax``."""
  runs = load_saved_runs(runs_dir)
  late = []
  for setup, b in best.items():
    mine = [r for r in runs if r['setup'] == setup and r['lr'] == b['best_lr']]
    curves = [np.asarray(r['val_loss_curve'], dtype=float) for r in mine if r['val_loss_curve']]
    if not curves or len({c.shape for c in curves}) != 1:
      continue
    mean = np.mean(curves, axis=0)
    color, style = plot_style(setup)
    ax.plot(mean[:, 0], mean[:, 1], style, color=color, label=setup, lw=1.2)
    ax.plot(mean[-1, 0], mean[-1, 1], '*', color=color, ms=9)
    late.extend(mean[1:, 1])
  if late:
    ax.set_ylim(min(late) - 0.05, np.percentile(late, 75) + 0.3)
  ax.set_xlabel('step')
  ax.set_ylabel('validation loss')
  ax.grid(alpha=0.3)
  if late:
    ax.legend(fontsize=8)

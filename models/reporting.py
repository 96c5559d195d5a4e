"""Summaries, Markdown tables, loss-curve plots and the environment record of a comparison."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import importlib.metadata
import os
from pathlib import Path
import platform

import jax
import numpy as np

import ember_optax
from models import stats

LOSSES = ('final_val_loss', 'rare_val_loss')
COLORS = {'adamw': 'tab:blue', 'ember': 'tab:red', 'adafactor': 'tab:green'}


def summarize(runs: Sequence[dict]) -> dict:
  """Per setup, in order of appearance: its seeds, learning rates, losses over seeds and state.

  Each loss is ``stats.describe`` of its values over the seeds (mean, std, spread, interval).
  """
  summary = {}
  for setup in dict.fromkeys(r['setup'] for r in runs):
    rs = [r for r in runs if r['setup'] == setup]
    summary[setup] = {
      'seeds': [r['seed'] for r in rs],
      'lr': rs[0]['lr'],
      'table_lr': rs[0]['table_lr'],
      **{key: stats.describe([r[key] for r in rs]) for key in LOSSES},
      'table_state_bytes': rs[0]['table_state_bytes'],
      'model_state_bytes': rs[0]['model_state_bytes'],
      'mean_step_time_s': float(np.mean([r['mean_step_time_s'] for r in rs])),
    }
  return summary


def paired_differences(runs_by_setup: Mapping[str, Sequence[dict]], reference: str = 'ember'):
  """``reference`` minus every other setup, seed by seed, over the seeds both ran.

  Within a seed every setup starts from the same initialization and sees the same batches, so
  the difference cancels what the seed does to all setups alike.

  Returns:
    ``{setup: {"seeds", "final_val_loss", "rare_val_loss"}}``, each loss a ``stats.describe``
    of the differences plus its ``"verdict"`` (negative: ``reference`` has the lower loss).
    Empty without ``reference``.
  """
  if reference not in runs_by_setup:
    return {}
  ours = {r['seed']: r for r in runs_by_setup[reference]}
  paired = {}
  for setup, runs in runs_by_setup.items():
    if setup == reference:
      continue
    theirs = {r['seed']: r for r in runs}
    seeds = sorted(set(ours) & set(theirs))
    entry = {'seeds': seeds}
    for key in LOSSES:
      diffs = stats.describe([ours[s][key] - theirs[s][key] for s in seeds])
      entry[key] = {**diffs, 'verdict': stats.verdict(diffs['ci95'])}
    paired[setup] = entry
  return paired


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
  if np.isnan(low):
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


def environment(corpus_cache: str | os.PathLike | None = None) -> dict:
  """What the numbers were measured with: versions, Ember's CPU kernel, device, threads, cache."""
  versions = {'python': platform.python_version(), 'ember_optax': ember_optax.__version__}
  for package in ('jax', 'jaxlib', 'optax', 'flax', 'numpy', 'orbax-checkpoint'):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  device = jax.devices()[0]
  return {
    'versions': versions,
    'cpu_kernel': ember_optax.cpu_kernel_status()._asdict(),
    'device': str(device),
    'device_kind': device.device_kind,
    'device_count': jax.device_count(),
    'machine': f'{platform.machine()} {platform.processor()}'.strip(),
    'cpu_count': os.cpu_count(),
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'corpus_cache': str(corpus_cache) if corpus_cache is not None else None,
  }


def plot_curves(runs: Sequence[dict], path: Path | None = None, title: str = ''):
  """Training loss (smoothed) and validation loss against step, one colour per setup.

  Validation points along the way use an evenly spread eighth of the validation batches; the
  last point of each curve (a star) is the final evaluation on all of them, the number the
  tables report.

  Returns:
    ``None`` after writing the figure to ``path``; the figure itself if ``path`` is ``None``
    (in a notebook, to show it).
  """
  import matplotlib.pyplot as plt

  fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4.2))
  labelled = set()
  for r in runs:
    color = COLORS.get(r['setup'])
    label = r['setup'] if r['setup'] not in labelled else None
    labelled.add(r['setup'])
    if not r['train_loss_curve']:
      continue
    steps, losses = np.array(r['train_loss_curve']).T
    # Exponential moving average, so the per-batch noise does not hide the trend.
    smooth, acc = [], losses[0]
    for v in losses:
      acc = 0.9 * acc + 0.1 * v
      smooth.append(acc)
    ax_train.plot(steps, smooth, color=color, label=label, lw=1.2)
    vs, vl = np.array(r['val_loss_curve']).T
    finished = np.isfinite(r['final_val_loss'])
    along = slice(None, -1) if finished else slice(None)
    ax_val.plot(vs[along], vl[along], 'o-', color=color, label=label, lw=1.2, ms=3)
    if finished:
      ax_val.plot(vs[-2:], vl[-2:], '-', color=color, lw=1.2)
      ax_val.plot(vs[-1], vl[-1], '*', color=color, ms=10)
  for ax, name in ((ax_train, 'train loss (EMA 0.9)'), (ax_val, 'validation loss (★ final)')):
    ax.set_xlabel('step')
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  # Zoom in on the part where the setups differ; the first steps would flatten everything.
  late = [v for r in runs for _, v in r['val_loss_curve'][1:] if np.isfinite(v)]
  if late:
    ax_val.set_ylim(min(late) - 0.1, np.percentile(late, 90) + 0.3)
  train = [v for r in runs for _, v in r['train_loss_curve']]
  if train:
    ax_train.set_ylim(min(train) - 0.1, np.percentile(train, 75) + 0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  if path is None:
    return fig
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return None

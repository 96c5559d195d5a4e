"""Loss-curve plots of a comparison's runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.optim.registry import plot_style


def plot_curves(runs: Sequence[dict], path: Path | None = None, title: str = ''):
  """Training loss (smoothed) and validation loss against step, each setup in its registry style.

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
    color, style = plot_style(r['setup'])
    label = r['setup'] if r['setup'] not in labelled else None
    labelled.add(r['setup'])
    if not r['train_loss_curve']:
      continue
    steps, losses = np.array(r['train_loss_curve'], dtype=float).T
    # Exponential moving average, so the per-batch noise does not hide the trend.
    smooth, acc = [], losses[0]
    for v in losses:
      acc = 0.9 * acc + 0.1 * v
      smooth.append(acc)
    ax_train.plot(steps, smooth, style, color=color, label=label, lw=1.2)
    vs, vl = np.array(r['val_loss_curve'], dtype=float).T
    finished = r['final_val_loss'] is not None and np.isfinite(r['final_val_loss'])
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
  late = [v for r in runs for _, v in r['val_loss_curve'][1:] if v is not None and np.isfinite(v)]
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

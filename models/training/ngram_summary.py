"""The n-gram table benchmark's summary, from its saved runs alone: each table's best rate, its
losses over seeds there, and the paired comparisons (against the model without a table, and
between the table optimizers at each size).

Runs are the results of ``models.training.ngram_runs.train_ngram``, kept as JSON in
``<out>/runs/steps<N>/``; summarizing them again gives the same numbers on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.optim import registry
from models.reporting import stats
from models.training import search
from models.training.checkpoints import load_saved_runs

NONE = 'none'  # The setup of the model without a table.


def runs_dir(out: Path, steps: int) -> Path:
  return Path(out) / 'runs' / f'steps{steps}'


def load_runs(out: Path, steps: int) -> list[dict]:
  """Every finished run of ``steps`` steps saved under ``out``, in name order."""
  return load_saved_runs(runs_dir(out, steps))


def _losses_finite(runs: Sequence[dict]) -> bool:
  return all(r['final_val_loss'] is not None and np.isfinite(r['final_val_loss']) for r in runs)


def _order(setup: str) -> tuple[int, int]:
  """The model without a table first, then by size, and within a size in registry order."""
  if setup == NONE:
    return (-1, -1)
  tables, _, rows = setup.partition('@2^')
  return (int(rows), list(registry.TABLE_OPTIMIZERS).index(tables))


def best_rates(runs: Sequence[dict]) -> dict[str, float]:
  """Each table setup's best table rate (``search.best_learning_rate`` over the seeds every grid
  point ran), by setup (``ember@2^20``)."""
  best = {}
  for setup in dict.fromkeys(r['setup'] for r in runs):
    if setup != NONE:
      best[setup] = search.best_learning_rate([r for r in runs if r['setup'] == setup], 'table_lr')
  return best


def summarize(runs: Sequence[dict], timed: dict[str, float] | None = None) -> dict:
  """The summary of one length's runs, with ``timed[setup]`` (seconds per step, measured side by
  side) as each setup's ``timed_step_s`` where given.

  Returns:
    ``{"best", "grid", "versus_none", "peers"}``: ``best[setup]`` the setup's summary at its best
    table rate (``stats.summarize``'s entry plus ``log_rows``, ``tables``, ``best_lr``,
    ``lr_on_grid_edge``, ``step_peak_bytes``, ``steps``); ``grid[setup][lr]`` the mean final
    validation loss over the seeds every grid point ran; ``versus_none[setup]`` the setup minus
    the model without a table, seed by seed (``stats.paired_differences``, negative: the table
    helps); ``peers["ember@2^k"][other]`` Ember's table minus each other optimizer's at size k.
  """
  rates = best_rates(runs)
  at_best = {}
  for setup in sorted(dict.fromkeys(r['setup'] for r in runs), key=_order):
    mine = [r for r in runs if r['setup'] == setup]
    at_best[setup] = [r for r in mine if setup == NONE or r['table_lr'] == rates[setup]]
  best = stats.summarize([r for rs in at_best.values() for r in rs])
  grid = {}
  for setup, entry in best.items():
    first = at_best[setup][0]
    entry.update(
      log_rows=first['log_rows'],
      tables=first['tables'],
      steps=first['steps'],
      step_peak_bytes=first['step_peak_bytes'],
      finite=_losses_finite(at_best[setup]),
    )
    if timed and setup in timed:
      entry['timed_step_s'] = timed[setup]
    if setup == NONE:
      continue
    mine = [r for r in runs if r['setup'] == setup]
    lrs = sorted({r['table_lr'] for r in mine})
    common = set.intersection(*({r['seed'] for r in mine if r['table_lr'] == lr} for lr in lrs))
    grid[setup] = {
      str(lr): float(
        np.mean([r['final_val_loss'] for r in mine if r['table_lr'] == lr and r['seed'] in common])
      )
      for lr in lrs
    }
    edge = len(lrs) > 1 and rates[setup] in (lrs[0], lrs[-1])
    entry.update(best_lr=rates[setup], lr_on_grid_edge=edge)
  versus_none = {}
  if NONE in at_best:
    for setup, mine in at_best.items():
      if setup != NONE:
        paired = stats.paired_differences({setup: mine, NONE: at_best[NONE]}, reference=setup)
        versus_none[setup] = paired[NONE]
  peers = {}
  for setup, mine in at_best.items():
    if setup == NONE or best[setup]['tables'] != 'ember':
      continue
    same_size = {
      other: theirs
      for other, theirs in at_best.items()
      if other != setup and other != NONE and best[other]['log_rows'] == best[setup]['log_rows']
    }
    if same_size:
      peers[setup] = stats.paired_differences({setup: mine, **same_size}, reference=setup)
  return {'best': best, 'grid': grid, 'versus_none': versus_none, 'peers': peers}

"""Statistics for comparing setups over seeds: summaries, spreads, paired confidence intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math

import numpy as np

# Two-sided 95% quantiles of Student's t distribution, t_{0.975, dof}, for dof = 1..30.
_T_975 = (
  12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
  2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
  2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(dof: int) -> float:
  """t_{0.975} with ``dof`` degrees of freedom (the normal's 1.960 beyond 30, within 2%)."""
  if dof < 1:
    raise ValueError(f'a t interval needs at least 1 degree of freedom, got {dof}')
  return _T_975[dof - 1] if dof <= len(_T_975) else 1.960


def describe(values: Sequence[float]) -> dict:
  """The values, their mean, sample standard deviation, spread (max - min), 95% t interval.

  With one value the standard deviation and interval are NaN; a NaN value (a diverged run)
  makes every statistic NaN.
  """
  # None is how strict JSON stores a diverged run's NaN loss.
  x = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
  n = x.size
  mean = float(x.mean()) if n else math.nan
  std = float(x.std(ddof=1)) if n > 1 else math.nan
  half = t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
  return {
    'values': x.tolist(),
    'n': n,
    'mean': mean,
    'std': std,
    'spread': float(x.max() - x.min()) if n else math.nan,
    'ci95': [mean - half, mean + half],
  }


def verdict(ci95: Sequence[float], lower_is_better: bool = True) -> str:
  """``"better"`` if the whole interval of a difference is below 0, ``"worse"`` if above, else
  ``"no different"`` (``"undetermined"`` without an interval)."""
  low, high = ci95
  if low is None or high is None or math.isnan(low) or math.isnan(high):
    return 'undetermined'
  if high < 0:
    return 'better' if lower_is_better else 'worse'
  if low > 0:
    return 'worse' if lower_is_better else 'better'
  return 'no different'


LOSSES = ('final_val_loss', 'rare_val_loss')


def summarize(runs: Sequence[dict], losses: Sequence[str] = LOSSES) -> dict:
  """Per setup, in order of appearance: its seeds, learning rates, losses over seeds and state.

  Each of ``losses`` is ``describe`` of its values over the seeds (mean, std, spread, interval).
  """
  summary = {}
  for setup in dict.fromkeys(r['setup'] for r in runs):
    rs = [r for r in runs if r['setup'] == setup]
    summary[setup] = {
      'seeds': [r['seed'] for r in rs],
      'lr': rs[0]['lr'],
      'table_lr': rs[0]['table_lr'],
      **{key: describe([r[key] for r in rs]) for key in losses},
      'table_state_bytes': rs[0]['table_state_bytes'],
      'model_state_bytes': rs[0]['model_state_bytes'],
      'mean_step_time_s': float(np.mean([r['mean_step_time_s'] for r in rs])),
    }
  return summary


def paired_differences(
  runs_by_setup: Mapping[str, Sequence[dict]],
  reference: str = 'ember',
  losses: Sequence[str] = LOSSES,
):
  """``reference`` minus every other setup, seed by seed, over the seeds both ran, for each of
  ``losses``.

  Within a seed every setup starts from the same initialization and sees the same batches, so
  the difference cancels what the seed does to all setups alike.

  Returns:
    ``{setup: {"seeds", <each of losses>}}``, each loss a ``describe``
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
    for key in losses:
      diffs = describe([ours[s][key] - theirs[s][key] for s in seeds])
      entry[key] = {**diffs, 'verdict': verdict(diffs['ci95'])}
    paired[setup] = entry
  return paired

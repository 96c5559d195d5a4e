"""Small statistics for comparing setups over seeds: means, spreads, paired confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
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
  x = np.asarray(values, dtype=np.float64)
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
  if math.isnan(low) or math.isnan(high):
    return 'undetermined'
  if high < 0:
    return 'better' if lower_is_better else 'worse'
  if low > 0:
    return 'worse' if lower_is_better else 'better'
  return 'no different'

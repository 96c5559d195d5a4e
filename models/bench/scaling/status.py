"""How far a point of the scaling sweep has come, read from its saved runs alone.

A point is complete once every setup's grid holds the span of the bests of every setup beside the
same body, brackets its own best (or may grow no more) and has every seed at it; the driver
(``models.bench.scaling.run``) trains until then, and the summary reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

from models.optim.registry import Setup
from models.training import search
from models.training.sweep import Point, Sweep


def point_status(sweep: Sweep, point: Point, runs: Sequence[dict]) -> str:
  """``"complete"`` once every setup's grid brackets its best (or may grow no more) and the best
  has every seed; ``"partial"`` if some runs are saved; ``"not run"`` otherwise."""
  span = shared_span(sweep, point, runs)
  start = {setup: set(sweep.grid_for(point, setup)) | span[setup] for setup in point.setups}
  return grid_status(sweep, start, runs, 'lr')


def shared_span(sweep: Sweep, point: Point, runs: Sequence[dict]) -> dict[str, set[float]]:
  """The rates each setup's grid at ``point`` must also hold: those of the grids' lattice
  (``base_lr`` times powers of two) from the lowest to the highest best rate of any setup with
  the same body.

  A loss need not be unimodal in the rate (at d128-b64, AdamW-everywhere's grid bracketed a best
  of 0.016 with 0.008 worse, yet 0.004 is better still): a rate where another setup does best is
  tried for every setup before a best is taken. The bodies' rates mean different steps (Muon's
  best is 2-4 times AdamW's), so the span is taken within a body.
  """
  bests: dict[str, list[float]] = {}
  for setup in point.setups:
    if mine := [r for r in runs if r['setup'] == setup]:
      bests.setdefault(Setup.parse(setup).body, []).append(search.best_learning_rate(mine, 'lr'))
  # A rate some run already used stands for its lattice point, so that floats compare equal.
  used = sorted({r['lr'] for r in runs})
  spans = {}
  for body, rates in bests.items():
    first, last = (round(math.log2(lr / sweep.base_lr)) for lr in (min(rates), max(rates)))
    spans[body] = {
      next((u for u in used if math.isclose(u, lr, rel_tol=1e-9)), lr)
      for lr in (sweep.base_lr * 2.0**k for k in range(first, last + 1))
    }
  return {setup: spans.get(Setup.parse(setup).body, set()) for setup in point.setups}


def grid_status(sweep: Sweep, start: dict[str, set[float]], runs: Sequence[dict], key: str) -> str:
  """:func:`point_status` of the grids ``start`` (per setup) of the rate ``key`` of ``runs``."""
  if not runs:
    return 'not run'
  for setup, start_grid in start.items():
    mine = [r for r in runs if r['setup'] == setup]
    if not mine:
      return 'partial'
    lrs = sorted({r[key] for r in mine})
    if not start_grid <= set(lrs):
      return 'partial'
    best = search.best_learning_rate(mine, key)
    grown_low = sum(lr < min(start_grid) for lr in lrs)
    grown_high = sum(lr > max(start_grid) for lr in lrs)
    if (best == lrs[0] and grown_low < sweep.extend) or (
      best == lrs[-1] and grown_high < sweep.extend
    ):
      return 'partial'
    seeds = {r['seed'] for r in mine if r[key] == best}
    if not set(sweep.grid_seeds) | set(sweep.best_seeds) <= seeds:
      return 'partial'
  return 'complete'

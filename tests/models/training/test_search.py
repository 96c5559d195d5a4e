"""The learning-rate search: the grid that grows to bracket a best, the choice of the best, the
refusals of a search that cannot run."""

from __future__ import annotations

import pytest

from models.cli import ConfigError
from models.training import search


def test_best_learning_rate_judges_every_point_on_the_same_seeds():
  runs = [
    {'setup': 'ember', 'lr': 1e-3, 'seed': 0, 'final_val_loss': 4.0},
    {'setup': 'ember', 'lr': 2e-3, 'seed': 0, 'final_val_loss': 4.1},
    # Seeds added at 2e-3 alone must not move the choice, however low they are.
    {'setup': 'ember', 'lr': 2e-3, 'seed': 1, 'final_val_loss': 3.0},
  ]
  assert search.best_learning_rate(runs, 'lr') == 1e-3
  diverged = [{**runs[0], 'final_val_loss': None}, runs[1]]
  assert search.best_learning_rate(diverged, 'lr') == 2e-3


def test_a_grid_grows_on_the_side_of_its_best_until_it_is_bracketed():
  losses = {1.0: 5.0, 2.0: 4.0, 4.0: 3.0, 8.0: 2.5, 16.0: 2.6}
  ran = []

  def run_point(lr):
    ran.append(lr)
    return [{'setup': 'ember', 'lr': lr, 'seed': 0, 'final_val_loss': losses[lr]}]

  runs, best = search.bracket_best(
    (1.0, 2.0), 3, run_point, lambda runs: search.best_learning_rate(runs, 'lr')
  )
  assert best == 8.0 and ran == [1.0, 2.0, 4.0, 8.0, 16.0] and len(runs) == 5
  # Without room to grow, the best stays on the edge.
  _, edge = search.bracket_best(
    (1.0, 2.0), 0, run_point, lambda runs: search.best_learning_rate(runs, 'lr')
  )
  assert edge == 2.0


@pytest.mark.parametrize(
  ('lrs', 'extend', 'seeds', 'best_seeds', 'named'),
  [
    ((), 2, (0,), (), '--lrs'),
    ((1e-3, 1e-3), 2, (0,), (), '--lrs'),
    ((1e-3,), -1, (0,), (), '--extend'),
    ((1e-3,), 2, (), (), '--seeds'),
    ((1e-3,), 2, (0,), (0,), '--best-seeds'),
  ],
)
def test_a_search_that_cannot_run_is_refused_naming_its_flag(lrs, extend, seeds, best_seeds, named):
  with pytest.raises(ConfigError, match=named):
    search.check_search(lrs, extend, seeds, best_seeds)

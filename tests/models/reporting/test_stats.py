"""Statistics over seeds: descriptions, verdicts, paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from models.reporting import stats


def test_describe_and_verdicts():
  d = stats.describe([1.0, 2.0, 3.0, 4.0])
  assert d['mean'] == 2.5 and d['spread'] == 3.0
  assert d['std'] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
  half = 3.182 * d['std'] / 2  # t_{0.975, 3} * s / sqrt(4)
  assert d['ci95'] == pytest.approx([2.5 - half, 2.5 + half])
  assert stats.verdict([-0.3, -0.1]) == 'better'
  assert stats.verdict([-0.1, 0.2]) == 'no different'
  assert stats.verdict([0.1, 0.2]) == 'worse'
  assert stats.verdict(stats.describe([0.5])['ci95']) == 'undetermined'
  assert stats.t_quantile_975(1) == 12.706 and stats.t_quantile_975(1000) == 1.96


def test_paired_differences_pair_by_seed():
  def run(setup, seed, loss):
    return {'setup': setup, 'seed': seed, 'final_val_loss': loss, 'rare_val_loss': 2 * loss}

  runs = {
    'ember': [run('ember', s, 4.0 + 0.01 * s) for s in range(3)],
    'adamw': [run('adamw', s, 4.1 + 0.01 * s + 0.001 * (s % 2)) for s in (2, 1, 0)],
  }
  paired = stats.paired_differences(runs)['adamw']
  assert paired['seeds'] == [0, 1, 2]
  assert paired['final_val_loss']['values'] == pytest.approx([-0.1, -0.101, -0.1])
  assert paired['final_val_loss']['verdict'] == 'better'


def test_a_diverged_run_read_back_from_strict_json_is_undefined():
  d = stats.describe([1.0, None])
  assert np.isnan(d['mean']) and stats.verdict([None, None]) == 'undetermined'

"""The quality benchmark on the tiny preset: grid, selection, extension, pairing, merging."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.bench import quality as bench_quality
from models.training.config import ConfigError


def _bench_args(corpus_dir, cache_dir, out, lrs, *more):
  return [
    "--preset", "tiny", "--text", str(corpus_dir), "--cache-dir", str(cache_dir),
    "--steps", "8", "--eval-every", "4", "--eval-batches", "2",
    "--setups", "adamw", "ember", "--seeds", "0", "1", "--lrs", *lrs,
    "--out", str(out), "--no-progress", *more,
  ]  # fmt: skip


@pytest.mark.slow
def test_quality_benchmark_selects_pairs_and_merges(corpus_dir, cache_dir, tmp_path):
  """A two-point sweep; ``--summarize`` on its halves, one per learning rate, agrees with it."""
  whole = bench_quality.main(
    _bench_args(corpus_dir, cache_dir, tmp_path, ['1e-2', '3e-3'], '--extend', '0')
  )
  assert len(whole['runs']) == 2 * 2 * 2  # setups x seeds x learning rates
  for setup, best in whole['best'].items():
    by_lr = {float(lr): s['final_val_loss']['mean'] for lr, s in whole['grid'][setup].items()}
    assert set(by_lr) == {3e-3, 1e-2}
    assert best['best_lr'] == min(by_lr, key=by_lr.get)
    assert best['lr_on_grid_edge']  # Two points: both are edges.
  assert whole['lr_rule'] == whole['best']['ember']['best_lr'] / whole['best']['adamw']['best_lr']

  # Ember minus AdamW, seed by seed, each at its best learning rate.
  def loss(setup, seed):
    (run,) = [
      r
      for r in whole['runs']
      if r['setup'] == setup and r['seed'] == seed and r['lr'] == whole['best'][setup]['best_lr']
    ]
    return run['final_val_loss']

  diffs = [loss('ember', seed) - loss('adamw', seed) for seed in (0, 1)]
  paired = whole['paired']['adamw']
  assert paired['seeds'] == [0, 1]
  assert paired['final_val_loss']['mean'] == pytest.approx(np.mean(diffs))
  assert paired['final_val_loss']['std'] == pytest.approx(np.std(diffs, ddof=1))
  assert paired['final_val_loss']['verdict'] in ('better', 'no different', 'worse')
  assert '| ember minus | seeds |' in (tmp_path / 'bench.md').read_text()

  saved = json.loads((tmp_path / 'bench.json').read_text())
  halves = []
  for lr in (3e-3, 1e-2):
    halves.append(tmp_path / f'lr{lr:g}.json')
    runs = [r for r in saved['runs'] if r['lr'] == lr]
    halves[-1].write_text(json.dumps({**saved, 'runs': runs}))
  merged = bench_quality.main(['--summarize', *map(str, halves), '--out', str(tmp_path / 'm')])
  for key in ('best', 'paired', 'grid_table', 'table', 'paired_table', 'lr_rule'):
    assert json.loads(json.dumps(merged[key])) == json.loads(json.dumps(whole[key])), key
  assert (tmp_path / 'm' / 'bench.md').read_text() == (tmp_path / 'bench.md').read_text()

  with pytest.raises(ConfigError, match='repeats'):
    bench_quality.summarize_saved([tmp_path / 'bench.json', halves[0]], verbose=False)
  other = json.loads(halves[1].read_text())
  other['settings']['steps'] = 9
  halves[1].write_text(json.dumps(other))
  with pytest.raises(ConfigError, match=r"\['steps'\]"):
    bench_quality.summarize_saved(halves, verbose=False)


@pytest.mark.slow
def test_a_best_on_the_grid_edge_extends_the_grid(corpus_dir, cache_dir, tmp_path):
  """At a tiny budget the largest rate wins, so the grid grows upwards until --extend is spent."""
  results = bench_quality.main(
    _bench_args(
      corpus_dir,
      cache_dir,
      tmp_path,
      ['1e-4', '2e-4'],
      '--setups',
      'ember',
      '--seeds',
      '0',
      '--extend',
      '1',
    )
  )
  assert sorted(float(lr) for lr in results['grid']['ember']) == pytest.approx([1e-4, 2e-4, 4e-4])
  assert results['best']['ember']['best_lr'] == pytest.approx(4e-4)
  assert results['best']['ember']['lr_on_grid_edge']


@pytest.mark.slow
def test_table_lr_sweep_keeps_the_body(corpus_dir, cache_dir, tmp_path):
  results = bench_quality.main(
    _bench_args(
      corpus_dir,
      cache_dir,
      tmp_path,
      ['1e-3', '1e-2'],
      '--setups',
      'ember',
      '--seeds',
      '0',
      '--sweep',
      'table-lr',
      '--lr',
      '2e-3',
      '--extend',
      '0',
    )
  )
  assert {(r['lr'], r['table_lr']) for r in results['runs']} == {(2e-3, 1e-3), (2e-3, 1e-2)}
  assert 'table lr 0.001' in results['grid_table']

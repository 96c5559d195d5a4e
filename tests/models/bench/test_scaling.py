"""``python -m models.bench.scaling`` at its tiny sweep: points, budgets, resumption, summaries."""

from __future__ import annotations

import json

import pytest

from models.bench.scaling import config, run, status
from models.reporting import results
from models.training.checkpoints import load_saved_runs
from models.training.presets import SIZES
from models.training.sweep import MUON_PAIR, SWEEPS, TABLE_RATES, Point


def test_the_full_sweep_spans_the_axes_it_promises():
  sweep = SWEEPS['full']
  points = {p.name: p for p in sweep.points()}
  assert len(points) == 7  # Four sizes and four batches, sharing d128-b8.
  assert sweep.model('d128') == SIZES['small']  # The batch axis's model is the main job's.
  params = [sweep.non_embedding_params(size) for size in sweep.sizes]
  assert params == sorted(params) and params[-1] / params[0] >= 30
  batches = [p.batch_size for p in points.values() if p.size == sweep.base_size]
  assert min(batches) == 1 and max(batches) >= 64
  for name in ('d128-b8', 'd192-b8', 'd128-b1', 'd128-b64'):
    assert set(MUON_PAIR) <= set(points[name].setups)
  for point in points.values():
    assert set(sweep.setups) <= set(point.setups)
  # The batch axis trades steps for batch at a fixed token budget; larger models get more tokens.
  tokens = {n: sweep.steps(p) * p.batch_size for n, p in points.items()}
  for batch in batches:
    assert tokens[f'd128-b{batch}'] == pytest.approx(tokens['d128-b8'], rel=0.02)
  assert tokens['d64-b8'] < tokens['d96-b8'] < tokens['d128-b8'] < tokens['d192-b8']


def test_a_point_whose_best_is_on_an_edge_it_may_still_grow_is_partial():
  sweep = SWEEPS['full']
  (point,) = [p for p in sweep.points() if p.name == 'd64-b8']
  centre = sweep.lr_centre(point)

  def run(setup, lr, seed, loss):
    return {'setup': setup, 'lr': lr, 'seed': seed, 'final_val_loss': loss}

  grid = [centre / 2, centre, centre * 2]
  inside = []
  for setup in point.setups:
    inside += [run(setup, lr, 0, loss) for lr, loss in zip(grid, (4.2, 4.0, 4.1), strict=True)]
    inside += [run(setup, centre, seed, 4.0) for seed in sweep.best_seeds]
  assert status.point_status(sweep, point, inside) == 'complete'
  assert status.point_status(sweep, point, []) == 'not run'
  edge = [r for r in inside if not (r['setup'] == 'ember' and r['lr'] == centre * 2)]
  edge.append(run('ember', centre * 2, 0, 3.9))
  assert status.point_status(sweep, point, edge) == 'partial'
  unseeded = [r for r in inside if not (r['setup'] == 'adamw' and r['seed'] == 2)]
  assert status.point_status(sweep, point, unseeded) == 'partial'


def test_every_grid_holds_the_span_of_the_bests():
  sweep = SWEEPS['full']
  point = Point('d64', 8, ('adamw', 'ember', 'adamw+muon'))
  c = sweep.lr_centre(point)

  def runs(setup, losses):
    return [
      {'setup': setup, 'lr': lr, 'seed': seed, 'final_val_loss': loss}
      for lr, loss in losses.items()
      for seed in (0, *(sweep.best_seeds if loss == min(losses.values()) else ()))
    ]

  # Ember's best, c/4, is inside its grid; AdamW's grid brackets c but never tried c/4.
  ember = runs('ember', {c / 8: 4.3, c / 4: 4.0, c / 2: 4.1, c: 4.2, c * 2: 4.4})
  adamw = runs('adamw', {c / 2: 4.3, c: 4.2, c * 2: 4.4})
  # The Muon body's best, 4c, is far from the AdamW body's: the span is taken within a body.
  muon = runs('adamw+muon', {c * 2: 4.1, c * 4: 3.9, c * 8: 4.0})
  span = status.shared_span(sweep, point, ember + adamw + muon)
  assert span == {'ember': {c / 4, c / 2, c}, 'adamw': {c / 4, c / 2, c}, 'adamw+muon': {c * 4}}
  assert status.point_status(sweep, point, ember + adamw + muon) == 'partial'
  adamw += runs('adamw', {c / 4: 4.5})
  # The Muon setup's starting grid (c/2, c, 2c) still lacks c/2 and c.
  assert status.point_status(sweep, point, ember + adamw + muon) == 'partial'
  muon += runs('adamw+muon', {c / 2: 4.6, c: 4.4})
  assert status.point_status(sweep, point, ember + adamw + muon) == 'complete'


@pytest.mark.slow
def test_tiny_sweep_writes_resumes_and_summarizes(corpus_dir, cache_dir, tmp_path, capsys):
  out = tmp_path / 'scaling'
  argv = [
    '--preset', 'tiny', '--out', str(out), '--text', str(corpus_dir),
    '--cache-dir', str(cache_dir), '--checkpoint-dir', str(tmp_path / 'checkpoints'),
  ]  # fmt: skip
  result = run.main(argv)
  saved = results.read_json(out / 'scaling.json')
  assert saved['tables'] == result['tables']
  sweep = SWEEPS['tiny']
  assert list(saved['points']) == [p.name for p in sweep.points()]
  for name, point in saved['points'].items():
    assert point['status'] == 'complete', name
    assert point['paired']['adamw']['seeds'] == [0, 1]
    for setup, best in point['best'].items():
      assert best['best_lr'] in best['grid']
      assert best['seeds'] == [0, 1], (name, setup)
    runs = load_saved_runs(out / name / 'runs')
    assert len(runs) == point['runs'] and all(r['train_time_s'] > 0 for r in runs)
    results.read_json(out / name / 'bench.json')
  muon = saved['points']['t16-b2']['paired_muon']['adamw+muon']
  assert muon['seeds'] == [0, 1] and muon['final_val_loss']['verdict'] != 'undetermined'
  # At t16-b2 the tables' own rate is swept too, the body at the best rate of Adam tables.
  point = saved['points']['t16-b2']
  rates = point['table_rates']
  assert rates['status'] == 'complete'
  assert rates['pair_status'] == {'adamw': 'complete', 'adamw+muon': 'complete'}
  assert set(rates['best']) == {'ember', 'adamw', 'ember+muon', 'adamw+muon'}
  for setup, best in rates['best'].items():
    adam = 'adamw+muon' if setup.endswith('+muon') else 'adamw'
    assert best['body_lr'] == point['best'][adam]['best_lr']
    assert best['best_table_lr'] in best['grid'] and best['seeds'] == [0, 1]
    assert best['ratio'] == best['best_table_lr'] / best['body_lr']
  for adam in ('adamw', 'adamw+muon'):
    assert rates['paired'][adam]['seeds'] == [0, 1]
  body_lr = rates['best']['adamw']['body_lr']
  reused = [
    r for r in load_saved_runs(out / 't16-b2' / 'runs')
    if r['setup'] in ('ember', 'adamw') and r['lr'] == body_lr
  ]  # fmt: skip
  rate_runs = load_saved_runs(out / 't16-b2' / TABLE_RATES / 'runs')
  assert reused and all(run in rate_runs for run in reused)  # Rate 1: the lr sweep's own runs.
  assert "### Each setup's tables at their own rate" in (out / 'scaling.md').read_text()
  for png in ('gap_vs_params', 'gap_vs_batch', 'best_lr_vs_batch', 'curves_extremes'):
    assert (out / f'{png}.png').stat().st_size > 10_000
  assert '### Beside a Muon body' in (out / 'scaling.md').read_text()

  # A second call trains nothing; a lost run is trained again, bitwise as before.
  runs_dir = out / 't32-b2' / 'runs'
  lost = sorted(runs_dir.glob('ember-*seed1.json'))[0]
  before = json.loads(lost.read_text())
  lost.unlink()
  capsys.readouterr()
  again = run.main(argv)
  printed = capsys.readouterr().out
  rate_runs = len(load_saved_runs(out / 't16-b2' / TABLE_RATES / 'runs'))
  finished = sum(p['runs'] for p in saved['points'].values()) + rate_runs
  assert printed.count('finished earlier') == finished - 1
  after = json.loads(lost.read_text())
  assert after['params_sha256'] == before['params_sha256']
  assert after['final_val_loss'] == before['final_val_loss']
  assert again['tables'] == result['tables'].replace(
    f'{result["train_time_s"] / 3600:.2f} h', f'{again["train_time_s"] / 3600:.2f} h'
  )

  summary = run.main(['--preset', 'tiny', '--out', str(out), '--summarize'])
  assert summary['points'] == again['points']


def test_setups_narrow_the_points_and_drop_those_left_empty():
  sweep = SWEEPS['tiny']
  points = config.selected_points(sweep, None, ('adamw+muon',))
  assert [(p.name, p.setups) for p in points] == [('t16-b2', ('adamw+muon',))]
  every = config.selected_points(sweep, ['t32-b2'], None)
  assert every[0].setups == sweep.setups


def test_bad_setups_are_one_line_on_stderr(capsys, tmp_path):
  argv = ['--preset', 'tiny', '--out', str(tmp_path), '--points', 't32-b2']
  with pytest.raises(SystemExit) as exit_info:
    run.main([*argv, '--setups', 'ember+muon'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1
  assert "--setups: 'ember+muon' is not a setup of the points chosen; choose from adamw" in err


def test_bad_points_are_one_line_on_stderr(capsys, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    run.main(['--preset', 'tiny', '--out', str(tmp_path), '--points', 'x9-b3'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1
  assert "--points: unknown point 'x9-b3'; choose from t16-b2 t32-b2 t16-b4" in err

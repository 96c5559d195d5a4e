"""``python -m models.bench.muon_tables`` at the tiny preset: its three stages, read-back,
summaries and refusals."""

from __future__ import annotations

import pytest

from models.bench import muon_tables
from models.reporting import muon_tables as report
from models.reporting import results as results_lib

pytestmark = pytest.mark.slow

VARIANTS = ('adamw+muon', 'ember+muon', 'ember,head=adamw,head_lr=4+muon', 'ember,b2=0.9+muon')


def _args(corpus_dir, cache_dir, root, *more):
  return [
    '--preset', 'tiny', '--text', str(corpus_dir), '--cache-dir', str(cache_dir),
    '--variants', *VARIANTS, '--batch-size', '8', '--trend-batches', '4', '--steps', '4',
    '--warmup-steps', '1', '--eval-every', '2', '--eval-batches', '2', '--lrs', '0.01', '0.02',
    '--extend', '0', '--best-seeds', '1', '--finalists', '1', '--out', str(root / 'out'),
    '--checkpoint-dir', str(root / 'checkpoints'), '--no-progress', *more,
  ]  # fmt: skip


@pytest.fixture(scope='module')
def finished(corpus_dir, cache_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp('muon_tables')
  args = _args(corpus_dir, cache_dir, root)
  return args, root / 'out', muon_tables.main(args)


def test_the_stages_run_variants_then_finalists_then_the_batch_trend(finished):
  _, out, results = finished
  saved = results_lib.read_json(out / 'muon_tables.json')  # Strict JSON, or this raises.
  for name in ('muon_tables.md', 'curves.png', 'batch_trend.png'):
    assert (out / name).exists(), name
  large, small = saved['batches']['8'], saved['batches']['4']
  assert sorted(large['best']) == sorted(VARIANTS)
  finalist = report.best_variant(report.load_runs(out, 8), VARIANTS)
  for setup, entry in large['best'].items():
    # The baselines and one finalist (the best Ember-input variant on seed 0) get seed 1.
    chosen = setup in ('adamw+muon', 'ember+muon') or setup == finalist
    assert entry['seeds'] == ([0, 1] if chosen else [0]), setup
    assert [step for step, _ in entry['val_curve']] == [0, 2, 4]
    assert set(large['grid'][setup]) == {'0.01', '0.02'}
  # The trend: the baselines and the finalist, their rates scaled from batch 8's, 2 seeds.
  assert sorted(small['best']) == sorted({'adamw+muon', 'ember+muon', finalist})
  for setup, entry in small['best'].items():
    scaled = float(f'{large["best"][setup]["best_lr"] * 0.5 ** (1 / 3):.3g}')
    assert entry['seeds'] == [0, 1] and list(small['grid'][setup]) == [str(scaled)], setup
  assert set(large['versus_adam']) == set(VARIANTS) - {'adamw+muon'}
  # Adam on the head keeps its two moments: more table state than Ember's alone.
  best = large['best']
  assert (
    best['ember,head=adamw,head_lr=4+muon']['table_state_bytes']
    > best['ember+muon']['table_state_bytes']
  )
  assert 'minus adamw+muon' in (out / 'muon_tables.md').read_text()


def test_the_body_rate_follows_the_batch(finished):
  _, out, _ = finished
  assert {r['lr'] for r in report.load_runs(out, 4)} == {0.0127}  # 0.016 * 0.5 ** (1 / 3)
  assert {r['lr'] for r in report.load_runs(out, 8)} == {0.016}


def test_the_same_command_reads_every_run_back(finished):
  args, out, results = finished
  runs = sorted((out / 'b8' / 'runs').glob('*.json'))
  again = muon_tables.main(args)
  assert sorted((out / 'b8' / 'runs').glob('*.json')) == runs
  # Compared as strict JSON writes them: a one-seed interval is NaN, which equals nothing.
  expected = results_lib.dumps(results['batches'])
  assert results_lib.dumps(again['batches']) == expected
  assert results_lib.dumps(muon_tables.main([*args, '--summarize'])['batches']) == expected


@pytest.mark.parametrize(
  ('more', 'message'),
  [
    (['--variants', 'ember+muon', 'sgd+muon'], "--variants: setup 'sgd+muon'"),
    (['--variants', 'adamw+muon', 'ember+muon', 'ember,b2=0.990+muon'], 'write'),
    (['--variants', 'ember+muon'], 'must include the baseline adamw+muon'),
    (['--batch-size', '8', '--trend-batches', '8'], 'must be distinct sizes'),
    (['--lrs', '0'], '--lrs must be positive'),
  ],
)
def test_bad_settings_are_refused_before_anything_runs(refused, tmp_path, more, message):
  args = ['--out', str(tmp_path / 'out'), '--checkpoint-dir', str(tmp_path / 'ck'), *more]
  refused(muon_tables.main, args, muon_tables.PROG, message)
  assert not (tmp_path / 'out').exists()

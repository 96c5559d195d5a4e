"""``python -m models.bench.ngram`` at the tiny preset: runs, read-back, summaries, refusals."""

from __future__ import annotations

import pytest

from models.bench import ngram
from models.reporting import results as results_lib

pytestmark = pytest.mark.slow


def _args(corpus_dir, cache_dir, root, *more):
  return [
    '--preset', 'tiny', '--text', str(corpus_dir), '--cache-dir', str(cache_dir),
    '--log-rows', '6', '8', '--long-log-rows', '8', '--tables', 'ember', 'adamw',
    '--dense-max-log-rows', '6', '--long-tables', 'ember', '--lrs', '0.01', '--extend', '0',
    '--best-seeds', '1',
    '--steps', '4', '--long-steps', '6', '--time-steps', '2', '--time-passes', '2',
    '--out', str(root / 'out'),
    '--checkpoint-dir', str(root / 'checkpoints'), '--no-progress', *more,
  ]  # fmt: skip


@pytest.fixture(scope='module')
def finished(corpus_dir, cache_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp('ngram')
  args = _args(corpus_dir, cache_dir, root)
  return args, root / 'out', ngram.main(args)


def test_every_size_and_optimizer_runs_against_the_model_without_a_table(finished):
  _, out, results = finished
  saved = results_lib.read_json(out / 'bench_ngram.json')  # Strict JSON, or this raises.
  for name in ('bench_ngram.md', 'loss_vs_rows.png', 'loss_vs_time.png'):
    assert (out / name).exists(), name
  short, long = saved['lengths']['4'], saved['lengths']['6']
  # Dense AdamW only up to --dense-max-log-rows; sparse Ember at every size.
  assert list(short['best']) == ['none', 'adamw@2^6', 'ember@2^6', 'ember@2^8']
  assert list(long['best']) == ['none', 'ember@2^8']
  for setup, entry in short['best'].items():
    assert entry['seeds'] == [0, 1]
    assert entry['step_peak_bytes'] > 0 and entry['finite'], setup
  assert (
    short['best']['ember@2^8']['table_state_bytes']
    < short['best']['adamw@2^6']['table_state_bytes']
  )
  assert set(short['versus_none']) == {'ember@2^6', 'adamw@2^6', 'ember@2^8'}
  assert list(short['peers']['ember@2^6']) == ['adamw@2^6']


def test_every_setup_is_timed_side_by_side(finished):
  _, out, results = finished
  timing = results_lib.read_json(out / 'timing.json')
  short = results['lengths']['4']['best']
  assert set(timing['seconds_per_step']) == set(short)
  for setup, passes in timing['passes'].items():
    assert len(passes) == 2 and timing['seconds_per_step'][setup] == min(passes) > 0
    assert short[setup]['timed_step_s'] == timing['seconds_per_step'][setup]
  # No row falls back to its runs' own step time (marked *).
  assert '×)* |' not in (out / 'bench_ngram.md').read_text()


def test_the_same_command_reads_every_run_back(finished, capsys):
  args, out, results = finished
  runs = sorted((out / 'runs' / 'steps4').glob('*.json'))
  timing = (out / 'timing.json').read_text()
  again = ngram.main(args)
  assert (out / 'timing.json').read_text() == timing  # Nothing timed again.
  assert sorted((out / 'runs' / 'steps4').glob('*.json')) == runs
  assert again['lengths'] == results['lengths']
  assert 'finished earlier' in capsys.readouterr().out
  assert ngram.main([*args, '--summarize'])['lengths'] == results['lengths']


@pytest.mark.parametrize(
  ('more', 'message'),
  [
    (['--tables', 'frozen'], "--tables: unknown table optimizer 'frozen'"),
    (['--log-rows', '0'], '--log-rows [0] must be distinct sizes'),
    (['--long-log-rows', '10'], '--long-log-rows [10] are not among --log-rows'),
    (['--lrs', '0'], '--lrs must be positive'),
    (['--time-passes', '0'], '--time-steps must be >= 0 and --time-passes >= 1'),
  ],
)
def test_bad_input_is_one_line_before_anything_trains(
  corpus_dir, cache_dir, tmp_path, refused, more, message
):
  refused(ngram.main, _args(corpus_dir, cache_dir, tmp_path, *more), ngram.PROG, message)
  assert not (tmp_path / 'out').exists()

"""``python -m models.bench.sparse``: its command line and what one tiny run reports."""

import json

import pytest

from models.bench import sparse as bench_sparse
from models.reporting import results as results_lib


@pytest.mark.parametrize(
  'argv, complaint',
  [
    (['--log-rows', '0'], '--log-rows (0,) must be sizes from 1 to 31'),
    (['--zipf', '1'], '--zipf 1.0 must be above 1'),
    (['--rounds', '0'], '--rounds 0 must be at least 1'),
    (['--min-seconds', '-1'], '--min-seconds -1.0 must be at least 0'),
    (['--optimizers', 'sgd'], "argument --optimizers: invalid choice: 'sgd'"),
    (['--speed', 'max'], 'unrecognized arguments: --speed max'),
  ],
)
def test_bad_input_is_one_line_on_stderr(argv, complaint, refused):
  refused(bench_sparse.main, argv, bench_sparse.PROG, complaint)


def test_ids_are_zipf_ranks_hashed_over_the_rows():
  config = bench_sparse.SparseBenchConfig()
  ids = [b.reshape(-1).tolist() for b in bench_sparse.batches(config, 1 << 20, 3)]
  assert all(len(b) == config.batch * config.seq_len for b in ids)
  assert all(0 <= i < 1 << 20 for b in ids for i in b)
  # Repeated tokens (Zipf), spread over the table (hashed): not the first rows only.
  assert len(set(ids[0])) < len(ids[0]) / 1.5
  assert max(ids[0]) > 1 << 19


def test_a_tiny_run_measures_every_optimizer_and_writes_strict_json(tmp_path):
  argv = ['--log-rows', '8', '10', '--rounds', '1', '--min-seconds', '0', '--width', '16']
  argv += ['--out', str(tmp_path)]
  results = bench_sparse.main(argv)
  saved = results_lib.read_json(tmp_path / 'bench_sparse.json')
  assert saved['measurements'] == json.loads(json.dumps(results['measurements']))
  found = {(m['optimizer'], m['rows']) for m in results['measurements']}
  assert found == {(n, r) for n in bench_sparse.OPTIMIZERS for r in (256, 1024)}
  assert all(m['median_ms'] > 0 and m['peak_bytes'] > 0 for m in results['measurements'])
  assert set(results['ratios']['1024']) == {
    f'{name}/sparse_ember {what}'
    for name in bench_sparse.OPTIMIZERS[1:]
    for what in ('time', 'peak memory')
  }
  assert results['environment']['cpu_model']
  assert (tmp_path / 'bench_sparse.md').read_text().startswith('| rows | touched |')


def test_a_step_that_would_not_fit_is_skipped_and_says_why(monkeypatch):
  monkeypatch.setattr(bench_sparse, 'free_memory_bytes', lambda: 1)
  config = bench_sparse.SparseBenchConfig(width=8, rounds=1, out='')
  result = bench_sparse.bench_one(config, 'adamw', 1 << 8)
  assert 'median_ms' not in result and 'does not fit this machine' in result['skipped']

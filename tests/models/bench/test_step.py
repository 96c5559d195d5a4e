"""``python -m models.bench.step``: its command line and what one small run reports."""

import json

import pytest

from models.bench import step as bench_step
from models.reporting import results as results_lib


@pytest.mark.parametrize(
  'argv, complaint',
  [
    (['--shapes', '12x'], "argument --shapes: '12x' is not a table shape"),
    (['--shapes', '0x8'], "argument --shapes: '0x8' is not a table shape"),
    (['--rounds', '0'], "argument --rounds: '0' is not a positive whole number"),
    (['--dtypes', 'int8'], "argument --dtypes: invalid choice: 'int8'"),
    (['--train-preset', 'huge'], "argument --train-preset: invalid choice: 'huge'"),
    (['--speed', 'max'], 'unrecognized arguments: --speed max'),
  ],
)
def test_bad_input_is_one_line_on_stderr(argv, complaint, capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_step.main(argv)
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  assert out == '' and err.count('\n') == 1 and complaint in err, err
  assert err.startswith('python -m models.bench.step: error: ')


def test_an_out_path_that_is_a_file_is_refused(tmp_path, capsys):
  (tmp_path / 'taken').write_text('')
  with pytest.raises(SystemExit) as exit_info:
    bench_step.main(['--out', str(tmp_path / 'taken')])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert 'is a file, not a folder' in err and err.count('\n') == 1


def test_help_shows_every_default(capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_step.main(['--help'])
  assert exit_info.value.code == 0
  text = ' '.join(capsys.readouterr().out.split())
  for flag in ('--shapes', '--dtypes', '--rounds', '--train-preset', '--out'):
    assert flag in text
  assert text.count('(default:') == 5


def test_a_small_run_reports_every_table_optimizer(tmp_path, capsys):
  argv = ['--shapes', '256x64', '2x64x32', '--dtypes', 'float32', 'bfloat16', '--rounds', '1']
  results = bench_step.main([*argv, '--train-preset', '', '--out', str(tmp_path)])
  saved = results_lib.read_json(tmp_path / 'bench_step.json')
  assert saved['tables'] == json.loads(json.dumps(results['tables']))
  assert [(t['shape'], t['dtype']) for t in results['tables']] == [
    ([256, 64], 'float32'),
    ([256, 64], 'bfloat16'),
    ([2, 64, 32], 'float32'),
    ([2, 64, 32], 'bfloat16'),
  ]
  for table in results['tables']:
    names = [m['optimizer'] for m in table['measurements']]
    assert names == [*bench_step.TABLE_OPTIMIZERS, 'sgd']
    assert all(m['median_ms'] > 0 for m in table['measurements'])
    assert set(table['ratios']) == set(bench_step.RATIOS)
  out = capsys.readouterr().out
  assert '| table | dtype | ember ms |' in out and '| 2×64×32 | bfloat16 |' in out


@pytest.mark.slow
def test_the_whole_step_comparison_runs_the_main_jobs_setups():
  times = bench_step.bench_train_step('tiny', rounds=1)
  assert set(times) == {'adamw', 'ember'} and all(t > 0 for t in times.values())

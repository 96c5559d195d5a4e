"""``python -m models.bench_step``: its command line and what one small run reports."""

import json

import pytest

import ember_optax
from models.bench import step as bench_step


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
    bench_step.parse_args(argv)
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  assert out == '' and err.count('\n') == 1 and complaint in err, err
  assert err.startswith('python -m models.bench_step: error: ')


def test_an_out_path_that_is_a_file_is_refused(tmp_path, capsys):
  (tmp_path / 'taken').write_text('')
  with pytest.raises(SystemExit):
    bench_step.parse_args(['--out', str(tmp_path / 'taken')])
  assert 'is a file, not a folder' in capsys.readouterr().err


def test_help_shows_every_default(capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_step.parse_args(['--help'])
  assert exit_info.value.code == 0
  text = ' '.join(capsys.readouterr().out.split())
  for flag in ('--shapes', '--dtypes', '--rounds', '--train-preset', '--out'):
    assert flag in text
  assert text.count('(default:') == 5


def test_a_small_run_reports_ember_with_and_without_its_kernel(tmp_path, capsys):
  results = bench_step.main(
    [
      '--shapes',
      '256x64',
      '2x64x32',
      '--dtypes',
      'float32',
      'bfloat16',
      '--rounds',
      '1',
      '--train-preset',
      '',
      '--out',
      str(tmp_path),
    ]
  )
  assert json.loads((tmp_path / 'bench_step.json').read_text()) == results
  assert results['cpu_kernel']['available'] == ember_optax.cpu_kernel_status().available
  assert [(t['shape'], t['dtype']) for t in results['tables']] == [
    ([256, 64], 'float32'),
    ([256, 64], 'bfloat16'),
    ([2, 64, 32], 'float32'),
    ([2, 64, 32], 'bfloat16'),
  ]
  names = ['ember', 'ember_xla', 'adamw', 'adafactor', 'sgd']
  if not results['cpu_kernel']['available']:
    names.remove('ember_xla')
  for table in results['tables']:
    assert [m['optimizer'] for m in table['measurements']] == names
    assert all(m['median_ms'] > 0 for m in table['measurements'])
    assert set(table['ratios']) == {r for r in bench_step.RATIOS if r.split('/')[0] in names}
  out = capsys.readouterr().out
  assert '| table | dtype | ember ms |' in out and '| 2×64×32 | bfloat16 |' in out
  # The benchmark leaves the kernel switched as it found it.
  assert ember_optax.cpu_kernel_status().enabled

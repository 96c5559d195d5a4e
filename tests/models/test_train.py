"""The training programs' command lines: help, errors as one line, the default output folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest

from models import train as train_lib
from models.bench import quality as bench_quality
from models.reporting import results as results_lib

ROOT = Path(__file__).resolve().parents[2]


def _tiny(corpus_dir, cache_dir, *more):
  return [
    '--preset',
    'tiny',
    '--text',
    str(corpus_dir),
    '--cache-dir',
    str(cache_dir),
    '--no-progress',
    *more,
  ]


@pytest.mark.parametrize(
  'args, message',
  [
    (['--steps', '0'], '--steps must be an integer >= 1, got 0'),
    (['--lr', '-0.001'], '--lr must be a finite number in (0, inf), got -0.001'),
    (['--lr', 'nan'], '--lr must be a finite number'),
    (['--lr-for', 'sgd=1e-3'], "--lr-for: setup 'sgd': unknown table optimizer 'sgd'"),
    (['--lr-for', 'ember'], 'expects NAME=VALUE'),
    (['--setups', 'ember+lion'], "--setups: setup 'ember+lion': unknown body optimizer 'lion'"),
    (['--setups', 'adamw', '--lr-for', 'ember=1e-3'], 'not among --setups adamw'),
    (['--b2', '1.0'], '--b2 must be a finite number in [0, 1)'),
    (['--table-b2', '-0.5'], '--table-b2 must be a finite number in [0, 1)'),
    (['--clip-norm', '-1'], '--clip-norm'),
    (['--seeds', '0', '0'], '--seeds must not repeat'),
    (['--preset', 'huge'], "invalid choice: 'huge'"),
    (['--text'], 'expected one argument'),
    (['--text', ''], '--text is empty'),
    (['--text', '/no/such/folder'], '--text /no/such/folder: no such file or folder'),
    (['--vocab-size', '100'], '--vocab-size must be an integer >= 257'),
    (['--seq-len', '100'], 'too few for one sequence of --seq-len 100'),
  ],
)
def test_bad_input_is_one_line_on_stderr(args, message, tmp_path, refused, monkeypatch):
  monkeypatch.chdir(tmp_path)
  small = tmp_path / 'small'
  small.mkdir()
  for i in range(3):  # A real but tiny corpus: about 60 tokens per side.
    (small / f'f{i}.txt').write_text('def f(x):\n    return x + 1\n' * 4)
  base = [
    '--preset',
    'tiny',
    '--text',
    str(small),
    '--cache-dir',
    str(tmp_path / 'cache'),
    '--no-progress',
  ]
  refused(train_lib.main, [*base, *args], 'python -m models.train', message)
  assert not (tmp_path / 'out').exists()  # Nothing trained, nothing written.


def test_the_command_line_has_no_traceback(tmp_path):
  """The same, through a real process: one line, exit status 2, no traceback."""
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  proc = subprocess.run(
    [sys.executable, '-m', 'models.train', '--steps', '0'],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    'python -m models.train: error: --steps must be an integer >= 1, got 0'
  ]


def test_bench_quality_rejects_bad_grids(capsys):
  for args, message in (
    (['--lrs', '1e-3', '-1'], '--lrs must be positive'),
    (['--lr', '1e-3'], 'drop --lr'),
    (['--extend', '-1'], '--extend must be an integer >= 0'),
  ):
    with pytest.raises(SystemExit) as exit_info:
      bench_quality.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err, err


def test_default_output_folder(corpus_dir, cache_dir, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  results = train_lib.main(_tiny(corpus_dir, cache_dir, '--setups', 'ember', '--steps', '3'))
  (folder,) = (tmp_path / 'out' / 'train').iterdir()
  assert folder.name[:8].isdigit() and (folder / 'loss_curves.png').exists()
  assert json.loads((folder / 'results.json').read_text())['runs'] == json.loads(
    results_lib.dumps(results['runs'])
  )
  assert str(Path('out') / 'train' / folder.name / 'results.json') in capsys.readouterr().out


def test_cli_flags_reach_the_run(corpus_dir, cache_dir, tmp_path):
  results = train_lib.main(
    _tiny(
      corpus_dir,
      cache_dir,
      '--setups',
      'adamw',
      '--steps',
      '4',
      '--lr-for',
      'adamw=3e-3',
      '--table-lr',
      '1e-2',
      '--clip-norm',
      '0.5',
      '--no-unigram-bias',
      '--out',
      str(tmp_path),
    )
  )
  assert results['data']['corpus'] == str(corpus_dir)
  run = results['runs'][0]
  assert (run['lr'], run['table_lr']) == (3e-3, 1e-2)
  saved = json.loads((tmp_path / 'results.json').read_text())['config']
  assert saved['clip_norm'] == 0.5 and saved['unigram_bias'] is False
  assert saved['lr_for'] == {'adamw': 3e-3}

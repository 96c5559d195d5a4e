"""The command-line kit of every program: flags from a config, help with defaults, one-line errors.

Every program builds its parser with ``cli.parser_for`` and runs with ``cli.run_command``, so the
contract is tested here once, on a config of every kind of field, instead of in each program.
"""

from __future__ import annotations

import dataclasses

import pytest

from models import cli
from models.cli import option


@dataclasses.dataclass(frozen=True)
class Settings:
  steps: int = option(10, 'optimizer steps')
  rate: float = option(1e-3, 'learning rate')
  names: tuple[str, ...] = option(('a', 'b'), 'names to use', choices=('a', 'b', 'c'))
  rates: dict[str, float] = option({'ember': 3e-3}, 'rate per setup, NAME=VALUE')
  out: str | None = option(None, 'output folder')
  progress: bool = option(True, 'show progress bars')
  seed: int = option(0, 'seed (default: the first)')


def _help(capsys) -> str:
  with pytest.raises(SystemExit) as exit_info:
    cli.parser_for(Settings, 'prog', 'A program.').parse_args(['--help'])
  assert exit_info.value.code == 0
  return ' '.join(capsys.readouterr().out.split())


def test_help_states_every_flags_default(capsys):
  text = _help(capsys)
  for expected in (
    '--steps STEPS optimizer steps (default: 10)',
    'learning rate (default: 0.001)',
    "names to use (default: ('a', 'b'))",
    "rate per setup, NAME=VALUE (default: {'ember': 0.003})",
    'output folder (default: None)',
    'show progress bars (default: True)',
  ):
    assert expected in text, text
  # A help text that states its default itself is not given a second one.
  assert 'seed (default: the first)' in text and text.count('(default:') == 7


def test_flags_parse_back_to_the_config():
  parser = cli.parser_for(Settings, 'prog', 'A program.')
  args = parser.parse_args(
    ['--steps', '3', '--names', 'c', 'a', '--rates', 'adamw=1e-2', '--no-progress', '--out', 'x']
  )
  assert cli.from_args(args, Settings) == Settings(
    steps=3, names=('c', 'a'), rates={'adamw': 1e-2}, progress=False, out='x'
  )
  assert cli.from_args(parser.parse_args([]), Settings) == Settings()


@pytest.mark.parametrize(
  'argv, complaint',
  [
    (['--steps', 'many'], "argument --steps: invalid int value: 'many'"),
    (['--names', 'z'], "argument --names: invalid choice: 'z'"),
    (['--rates', 'ember'], 'expects NAME=VALUE, such as ember=3e-3'),
    (['--speed', 'max'], 'unrecognized arguments: --speed max'),
  ],
)
def test_bad_flags_are_one_line_on_stderr_and_exit_2(argv, complaint, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.parser_for(Settings, 'prog', 'A program.').parse_args(argv)
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  assert out == '' and err.count('\n') == 1, err
  assert err.startswith('prog: error: ') and complaint in err and err.endswith('(see --help)\n')


@pytest.mark.parametrize(
  'error, code, line',
  [
    (cli.ConfigError('--steps must be positive'), 2, 'prog: error: --steps must be positive\n'),
    (FileNotFoundError('no such file: x'), 2, 'prog: error: no such file: x\n'),
    (KeyboardInterrupt(), 130, 'prog: interrupted'),
  ],
)
def test_run_command_ends_user_errors_in_one_line_without_a_traceback(error, code, line, capsys):
  def main():
    raise error

  with pytest.raises(SystemExit) as exit_info:
    cli.run_command('prog', main)
  assert exit_info.value.code == code
  err = capsys.readouterr().err
  assert err.startswith(line) and err.count('\n') == 1, err


def test_run_command_lets_a_bug_raise():
  def main():
    raise ZeroDivisionError('a bug, not a user error')

  with pytest.raises(ZeroDivisionError):
    cli.run_command('prog', main)
  assert cli.run_command('prog', lambda: 42) == 42

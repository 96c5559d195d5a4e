"""The command line of the training programs, derived from ``TrainConfig``'s fields.

Every field becomes a flag (``batch_size`` -> ``--batch-size``) with the field's help text and
default; ``config_from_args`` maps the parsed flags back. Bad input ends in one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import dataclasses
import sys
import typing
from typing import Any, NoReturn

from models.config import ConfigError, TrainConfig, flag
from models.data import CorpusError

# What a run may report as one line instead of a traceback: settings that cannot be run, a
# corpus that cannot be trained on, and files that cannot be read or written.
USER_ERRORS = (ConfigError, CorpusError, OSError)


class Parser(argparse.ArgumentParser):
  """An ``ArgumentParser`` whose errors are one line on stderr (exit status 2)."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def _setup_value(text: str) -> tuple[str, float]:
  name, sep, value = text.partition('=')
  try:
    if not sep:
      raise ValueError
    return name, float(value)
  except ValueError:
    message = f'expects SETUP=LR, such as ember=3e-3, got {text!r}'
    raise argparse.ArgumentTypeError(message) from None


def _with_default(help_text: str) -> str:
  return help_text if 'default' in help_text else f'{help_text} (default: %(default)s)'


def add_config_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
  """Adds a flag for every ``TrainConfig`` field not in ``skip``."""
  hints = typing.get_type_hints(TrainConfig)
  for field in dataclasses.fields(TrainConfig):
    if field.name in skip:
      continue
    meta = dict(field.metadata)
    help_text = meta.pop('help')
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    hint = hints[field.name]
    kwargs: dict[str, Any] = {'default': default, **meta}
    if hint is bool:
      kwargs |= {'action': argparse.BooleanOptionalAction}
    elif typing.get_origin(hint) is dict:
      kwargs |= {'nargs': '+', 'type': _setup_value}
    elif typing.get_origin(hint) is tuple:
      item = typing.get_args(hint)[0]
      kwargs |= {'nargs': '+', 'type': item}
    else:
      scalar = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
      kwargs |= {'type': scalar}
    action = parser.add_argument(flag(field.name), **kwargs)
    # Some Pythons' BooleanOptionalAction add the default to the help themselves.
    action.help = help_text if 'default' in (action.help or '') else _with_default(help_text)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
  """The ``TrainConfig`` of parsed flags (fields without a flag keep their defaults)."""
  values = {}
  for field in dataclasses.fields(TrainConfig):
    if not hasattr(args, field.name):
      continue
    value = getattr(args, field.name)
    if isinstance(value, list) and value and isinstance(value[0], tuple):
      value = dict(value)
    elif isinstance(value, list):
      value = tuple(value)
    values[field.name] = value
  return TrainConfig(**{**values, **overrides})


def run_command(prog: str, main: Callable[[], Any]) -> Any:
  """Runs ``main``; a user error or an interruption ends the process with one line on stderr."""
  try:
    return main()
  except USER_ERRORS as error:
    print(f'{prog}: error: {error}', file=sys.stderr)
    raise SystemExit(2) from None
  except KeyboardInterrupt:
    print(f'{prog}: interrupted (with --checkpoint-dir, the same command resumes)', file=sys.stderr)
    raise SystemExit(130) from None

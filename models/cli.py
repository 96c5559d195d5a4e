"""The command-line kit of every program in ``models``: flags derived from a config dataclass.

A program's settings are one frozen dataclass whose fields are declared with :func:`option` (a
default, a help text, argparse extras). :func:`add_arguments` turns every field into a flag
(``batch_size`` -> ``--batch-size``) with its help and default, :func:`from_args` maps the parsed
flags back to the dataclass, and :func:`run_command` runs the program so that bad input ends in
one line on stderr and exit status 2, never a traceback.

Example:
  >>> import dataclasses
  >>> @dataclasses.dataclass(frozen=True)
  ... class Settings:
  ...   steps: int = option(10, 'optimizer steps')
  ...   names: tuple[str, ...] = option(('a',), 'names to use')
  >>> parser = Parser(prog='demo')
  >>> add_arguments(parser, Settings)
  >>> from_args(parser.parse_args(['--steps', '3', '--names', 'x', 'y']), Settings)
  Settings(steps=3, names=('x', 'y'))
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import dataclasses
import sys
import types
import typing
from typing import Any, NoReturn


class ConfigError(ValueError):
  """A setting or an input that cannot be run; the message names it and what to change."""


def option(default: Any, help: str, **argparse_extras: Any) -> Any:  # noqa: A002 (argparse's name)
  """A config field with its command-line help (and argparse extras, e.g. ``choices``)."""
  metadata = {'help': help, **argparse_extras}
  if isinstance(default, dict):
    return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
  """The command-line flag of a config field."""
  return '--' + name.replace('_', '-')


class Parser(argparse.ArgumentParser):
  """An ``ArgumentParser`` whose errors are one line on stderr (exit status 2)."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def _name_value(text: str) -> tuple[str, float]:
  name, sep, value = text.rpartition('=')  # A setup's name may hold '=' (ember,b2=0.99).
  try:
    if not sep:
      raise ValueError
    return name, float(value)
  except ValueError:
    message = f'expects NAME=VALUE, such as ember=3e-3, got {text!r}'
    raise argparse.ArgumentTypeError(message) from None


def _with_default(help_text: str) -> str:
  return help_text if 'default' in help_text else f'{help_text} (default: %(default)s)'


def add_arguments(
  parser: argparse.ArgumentParser, config_class: type, skip: Sequence[str] = ()
) -> None:
  """Adds a flag for every field of the dataclass ``config_class`` not in ``skip``."""
  hints = typing.get_type_hints(config_class)
  for field in dataclasses.fields(config_class):
    if field.name in skip:
      continue
    extras = dict(field.metadata)
    help_text = extras.pop('help')
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    hint = hints[field.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
      hint = next(t for t in typing.get_args(hint) if t is not type(None))
    kwargs: dict[str, Any] = {'default': default}
    if hint is bool:
      kwargs |= {'action': argparse.BooleanOptionalAction}
    elif typing.get_origin(hint) is dict:
      kwargs |= {'nargs': '+', 'type': _name_value}
    elif typing.get_origin(hint) is tuple:
      kwargs |= {'nargs': '+', 'type': typing.get_args(hint)[0]}
    else:
      kwargs |= {'type': hint}
    action = parser.add_argument(flag(field.name), **(kwargs | extras))
    # Some Pythons' BooleanOptionalAction add the default to the help themselves.
    action.help = help_text if 'default' in (action.help or '') else _with_default(help_text)


def parser_for(config_class: type, prog: str, description: str, skip: Sequence[str] = ()) -> Parser:
  """A :class:`Parser` for program ``prog`` with a flag for every field of ``config_class``."""
  parser = Parser(prog=prog, description=description)
  add_arguments(parser, config_class, skip)
  return parser


def from_args(args: argparse.Namespace, config_class: type) -> Any:
  """The ``config_class`` of parsed flags (fields without a flag keep their defaults)."""
  hints = typing.get_type_hints(config_class)
  values = {}
  for field in dataclasses.fields(config_class):
    if not hasattr(args, field.name):
      continue
    value = getattr(args, field.name)
    if isinstance(value, list):
      value = dict(value) if typing.get_origin(hints[field.name]) is dict else tuple(value)
    values[field.name] = value
  return config_class(**values)


def run_command(prog: str, main: Callable[[], Any]) -> Any:
  """Runs ``main``; a user error or an interruption ends the process with one line on stderr.

  User errors are :class:`ConfigError` (settings or inputs that cannot be run) and ``OSError``
  (files that cannot be read or written).
  """
  try:
    return main()
  except (ConfigError, OSError) as error:
    print(f'{prog}: error: {error}', file=sys.stderr)
    raise SystemExit(2) from None
  except KeyboardInterrupt:
    print(f'{prog}: interrupted (with --checkpoint-dir, the same command resumes)', file=sys.stderr)
    raise SystemExit(130) from None

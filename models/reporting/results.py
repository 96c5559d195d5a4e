"""What a program writes: strict JSON results and the record of the environment they came from."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
from pathlib import Path
import platform
from typing import Any

import jax

import ember_optax
from models.cli import ConfigError


def strict(value: Any) -> Any:
  """``value`` with every non-finite float (an undefined statistic, a diverged loss) as ``None``.

  Example:
    >>> strict({'std': float('nan'), 'ci95': [1.0, float('inf')], 'n': 1})
    {'std': None, 'ci95': [1.0, None], 'n': 1}
  """
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {key: strict(item) for key, item in value.items()}
  if isinstance(value, list | tuple):
    return [strict(item) for item in value]
  return value


def dumps(value: Any, indent: int | None = 1) -> str:
  """Strict JSON (RFC 8259): ``null`` where a number is undefined, never ``NaN`` or ``Infinity``."""
  return json.dumps(strict(value), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 1) -> None:
  """Writes ``value`` to ``path`` as strict JSON, atomically (a reader never sees half a file)."""
  path = Path(path)
  tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
  tmp.write_text(dumps(value, indent))
  tmp.replace(path)


def write_report(folder: str | os.PathLike, stem: str, value: Any, markdown: str) -> Path:
  """Writes ``<stem>.json`` (strict) and ``<stem>.md`` into ``folder``, made if missing."""
  out = Path(folder)
  out.mkdir(parents=True, exist_ok=True)
  write_json(out / f'{stem}.json', value)
  (out / f'{stem}.md').write_text(markdown)
  return out


def read_json(path: str | os.PathLike) -> Any:
  """Reads a strict JSON file, as :func:`write_json` writes them.

  Raises:
    ConfigError: naming ``path``, if it is not JSON or holds ``NaN`` or ``Infinity`` (which
      strict JSON has no word for).
  """

  def reject(constant: str) -> Any:
    raise ValueError(f'{constant}, which strict JSON does not allow')

  try:
    return json.loads(Path(path).read_text(), parse_constant=reject)
  except ValueError as error:  # json.JSONDecodeError is a ValueError too.
    raise ConfigError(f'{path}: not strict JSON ({error})') from None


def cpu_model() -> str:
  """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def environment(corpus_cache: str | os.PathLike | None = None) -> dict:
  """What the numbers were measured with: versions, device, threads, corpus cache."""
  versions = {'python': platform.python_version(), 'ember_optax': ember_optax.__version__}
  for package in ('jax', 'jaxlib', 'optax', 'flax', 'numpy', 'orbax-checkpoint'):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  device = jax.devices()[0]
  return {
    'versions': versions,
    'device': str(device),
    'device_kind': device.device_kind,
    'device_count': jax.device_count(),
    'machine': f'{platform.machine()} {platform.processor()}'.strip(),
    'cpu_model': cpu_model(),
    'cpu_count': os.cpu_count(),
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'corpus_cache': str(corpus_cache) if corpus_cache is not None else None,
  }

"""The corpus's files: which files a corpus is made of, their train/validation split by path, and
reading and writing them safely."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
import sysconfig

from models.cli import ConfigError

# Folders of the stdlib that are not the standard library's own code: installed third-party
# packages, byte-code caches, CPython's regression-test suite (17 MB of tests, including files
# with deliberately broken syntax and odd encodings), and pydoc_data, whose topics.py is 740 KB
# of English prose from the documentation in one string (its unigram cross-entropy is 7.30
# nats against 6.60 for the code; it was 55% of the validation tokens).
_STDLIB_SKIP_DIRS = {'site-packages', 'dist-packages', '__pycache__'}
_STDLIB_SKIP_TOP = {'test', 'pydoc_data'}


class CorpusError(ConfigError):
  """A corpus that cannot be trained on; the message says what is wrong and what to do."""


def stdlib_root() -> Path:
  """The running interpreter's standard-library folder."""
  return Path(sysconfig.get_paths()['stdlib'])


def list_files(text: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
  """Returns the corpus root and its files' relative paths (POSIX style, sorted).

  Args:
    text: None for the default corpus (the stdlib's ``.py`` files, without ``site-packages``
      and the ``test`` package), else a file or a folder. In a folder every regular, non-hidden
      file is taken (recursively); files that are not text are skipped when read.
  """
  if text is None:
    root = stdlib_root()
    files = []
    for path in root.rglob('*.py'):
      rel = path.relative_to(root)
      if rel.parts[0] in _STDLIB_SKIP_TOP or _STDLIB_SKIP_DIRS & set(rel.parts):
        continue
      if path.is_file():
        files.append(rel.as_posix())
    return root, sorted(files)
  if not str(text).strip():
    raise CorpusError('--text is empty; give a text file or a folder of text files')
  path = Path(text).expanduser().resolve()
  if path.is_file():
    return path.parent, [path.name]
  if not path.is_dir():
    raise CorpusError(f'--text {text}: no such file or folder')
  files = []
  for p in path.rglob('*'):
    rel = p.relative_to(path)
    if p.is_file() and not any(part.startswith('.') for part in rel.parts):
      files.append(rel.as_posix())
  if not files:
    raise CorpusError(f'--text {text}: the folder has no (non-hidden) files')
  return path, sorted(files)


def path_fraction(rel_path: str) -> float:
  """Maps a relative path to a number in [0, 1) by SHA-256 (stable across machines)."""
  digest = hashlib.sha256(rel_path.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def split_files(files: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
  """Splits relative paths into (train, val) by their hash; deterministic and disjoint.

  With two files or more, both sides are kept non-empty: if the hash rule leaves one side empty,
  the file with the smallest (or largest) hash is moved across.
  """
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}')
  train = [f for f in files if path_fraction(f) >= val_fraction]
  val = [f for f in files if path_fraction(f) < val_fraction]
  if len(files) >= 2 and not val:
    first = min(files, key=path_fraction)
    train.remove(first)
    val = [first]
  if len(files) >= 2 and not train:
    last = max(files, key=path_fraction)
    val.remove(last)
    train = [last]
  return train, val


def read_text(path: Path) -> str | None:
  """Reads a file as UTF-8 text; None for a file that looks binary (it has a NUL byte)."""
  data = path.read_bytes()
  if b'\x00' in data:
    return None
  return data.decode('utf-8', errors='replace')


def write_atomic(path: Path, write) -> None:
  """Calls ``write(binary_file)`` on a temporary file, then renames it to ``path``."""
  tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
  with open(tmp, 'wb') as f:
    write(f)
  tmp.replace(path)

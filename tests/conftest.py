"""Fixtures shared by the tests of models/: a small real corpus and one tiny main-job run.

The training tests use a folder of a few stdlib modules (about 1 MB of real Python) and a
512-token vocabulary, so that they need no download and take seconds.
"""

from __future__ import annotations

from pathlib import Path
import shutil

import pytest

_CORPUS_MODULES = [
  "argparse.py", "ast.py", "calendar.py", "configparser.py", "csv.py", "dataclasses.py",
  "difflib.py", "enum.py", "fractions.py", "functools.py", "heapq.py", "inspect.py",
  "json/decoder.py", "json/encoder.py", "logging/__init__.py", "pathlib.py", "pprint.py",
  "shlex.py", "string.py", "textwrap.py", "typing.py", "zipfile.py",
]  # fmt: skip


@pytest.fixture(scope='session')
def corpus_dir(tmp_path_factory) -> Path:
  """A folder of text files (with a subfolder and a hidden file that must be ignored)."""
  from models.data import files as files_lib

  root = tmp_path_factory.mktemp('corpus')
  stdlib = files_lib.stdlib_root()
  for rel in _CORPUS_MODULES:
    dest = root / rel.replace('/', '_')
    if rel.startswith('json/'):
      dest = root / 'json' / Path(rel).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stdlib / rel, dest)
  (root / '.hidden').write_text('never read')
  return root


@pytest.fixture(scope='session')
def corpus_files() -> int:
  """How many files ``corpus_dir`` holds (the hidden one not counted)."""
  return len(_CORPUS_MODULES)


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp('cache')


@pytest.fixture(scope='session')
def tiny_config(corpus_dir, cache_dir):
  """The tiny preset on ``corpus_dir``, two seeds, no progress bars, nothing written."""
  from models.training.config import TrainConfig

  return TrainConfig(
    preset='tiny', seeds=(0, 1), text=str(corpus_dir), cache_dir=str(cache_dir), progress=False
  )


@pytest.fixture(scope='session')
def tiny_results(tiny_config, tmp_path_factory) -> tuple[dict, Path]:
  """One main-job run of the tiny preset, all three setups and two seeds, written to a folder."""
  import dataclasses

  from models import train as train_lib

  out = tmp_path_factory.mktemp('out')
  return train_lib.run(dataclasses.replace(tiny_config, out=str(out)), verbose=False), out


@pytest.fixture(scope='session')
def post_training_args(corpus_dir, cache_dir):
  """``post_training_args(root, *more)``: the flags the post-training programs' tests share.

  The tiny preset on ``corpus_dir``, its base model cached in ``root/pretrained`` (the cache of
  ``models.pretrain``), results in ``root/out``, then ``more``.
  """

  def args(root: Path, *more: str) -> list[str]:
    return [
      '--preset', 'tiny', '--text', str(corpus_dir), '--cache-dir', str(cache_dir),
      '--pretrained-dir', str(root / 'pretrained'), '--out', str(root / 'out'), *more,
    ]  # fmt: skip

  return args


@pytest.fixture
def refused(capsys):
  """``refused(main, argv, prog, message)``: ``main(argv)`` must end as a user error does.

  That is exit status 2 and one line on stderr, ``"<prog>: error: ..."`` containing
  ``message``, with no traceback; returns that line.
  """

  def check(main, argv, prog: str, message: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
      main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'{prog}: error: '), err
    assert message in err, err
    return err

  return check

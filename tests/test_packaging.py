"""What ships: a pure-Python wheel of the library alone, and an sdist whose tests pass.

The builds go through ``python -m build``, as a release would: each one sets up
an isolated environment with the build backend from the package index, so these
tests are marked slow.
"""

import os
from pathlib import Path
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import ember_optax

ROOT = Path(__file__).resolve().parents[1]
# What the sdist's own test run covers: the golden trajectories, the README's
# snippets and the reference models.
SDIST_TESTS = (
  'tests/ember_optax/test_transform.py',
  'tests/test_readme.py',
  'tests/ember_optax/test_routing.py',
)
_NOT_SOURCE = (
  '.git',
  '.venv*',
  'build',
  'dist',
  '*.egg-info',
  '__pycache__',
  '.pytest_cache',
  '.ruff_cache',
)


def _checkout_files() -> list[str] | None:
  """The files git tracks, or would (untracked but not ignored); None outside a checkout."""
  try:
    listed = subprocess.run(
      ['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      check=True,
    )
  except (OSError, subprocess.CalledProcessError):
    return None
  return [name for name in listed.stdout.splitlines() if (ROOT / name).exists()]


def _build(kind: str, source: Path, out: Path) -> Path:
  result = subprocess.run(
    [sys.executable, '-m', 'build', f'--{kind}', '--outdir', str(out), str(source)],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  (built,) = out.iterdir()
  return built


def test_the_repository_holds_no_vendored_source():
  files = _checkout_files()
  if files is None:
    pytest.skip('not a git checkout')
  assert not [f for f in files if 'third_party' in f]
  assert not [f for f in files if f.endswith(('.h', '.hh', '.hpp', '.c', '.cc', '.cpp'))]


@pytest.mark.slow
def test_wheel_is_pure_python_and_holds_only_the_library(tmp_path):
  source = tmp_path / 'source'
  files = _checkout_files()
  if files is None:
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
  else:
    for name in files:
      (source / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, source / name)
  # Files an earlier build left in build/ (the compiled kernel of earlier
  # versions, a package since dropped from the wheel) must not reach the new wheel.
  stale = source / 'build' / 'lib'
  for name in (
    'ember_optax/_src/_squared_sums_cpu.cpython-311-x86_64-linux-gnu.so',
    'models/__init__.py',
  ):
    (stale / name).parent.mkdir(parents=True)
    (stale / name).write_bytes(b'stale')

  wheel = _build('wheel', source, tmp_path / 'dist')
  assert wheel.name == f'ember_optax-{ember_optax.__version__}-py3-none-any.whl'
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    metadata = archive.read(f'ember_optax-{ember_optax.__version__}.dist-info/METADATA').decode()
  assert all(n.startswith(('ember_optax/', 'ember_optax-')) for n in names), names
  assert 'ember_optax/py.typed' in names
  assert not [n for n in names if n.endswith(('.so', '.pyd', '.dylib', '.h'))]
  assert any(n.endswith('licenses/LICENSE') for n in names)
  assert 'License-Expression: Apache-2.0' in metadata


@pytest.mark.slow
def test_sdist_carries_its_tests_and_they_pass(tmp_path):
  sdist = _build('sdist', ROOT, tmp_path / 'dist')
  with tarfile.open(sdist) as archive:
    safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
    archive.extractall(tmp_path / 'unpacked', **safe)
  root = tmp_path / 'unpacked' / sdist.name.removesuffix('.tar.gz')
  needed = ['LICENSE', 'README.md', 'pyproject.toml']
  files = _checkout_files()
  if files is not None:
    needed += [f for f in files if f.startswith(('tests/', 'models/', 'notebooks/'))]
  assert not [f for f in needed if not (root / f).is_file()]

  env = dict(os.environ, PYTHONPATH=str(root), EMBER_OPTAX_CACHE_DIR=str(tmp_path / 'cache'))
  where = subprocess.run(
    [sys.executable, '-c', 'import ember_optax; print(ember_optax.__file__)'],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  assert Path(where.stdout.strip()).is_relative_to(root)
  result = subprocess.run(
    [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *SDIST_TESTS],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

"""Building the CPU kernel on first use, its cache, and falling back when it can't be had.

Each scenario runs ``tests/kernel_probe.py`` in a fresh process with its own
cache folder, because what is under test (compiling, loading, registering with
XLA, warning once) happens once per process.
"""

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import jax
import kernel_probe
import numpy as np
import pytest

import ember_optax
from ember_optax._src import cpu_kernel, kernel_build

ROOT = Path(__file__).resolve().parents[1]


def _environment(cache: Path, **overrides: str | None) -> dict[str, str]:
  env = dict(os.environ)
  for name in ('CXX', cpu_kernel.SWITCH_ENV, 'XLA_FLAGS'):
    env.pop(name, None)
  env.update(
    {kernel_build.CACHE_DIR_ENV: str(cache), 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
  )
  for name, value in overrides.items():
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  return env


def _start(out: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, str(ROOT / 'tests' / 'kernel_probe.py'), str(out), *args],
    env=env,
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(process: subprocess.Popen, out: Path) -> tuple[dict, dict[str, np.ndarray]]:
  output, _ = process.communicate(timeout=600)
  assert process.returncode == 0, output[-3000:]
  report = json.loads((out / 'probe.json').read_text())
  with np.load(out / 'steps.npz') as steps:
    return report, dict(steps)


def _probe(out: Path, env: dict[str, str], *args: str) -> tuple[dict, dict[str, np.ndarray]]:
  return _finish(_start(out, env, *args), out)


@pytest.fixture(scope='module')
def expected_steps() -> dict[str, np.ndarray]:
  """The probe's steps, run in this process (with the kernel, if this process has it)."""
  return kernel_probe.run_steps()[0]


def _assert_same_steps(steps, expected):
  assert steps.keys() == expected.keys()
  for name in expected:
    np.testing.assert_allclose(steps[name], expected[name], rtol=2e-5, atol=1e-7, err_msg=name)


def _cache_files(cache: Path) -> list[str]:
  folder = cache / 'cpu_kernel'
  return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_first_use_compiles_into_an_empty_cache_and_a_second_process_reuses_it(
  tmp_path, expected_steps
):
  cache = tmp_path / 'cache'
  first, steps = _probe(tmp_path / 'first', _environment(cache))
  status = first['status']
  assert status['available'], status['reason']
  assert first['calls_kernel'] and first['warnings'] == []
  assert status['compile_seconds'] > 0 and 'compiled in' in status['reason']
  library = Path(status['library_path'])
  assert library.parent == cache / 'cpu_kernel'
  assert _cache_files(cache) == [library.name]  # No temporary file is left behind.
  _assert_same_steps(steps, expected_steps)

  built_at = library.stat().st_mtime_ns
  second, steps = _probe(tmp_path / 'second', _environment(cache))
  status = second['status']
  assert status['available'] and status['compile_seconds'] is None, status['reason']
  assert status['library_path'] == str(library) and 'from the cache' in status['reason']
  assert library.stat().st_mtime_ns == built_at
  _assert_same_steps(steps, expected_steps)


@pytest.mark.slow
def test_two_processes_racing_on_an_empty_cache_both_succeed(tmp_path, expected_steps):
  cache = tmp_path / 'cache'
  outs = [tmp_path / 'a', tmp_path / 'b']
  processes = [_start(out, _environment(cache)) for out in outs]
  reports = [_finish(process, out) for process, out in zip(processes, outs, strict=True)]
  for report, steps in reports:
    assert report['status']['available'], report['status']['reason']
    assert report['calls_kernel'] and report['warnings'] == []
    _assert_same_steps(steps, expected_steps)
  assert reports[0][0]['status']['library_path'] == reports[1][0]['status']['library_path']
  assert len(_cache_files(cache)) == 1


def _fallback_checks(report, steps, expected_steps, *phrases):
  status = report['status']
  assert not status['available'] and status['enabled']
  assert not report['calls_kernel']
  # One warning per process, though two tables of two dtypes were stepped.
  assert report['warnings'] == [f'ember_optax: {status["reason"]}']
  for phrase in phrases:
    assert phrase in status['reason']
  assert 'XLA reductions' in status['reason']
  _assert_same_steps(steps, expected_steps)


@pytest.mark.parametrize('how', ['CXX is a failing program', 'no compiler on PATH'])
def test_without_a_compiler_ember_falls_back_with_one_warning_and_the_same_results(
  tmp_path, expected_steps, how
):
  if how == 'CXX is a failing program':
    env = _environment(tmp_path / 'cache', CXX=shutil.which('false'))
    phrases = ('does not run', 'set CXX')
  else:
    empty = tmp_path / 'empty_bin'
    empty.mkdir()
    env = _environment(tmp_path / 'cache', PATH=str(empty))
    phrases = ('no C++ compiler was found', 'install a C++17 compiler')
  report, steps = _probe(tmp_path / 'out', env)
  _fallback_checks(report, steps, expected_steps, *phrases)
  assert _cache_files(tmp_path / 'cache') == []


def test_a_failed_compile_falls_back(tmp_path, expected_steps):
  compiler = tmp_path / 'broken-c++'
  compiler.write_text(
    '#!/bin/sh\n'
    'if [ "$1" = --version ]; then echo "broken-c++ 1.0"; exit 0; fi\n'
    'echo "squared_sums.cc:1:1: error: this compiler only pretends" >&2; exit 1\n'
  )
  compiler.chmod(0o755)
  report, steps = _probe(tmp_path / 'out', _environment(tmp_path / 'cache', CXX=str(compiler)))
  _fallback_checks(report, steps, expected_steps, 'failed to compile', 'only pretends')
  assert _cache_files(tmp_path / 'cache') == []  # The temporary output was removed.


def test_a_library_that_does_not_load_falls_back(tmp_path, expected_steps, monkeypatch):
  cache = tmp_path / 'cache'
  monkeypatch.setenv(kernel_build.CACHE_DIR_ENV, str(cache))
  monkeypatch.delenv('CXX', raising=False)
  library = kernel_build.library_path(kernel_build.find_compiler(), Path(jax.ffi.include_dir()))
  library.parent.mkdir(parents=True)
  library.write_bytes(b'not a shared library')
  report, steps = _probe(tmp_path / 'out', _environment(cache))
  _fallback_checks(report, steps, expected_steps, 'did not load', f'delete {library}')


def test_a_registration_that_jaxlib_rejects_falls_back(tmp_path, expected_steps):
  # The running jaxlib's headers, claiming a newer FFI API than jaxlib speaks:
  # XLA refuses the handler when it is registered.
  headers = tmp_path / 'include'
  shutil.copytree(jax.ffi.include_dir(), headers)
  c_api = headers / 'xla' / 'ffi' / 'api' / 'c_api.h'
  text = c_api.read_text()
  assert '#define XLA_FFI_API_MINOR ' in text
  c_api.write_text(text.replace('#define XLA_FFI_API_MINOR ', '#define XLA_FFI_API_MINOR 999 //'))
  report, steps = _probe(
    tmp_path / 'out', _environment(tmp_path / 'cache'), '--include-dir', str(headers)
  )
  _fallback_checks(report, steps, expected_steps, 'rejected', 'RuntimeError', 'API version')


def test_the_environment_switch_turns_the_kernel_off_without_building_it(tmp_path, expected_steps):
  env = _environment(tmp_path / 'cache', **{cpu_kernel.SWITCH_ENV: '0'})
  report, steps = _probe(tmp_path / 'out', env)
  status = report['status']
  assert not status['available'] and not status['enabled']
  assert not report['calls_kernel'] and report['warnings'] == []
  assert f'{cpu_kernel.SWITCH_ENV}=0' in status['reason']
  assert _cache_files(tmp_path / 'cache') == []
  _assert_same_steps(steps, expected_steps)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(kernel_build.CACHE_DIR_ENV, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert kernel_build.cache_dir() == tmp_path / 'xdg' / 'ember_optax' / 'cpu_kernel'
  monkeypatch.delenv('XDG_CACHE_HOME')
  assert kernel_build.cache_dir() == Path.home() / '.cache' / 'ember_optax' / 'cpu_kernel'
  monkeypatch.setenv(kernel_build.CACHE_DIR_ENV, str(tmp_path / 'mine'))
  assert kernel_build.cache_dir() == tmp_path / 'mine' / 'cpu_kernel'


def test_this_process_uses_the_kernel():
  # The expected steps above come from the kernel, so each fallback is compared with it.
  assert ember_optax.cpu_kernel_status().available

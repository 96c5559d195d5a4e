"""Compiles Ember's CPU kernel against the running jaxlib, once per machine, into a per-user cache.

The kernel (``csrc/squared_sums.cc``) is an XLA FFI handler. It is built, as JAX
documents for FFI extensions, against the FFI headers that the running jaxlib
installs (``jax.ffi.include_dir()``), so it always speaks that jaxlib's FFI API
version. The library's file name hashes everything that goes into it (source,
headers, compiler, flags, machine), so a new jaxlib, compiler or kernel builds a
new library and a stale one is never loaded.

A library is compiled into a temporary file in the cache folder and renamed into
place, so processes that build at the same time (pytest-xdist workers, hosts
sharing a home folder) each find either no library or a whole one; the last
rename wins and both copies are the same.
"""

import dataclasses
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

CACHE_DIR_ENV = 'EMBER_OPTAX_CACHE_DIR'
SOURCE = pathlib.Path(__file__).parent / 'csrc' / 'squared_sums.cc'

# Compilers tried in this order when CXX is not set.
_COMPILER_NAMES = ('c++', 'g++', 'clang++')
FLAGS = (
  '-std=c++17',
  '-O3',
  # No fused multiply-adds, so every build sums bit for bit alike.
  '-ffp-contract=off',
  '-fvisibility=hidden',
  '-fPIC',
  '-shared',
  # No debug information and no symbol table: the library exports one handler.
  '-g0',
  '-s',
  '-Wno-psabi',  # 32-byte vectors between inline helpers, never across an ABI.
)
# Compiling takes seconds; a compiler still running after this is stuck.
_COMPILE_TIMEOUT_S = 300


class BuildError(Exception):
  """Why the kernel could not be built, as a phrase that completes "the CPU kernel ..."."""


@dataclasses.dataclass(frozen=True)
class Compiler:
  command: tuple[str, ...]
  description: str  # First line of ``--version``.


@dataclasses.dataclass(frozen=True)
class Build:
  path: pathlib.Path
  compiler: str
  seconds: float | None  # Time spent compiling; None when the library came from the cache.


def cache_dir() -> pathlib.Path:
  """The kernel's cache folder.

  ``$EMBER_OPTAX_CACHE_DIR/cpu_kernel``, else
  ``${XDG_CACHE_HOME:-~/.cache}/ember_optax/cpu_kernel``.
  """
  root = os.environ.get(CACHE_DIR_ENV)
  if not root:
    root = os.path.join(os.environ.get('XDG_CACHE_HOME') or '~/.cache', 'ember_optax')
  return pathlib.Path(root).expanduser() / 'cpu_kernel'


def find_compiler() -> Compiler:
  """The C++ compiler named by ``CXX``, else the first of c++, g++ and clang++ on ``PATH``."""
  if os.environ.get('CXX'):
    command = tuple(shlex.split(os.environ['CXX']))
    origin = f'CXX={os.environ["CXX"]!r}'
  else:
    found = [path for path in map(shutil.which, _COMPILER_NAMES) if path]
    if not found:
      raise BuildError(
        f'was not built: no C++ compiler was found ({", ".join(_COMPILER_NAMES)} are not on '
        'PATH and CXX is not set)'
      )
    command, origin = (found[0],), found[0]
  try:
    version = subprocess.run([*command, '--version'], capture_output=True, text=True, timeout=60)
  except (OSError, subprocess.SubprocessError) as error:
    raise BuildError(f'was not built: the C++ compiler {origin} does not run ({error})') from None
  if version.returncode != 0:
    said = version.stderr.strip().splitlines()
    raise BuildError(
      f'was not built: the C++ compiler {origin} does not run (`--version` exited with '
      f'status {version.returncode}{": " + said[0] if said else ""})'
    )
  lines = version.stdout.strip().splitlines()
  return Compiler(command, lines[0].strip() if lines else origin)


def _headers_digest(include_dir: pathlib.Path) -> bytes:
  headers = sorted((include_dir / 'xla' / 'ffi' / 'api').glob('*.h'))
  if not headers:
    raise BuildError(f'was not built: jaxlib installs no XLA FFI headers under {include_dir}')
  digest = hashlib.sha256()
  for header in headers:
    digest.update(header.name.encode() + b'\0' + header.read_bytes() + b'\0')
  return digest.digest()


def library_path(compiler: Compiler, include_dir: pathlib.Path) -> pathlib.Path:
  """Where the library built by ``compiler`` against ``include_dir`` is cached."""
  key = hashlib.sha256()
  for part in (
    SOURCE.read_bytes(),
    _headers_digest(include_dir),
    '\0'.join(compiler.command + (compiler.description,) + FLAGS).encode(),
    f'{sys.platform} {platform.machine()}'.encode(),
  ):
    key.update(part + b'\0')
  return cache_dir() / f'squared_sums-{key.hexdigest()[:20]}.so'


def _first_error(compiler_output: str) -> str:
  lines = [line.strip() for line in compiler_output.splitlines() if line.strip()]
  errors = [line for line in lines if 'error' in line.lower()]
  return (errors or lines or ['no output'])[0][:300]


def build(include_dir: str | os.PathLike) -> Build:
  """The cached kernel for this jaxlib's FFI headers, compiling it first if it isn't cached.

  Args:
    include_dir: the folder holding ``xla/ffi/api/*.h``, ``jax.ffi.include_dir()``.

  Returns:
    The library's path, the compiler that built it, and the seconds spent compiling it.

  Raises:
    BuildError: no compiler, an unwritable cache folder or a failed compile.
  """
  include_dir = pathlib.Path(include_dir)
  compiler = find_compiler()
  path = library_path(compiler, include_dir)
  if path.exists():
    return Build(path, compiler.description, None)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(handle)
  except OSError as error:
    raise BuildError(
      f'was not built: its cache folder {path.parent} is not writable ({error}); set '
      f'{CACHE_DIR_ENV} to a writable folder'
    ) from None
  command = [*compiler.command, *FLAGS, '-isystem', str(include_dir), str(SOURCE), '-o', temporary]
  start = time.perf_counter()
  try:
    try:
      result = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as error:
      raise BuildError(f'was not built: {compiler.description} did not run ({error})') from None
    if result.returncode != 0:
      raise BuildError(
        f'failed to compile with {compiler.description}: '
        f'{_first_error(result.stderr + result.stdout)} (command: {shlex.join(command)})'
      )
    seconds = time.perf_counter() - start
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
  return Build(path, compiler.description, seconds)

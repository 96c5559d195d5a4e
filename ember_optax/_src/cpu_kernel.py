"""Ember's statistics pass on CPU: a compiled, multithreaded XLA FFI kernel, its switch and status.

XLA:CPU reads the gradient once per reduction, and Ember needs two sums.
``csrc/squared_sums.cc`` reads the gradient once for both, on every thread of
XLA's intra-op pool, and reads bfloat16 gradients as they are. It is compiled
the first time Ember needs it on CPU, against the running jaxlib (see
``kernel_build``). Whatever stops it (no compiler, a failed compile, a library
that does not load, a registration that jaxlib rejects, a wrong answer on a
small check) Ember takes XLA's reductions instead, which give the same results
more slowly, and says so once per process.
"""

import ctypes
import math
import os
import sys
import threading
from typing import NamedTuple
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ember_optax._src import kernel_build

SWITCH_ENV = 'EMBER_OPTAX_CPU_KERNEL'
_OFF_VALUES = ('0', 'false', 'off', 'no')
_ON_VALUES = ('', '1', 'true', 'on', 'yes')
_TARGET_NAME = 'ember_squared_sums'
# Warnings name the first frame outside these: the user's call that traced a step.
_LIBRARY_MODULES = (
  'ember_optax',
  'jax',
  'jaxlib',
  'optax',
  'flax',
  'chex',
  'contextlib',
  'functools',
)
_SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
_FALLBACK = (
  'so Ember computes its statistics with XLA reductions instead (same results, slower on CPU)'
)

# The kernel hands whole blocks of about this many bytes of rows to a thread,
# each writing its own partial column sums. Blocks depend only on the shape, so
# results are bitwise the same whatever the number of threads.
_BLOCK_BYTES = 1 << 20
# The partial sums (one float32 row of column sums per block) are kept under this
# share of the table: where rows are wide (a Flax Dense head (D, V), rows of
# V = 50k-260k floats) blocks of 1 MiB would hold a row or two each, and their
# partial sums would be as large as the table itself.
_MAX_PARTIALS_SHARE = 1 / 32


class CpuKernelStatus(NamedTuple):
  """Whether Ember computes its statistics with its compiled CPU kernel, and why.

  Returned by :func:`cpu_kernel_status`; ``status._asdict()`` is JSON-serializable.

  Attributes:
    available: True when Ember uses the compiled kernel for float32 and bfloat16
      tables on a single CPU device (on GPU, TPU or several devices XLA's own
      reductions are used whatever this says).
    reason: One sentence: why the kernel is or isn't used, and how to get the fast
      path where it isn't.
    library_path: The compiled kernel in the cache, or None.
    enabled: False when turned off by ``EMBER_OPTAX_CPU_KERNEL=0`` or
      :func:`use_cpu_kernel`.
    compiler: The compiler that built the kernel (first line of its ``--version``),
      or None.
    compile_seconds: Seconds this process spent compiling the kernel; None when it
      came from the cache or was not built.
    jaxlib_version: The running jaxlib's version, whose FFI headers the kernel is
      built against.
  """

  available: bool
  reason: str
  library_path: str | None
  enabled: bool
  compiler: str | None
  compile_seconds: float | None
  jaxlib_version: str


_lock = threading.Lock()
# Set by use_cpu_kernel; None leaves the choice to the environment variable.
_switch: bool | None = None
# The outcome of this process's one attempt to build, load and register the kernel.
_loaded: CpuKernelStatus | None = None


def use_cpu_kernel(enabled: bool | None) -> None:
  """Turns Ember's compiled CPU kernel on or off for functions traced from now on.

  Overrides the environment variable ``EMBER_OPTAX_CPU_KERNEL``. Turning the
  kernel off makes Ember compute its statistics with XLA reductions on CPU too:
  the same results, more slowly, and a step that ``jax.export`` can serialize for
  several platforms at once (``platforms=('cpu', 'cuda', 'tpu')``), which a custom
  call prevents. Functions traced from now on take the chosen path: this clears
  JAX's caches, so jitted functions trace again when next called, while
  functions already lowered or compiled ahead of time keep the path they had.

  Args:
    enabled: True to use the kernel where it is available, False to never use
      it, None to leave the choice to ``EMBER_OPTAX_CPU_KERNEL`` again (the
      default).

  Example:
    >>> import ember_optax
    >>> ember_optax.use_cpu_kernel(False)
    >>> ember_optax.cpu_kernel_status().available
    False
    >>> ember_optax.use_cpu_kernel(None)
  """
  global _switch
  if enabled is not None and not isinstance(enabled, bool):
    raise TypeError(
      f'use_cpu_kernel: enabled must be True, False or None, got {enabled!r} '
      f'({type(enabled).__name__})'
    )
  if enabled != _switch:
    _switch = enabled
    # Jitted functions traced with the other path trace again when next called.
    jax.clear_caches()


def _turned_off_by() -> str | None:
  """What turned the kernel off, or None when it is on."""
  if _switch is not None:
    return None if _switch else 'ember_optax.use_cpu_kernel(False)'
  value = os.environ.get(SWITCH_ENV, '')
  if value.strip().lower() in _ON_VALUES:
    return None
  if value.strip().lower() in _OFF_VALUES:
    return f'{SWITCH_ENV}={value}'
  raise ValueError(
    f"{SWITCH_ENV}={value!r} is not understood: set it to 0 to turn Ember's compiled CPU "
    'kernel off, or to 1 (or leave it unset) to use it.'
  )


def _status(available: bool, reason: str, **fields) -> CpuKernelStatus:
  defaults = dict(
    library_path=None,
    enabled=True,
    compiler=None,
    compile_seconds=None,
    jaxlib_version=jax.lib.__version__,
  )
  return CpuKernelStatus(available, reason, **(defaults | fields))


def cpu_kernel_status() -> CpuKernelStatus:
  """Says whether Ember uses its compiled CPU kernel, and why.

  On first call (or when Ember first needs the kernel) this compiles the kernel
  against the running jaxlib if the per-user cache does not hold it yet, which
  takes a few seconds once per machine and jaxlib version. The cache folder is
  ``$EMBER_OPTAX_CACHE_DIR/cpu_kernel``, else
  ``$XDG_CACHE_HOME/ember_optax/cpu_kernel`` (``~/.cache/...`` by default). The
  compiler is ``$CXX``, else the first of ``c++``, ``g++`` and ``clang++``.

  Returns:
    A :class:`CpuKernelStatus`.

  Example:
    >>> import ember_optax
    >>> status = ember_optax.cpu_kernel_status()
    >>> isinstance(status.available, bool) and isinstance(status.reason, str)
    True
  """
  turned_off_by = _turned_off_by()
  if turned_off_by is not None:
    undo = 'call ember_optax.use_cpu_kernel(True)' if _switch is False else f'unset {SWITCH_ENV}'
    return _status(
      False,
      f"Ember's compiled CPU kernel is turned off by {turned_off_by}, {_FALLBACK}; {undo} "
      'for the fast path.',
      enabled=False,
    )
  global _loaded
  with _lock:
    if _loaded is None:
      _loaded = _load()
      if not _loaded.available:
        warnings.warn(
          f'ember_optax: {_loaded.reason}', RuntimeWarning, stacklevel=_caller_stacklevel()
        )
  return _loaded


def _caller_stacklevel() -> int:
  """The stack level of the first frame outside the libraries that trace Ember's step."""
  frame, level = sys._getframe(2), 2
  while frame.f_back is not None and frame.f_globals.get('__name__', '').partition('.')[0] in (
    _LIBRARY_MODULES
  ):
    frame, level = frame.f_back, level + 1
  return level


def supports(dtype: jnp.dtype) -> bool:
  """Whether gradients of ``dtype`` take the compiled kernel (building it if needed)."""
  return jnp.dtype(dtype) in _SUPPORTED_DTYPES and cpu_kernel_status().available


def _load() -> CpuKernelStatus:
  """Builds (or finds in the cache), loads, registers and checks the kernel.

  Every failure is caught: Ember must keep working, whatever the machine lacks.
  """
  how_to_fix = (
    'install a C++17 compiler (g++ or clang++, or set CXX) for the fast path, or set '
    f'{SWITCH_ENV}=0 to choose this path without this warning'
  )
  try:
    build = kernel_build.build(jax.ffi.include_dir())
  except kernel_build.BuildError as error:
    return _status(False, f"Ember's CPU kernel {error}, {_FALLBACK}; {how_to_fix}.")
  except Exception as error:  # An unforeseen failure is reported, never raised.
    return _status(
      False,
      f"Ember's CPU kernel was not built ({type(error).__name__}: {error}), {_FALLBACK}; "
      f'{how_to_fix}.',
    )
  built = dict(library_path=str(build.path), compiler=build.compiler, compile_seconds=build.seconds)
  redo = (
    f'delete {build.path} to rebuild it, set {kernel_build.CACHE_DIR_ENV} to another folder, '
    f'or set {SWITCH_ENV}=0 to choose this path without this warning'
  )
  try:
    handler = ctypes.CDLL(str(build.path)).EmberSquaredSums
  except (OSError, AttributeError) as error:
    return _status(
      False,
      f"Ember's CPU kernel {build.path} did not load ({error}), {_FALLBACK}; {redo}.",
      **built,
    )
  try:
    # With the CPU backend up, jaxlib checks the handler now and raises
    # (XlaRuntimeError) if it rejects it; registered earlier, the failed check
    # would stop the CPU backend from starting at all.
    jax.devices('cpu')
    jax.ffi.register_ffi_target(_TARGET_NAME, jax.ffi.pycapsule(handler), platform='cpu')
  except Exception as error:
    return _status(
      False,
      f"jaxlib {jax.lib.__version__} rejected Ember's CPU kernel {build.path} "
      f'({type(error).__name__}: {error}), {_FALLBACK}; {redo}.',
      **built,
    )
  try:
    _check_against_numpy()
  except Exception as error:
    return _status(
      False,
      f"Ember's CPU kernel {build.path} failed its check against NumPy "
      f'({type(error).__name__}: {error}), {_FALLBACK}; {redo}.',
      **built,
    )
  where = f'compiled in {build.seconds:.1f} s' if build.seconds is not None else 'from the cache'
  return _status(
    True,
    'Ember computes its statistics on a single CPU device with its compiled kernel '
    f'({build.path}, built by {build.compiler} for jaxlib {jax.lib.__version__}, {where}).',
    **built,
  )


def _check_against_numpy() -> None:
  """Runs the kernel once on a small ragged table; raises if it is wrong."""
  grad = np.linspace(-2, 3, 3 * 13, dtype=np.float32).reshape(3, 13)
  with jax.ensure_compile_time_eval():  # Runs now, even while tracing a caller.
    row_sums, col_sums = _call(jax.device_put(grad, jax.devices('cpu')[0]))
  squares = grad.astype(np.float64) ** 2
  for name, got, want in (('row', row_sums, squares.sum(1)), ('column', col_sums, squares.sum(0))):
    if not np.allclose(np.asarray(got), want, rtol=1e-5):
      raise ValueError(f'{name} sums {np.asarray(got)} differ from {want}')


def _call(grad: jax.Array) -> tuple[jax.Array, jax.Array]:
  *leading, n_rows, n_cols = grad.shape
  rows_per_block = max(1, _BLOCK_BYTES // (n_cols * grad.dtype.itemsize))
  max_blocks = max(1, int(_MAX_PARTIALS_SHARE * n_rows * grad.dtype.itemsize / 4))
  n_blocks = min(math.ceil(n_rows / rows_per_block), max_blocks)
  row_sums, col_partials = jax.ffi.ffi_call(
    _TARGET_NAME,
    (
      jax.ShapeDtypeStruct((*leading, n_rows), jnp.float32),
      jax.ShapeDtypeStruct((*leading, n_blocks, n_cols), jnp.float32),
    ),
    # The kernel treats leading axes as independent tables, batch axes too.
    vmap_method='broadcast_all',
  )(grad)
  return row_sums, jnp.sum(col_partials, axis=-2)


@jax.custom_jvp
def squared_sums(grad: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Float32 sums of ``grad**2`` over the last axis and over the second-to-last.

  Leading axes are independent tables. Only for CPU and for dtypes for which
  :func:`supports` is true.
  """
  return _call(grad)


@squared_sums.defjvp
def _squared_sums_jvp(primals, tangents):
  (grad,), (grad_dot,) = primals, tangents
  products = 2 * grad.astype(jnp.float32) * grad_dot.astype(jnp.float32)
  return squared_sums(grad), (jnp.sum(products, axis=-1), jnp.sum(products, axis=-2))

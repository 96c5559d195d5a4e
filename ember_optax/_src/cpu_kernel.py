"""Ember's statistics pass on CPU: a multithreaded XLA FFI kernel.

XLA:CPU runs a reduction on a single core and reads the gradient once per
reduction, so the two sums Ember needs cost more than its whole elementwise
update. ``csrc/squared_sums.cc`` reads the gradient once, on every thread of
XLA's intra-op pool, reading bfloat16 gradients as they are. It is compiled when
the package is installed; where it could not be (no C++ compiler), Ember takes
the two XLA reductions instead, which give the same results more slowly.
"""

import ctypes
import functools
import importlib.machinery
import math
import pathlib
import warnings

import jax
import jax.numpy as jnp

_LIBRARY_STEM = '_squared_sums_cpu'
_TARGET_NAME = 'ember_squared_sums'
_SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

# The kernel hands whole blocks of about this many bytes of rows to a thread,
# each writing its own partial column sums. Blocks depend only on the shape, so
# results are bitwise the same whatever the number of threads; the partial sums
# take 4 / (rows per block * itemsize) of the table, under 2% below D = 4096.
_BLOCK_BYTES = 1 << 20


def _library_path() -> pathlib.Path | None:
  here = pathlib.Path(__file__).parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    if (path := here / f'{_LIBRARY_STEM}{suffix}').exists():
      return path
  return None


@functools.cache
def available() -> bool:
  """Whether the compiled kernel was built, loaded, and registered with XLA."""
  path = _library_path()
  if path is None:
    return False
  try:
    library = ctypes.cdll.LoadLibrary(str(path))
  except OSError as error:
    warnings.warn(
        f'ember_optax: could not load its CPU kernel {path} ({error}); Ember takes the slower '
        'XLA reductions instead. Reinstall ember-optax with a C++17 compiler to rebuild it.',
        RuntimeWarning,
        stacklevel=2,
    )
    return False
  jax.ffi.register_ffi_target(
      _TARGET_NAME, jax.ffi.pycapsule(library.EmberSquaredSums), platform='cpu'
  )
  return True


def supports(dtype: jnp.dtype) -> bool:
  """Whether gradients of ``dtype`` can take the compiled kernel."""
  return jnp.dtype(dtype) in _SUPPORTED_DTYPES and available()


@jax.custom_jvp
def squared_sums(grad: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Float32 sums of ``grad**2`` over the last axis and over the second-to-last.

  Leading axes are independent tables. Only for CPU and for dtypes for which
  :func:`supports` is true.
  """
  *leading, n_rows, n_cols = grad.shape
  rows_per_block = max(1, _BLOCK_BYTES // (n_cols * grad.dtype.itemsize))
  n_blocks = math.ceil(n_rows / rows_per_block)
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


@squared_sums.defjvp
def _squared_sums_jvp(primals, tangents):
  (grad,), (grad_dot,) = primals, tangents
  products = 2 * grad.astype(jnp.float32) * grad_dot.astype(jnp.float32)
  return squared_sums(grad), (jnp.sum(products, axis=-1), jnp.sum(products, axis=-2))

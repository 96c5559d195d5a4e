"""Input validation shared by Ember's transformations.

Every check runs at construction or at ``init`` (never on traced values), so a
bad configuration is reported before any parameter or state has been touched.
"""

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ember_optax._src.paths import path_str


def _concrete_number(value: Any) -> float | None:
  """Returns ``value`` as a float if it is known now, else ``None``.

  Under ``optax.inject_hyperparams`` hyperparameters arrive as (possibly traced)
  arrays; those cannot be checked in Python and are left alone.
  """
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, np.ndarray | np.generic) and np.ndim(value) == 0:
    return float(value)
  if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
    if value.ndim == 0:
      return float(value)
  return None


def check_decay(name: str, value: Any) -> None:
  """Raises if a decay rate is known and outside ``[0, 1)``."""
  number = _concrete_number(value)
  if number is not None and not 0.0 <= number < 1.0:
    raise ValueError(
      f'{name}={value!r} is outside [0, 1). It is the decay rate of an exponential '
      f'moving average: use a value such as 0.999.'
    )


def check_non_negative(name: str, value: Any) -> None:
  """Raises if a scalar hyperparameter is known and negative (or NaN)."""
  if callable(value):  # A schedule; its values are only known during training.
    return
  number = _concrete_number(value)
  if number is not None and not number >= 0.0:
    raise ValueError(f'{name}={value!r} must be a non-negative number.')


def check_static_int(name: str, value: Any) -> None:
  """Raises if ``value`` is known and not an integer (a traced one is let through)."""
  if isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, bool) or not np.issubdtype(np.asarray(value).dtype, np.integer):
    raise TypeError(f'{name}={value!r} must be an integer (an axis index).')
  if np.ndim(value) != 0:
    raise TypeError(f'{name}={value!r} must be a single integer.')


def check_float_params(params: Any, who: str) -> None:
  """Raises ``TypeError`` naming the first leaf that is not floating point."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = getattr(leaf, 'dtype', None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f'{who}: parameter {path_str(path)!r} has dtype {dtype}, but only floating-point '
        f'parameters can be optimized. Keep integer/boolean arrays out of the optimized '
        f'pytree (e.g. store them in a non-Param variable or mask them with '
        f'optax.partition(..., optax.set_to_zero())).'
      )


def check_same_shapes(reference: Any, other: Any, what: str, who: str) -> None:
  """Raises ``ValueError`` naming the first leaf whose shape differs."""
  ref_leaves = jax.tree_util.tree_leaves_with_path(reference)
  other_leaves = jax.tree.leaves(other)
  if len(ref_leaves) != len(other_leaves):
    raise ValueError(
      f'{who}: got {len(other_leaves)} {what} leaves for {len(ref_leaves)} parameters; '
      f'pass {what} with the same pytree structure as the parameters given to init.'
    )
  for (path, ref), leaf in zip(ref_leaves, other_leaves, strict=True):
    if np.shape(ref) != np.shape(leaf):
      raise ValueError(
        f'{who}: {what} for {path_str(path)!r} has shape {np.shape(leaf)}, but the '
        f'optimizer state was built for shape {np.shape(ref)}. Re-run init after changing '
        f'parameter shapes.'
      )

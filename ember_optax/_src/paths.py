"""Pytree key paths as names: for error messages and for predicates over parameter paths."""

from typing import Any

import jax


def path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
  """A pytree key path as plain names.

  Flax wraps arrays in ``nnx.Variable`` and linen boxes, which add an attribute
  step (``.value``) to every path; those steps are dropped, while a module that
  is itself named ``value`` (an attention projection) is kept.
  """
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey) and key.name in ('value', 'raw_value'):
      continue
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return tuple(names)


def path_str(path: tuple[Any, ...]) -> str:
  """Renders a pytree key path as ``a/b/0/c`` for error messages."""
  return '/'.join(path_names(path)) or '<root>'


# Linen's top-level collection name, not part of any parameter's name.
_COLLECTION_NAMES = frozenset({'params'})


def param_path(path: tuple[Any, ...]) -> str:
  """A parameter's name as ``a/b/c``, the form that predicates over paths receive.

  Linen's ``params`` collection is dropped, so ``{'params': {'wte': ...}}``
  and ``{'wte': ...}`` name their leaves alike.
  """
  return '/'.join(name for name in path_names(path) if name not in _COLLECTION_NAMES)

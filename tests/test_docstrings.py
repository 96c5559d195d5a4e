"""Every docstring example of the library runs and prints what it shows."""

import doctest
import importlib

import pytest

MODULES = [
  'ember_optax._src.alias',
  'ember_optax._src.layout',
  'ember_optax._src.routing',
  'ember_optax._src.sharding',
  'ember_optax._src.transform',
  'ember_optax.diagnostics',
]


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
  result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f'{name} has no docstring example'
  assert result.failed == 0

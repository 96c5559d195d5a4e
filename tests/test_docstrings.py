"""Every docstring example of the library and of ``models`` runs and prints what it shows."""

import doctest
import importlib
import inspect
from pathlib import Path
import pkgutil

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Program entry points run their program on import; their docstrings hold no examples.
_ENTRY_POINTS = ('__main__',)


def _modules(package: str) -> list[str]:
  names = [package]
  for info in pkgutil.walk_packages([str(ROOT / package.replace('.', '/'))], prefix=f'{package}.'):
    if info.name.rsplit('.', 1)[-1] not in _ENTRY_POINTS:
      names.append(info.name)
  return names


MODULES = _modules('ember_optax') + _modules('models')


def test_the_examples_cover_the_public_modules():
  with_examples = [name for name in MODULES if _examples(name)]
  for name in ('ember_optax._src.transform', 'models.optim.registry', 'models.cli'):
    assert name in with_examples


def _public_functions() -> list[tuple[str, object]]:
  import ember_optax
  from ember_optax import diagnostics

  found = []
  for module in (ember_optax, diagnostics):
    for name in module.__all__:
      if inspect.isfunction(getattr(module, name)):
        found.append((f'{module.__name__}.{name}', getattr(module, name)))
  return found


PUBLIC_FUNCTIONS = dict(_public_functions())


@pytest.mark.parametrize('name', list(PUBLIC_FUNCTIONS))
def test_every_public_function_of_the_library_has_an_example(name):
  tests = doctest.DocTestFinder(recurse=False).find(PUBLIC_FUNCTIONS[name], name)
  # test_docstring_examples runs them; this checks that there is one to run.
  assert sum(len(test.examples) for test in tests) >= 2, f'{name} has no docstring example'


def _examples(name: str) -> list[doctest.DocTest]:
  tests = doctest.DocTestFinder().find(importlib.import_module(name))
  return [test for test in tests if test.examples]


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
  result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0

"""The shape of ``models/``: programs on top of shared machinery, each module doing one job.

A program is a module that names its command (``PROG = 'python -m ...'``). No program imports
another program, the packages below the programs (data, nets, optim, training, reporting) import
no program and nothing from ``models.bench``, and no module is past 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / 'models'
SHARED = ('data', 'nets', 'optim', 'training', 'reporting')
MAX_LINES = 400


def _module_name(path: Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(path): path for path in sorted(MODELS.rglob('*.py'))}


def _is_program(path: Path) -> bool:
  tree = ast.parse(path.read_text())
  return any(
    isinstance(node, ast.Assign)
    and any(isinstance(t, ast.Name) and t.id == 'PROG' for t in node.targets)
    for node in tree.body
  )


PROGRAMS = {name for name, path in MODULES.items() if _is_program(path)}


def _imports(path: Path) -> set[str]:
  """The ``models`` modules that ``path`` imports (``from models.x import y`` names
  ``models.x.y`` where that is a module, else ``models.x``)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names if alias.name.startswith('models')}
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('models'):
      for alias in node.names:
        full = f'{node.module}.{alias.name}'
        found.add(full if full in MODULES else node.module)
  return found


def test_the_programs_are_found():
  assert {'models.train', 'models.rl', 'models.sft', 'models.bench.quality'} <= PROGRAMS


@pytest.mark.parametrize('program', sorted(PROGRAMS))
def test_no_program_imports_another_program(program):
  others = (_imports(MODULES[program]) & PROGRAMS) - {program}
  assert not others, f'{program} imports the programs {sorted(others)}; move what it needs below'


@pytest.mark.parametrize('package', SHARED)
def test_shared_machinery_imports_no_program_and_no_benchmark(package):
  for name, path in MODULES.items():
    if not name.startswith(f'models.{package}'):
      continue
    upward = {m for m in _imports(path) if m in PROGRAMS or m.startswith('models.bench')}
    assert not upward, f'{name} imports {sorted(upward)}'


def test_no_module_is_past_400_lines():
  lines = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
  long = {name: n for name, n in lines.items() if n > MAX_LINES}
  assert not long, f'modules doing several jobs (lines): {long}'

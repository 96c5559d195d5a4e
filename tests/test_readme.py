"""Every Python snippet of the READMEs runs as written, and their links point at real files.

Snippets fenced as ``py`` rather than ``python`` are fragments of other programs (a Tunix
script, MaxText's source), shown for what to change there; they are not run here.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
READMES = [ROOT / 'README.md', ROOT / 'models' / 'README.md']
SNIPPETS = [
  (readme, snippet)
  for readme in READMES
  for snippet in re.findall(r'```python\n(.*?)```', readme.read_text(), flags=re.DOTALL)
]


@pytest.mark.parametrize('index', range(len(SNIPPETS)))
def test_readme_snippet_runs(index):
  readme, snippet = SNIPPETS[index]
  name = f'{readme.relative_to(ROOT)} snippet {index}'
  exec(compile(snippet, name, 'exec'), {'__name__': 'readme'})


def test_readme_has_snippets():
  assert len(SNIPPETS) >= 3


@pytest.mark.parametrize('readme', READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(readme):
  for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', readme.read_text()):
    if target.startswith(('http://', 'https://')):
      continue
    assert (readme.parent / target).exists(), f'{readme.name}: {target}'


def test_models_readme_and_package_docstring_list_the_same_programs():
  table = set(
    re.findall(r'^\| `python -m (models[\w.]+)`', READMES[1].read_text(), flags=re.MULTILINE)
  )
  listed = set(
    re.findall(
      r'^\* ``(models\.[\w.]+)``: ', (ROOT / 'models' / '__init__.py').read_text(), re.MULTILINE
    )
  )
  shared = ('nets', 'data', 'optim', 'training', 'reporting', 'bench', 'cli')
  packages = {f'models.{name}' for name in shared}
  assert table == listed - packages
  for program in table:  # Each is a module with a main.
    path = ROOT / (program.replace('.', '/') + '.py')
    package = ROOT / program.replace('.', '/') / '__main__.py'
    assert path.exists() or package.exists(), program


def test_models_readme_is_a_guide():
  """models/README.md is a guide of at most 300 lines; tables live in models/results/, method in
  the module docstrings, history in CHANGELOG.md."""
  lines = READMES[1].read_text().splitlines()
  assert len(lines) <= 300, f'models/README.md has {len(lines)} lines; the guide keeps to 300'

"""Every Python snippet in the README runs as written.

Snippets fenced as ``py`` rather than ``python`` are fragments of other programs (a Tunix
script, MaxText's source), shown for what to change there; they are not run here.
"""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).parents[1] / 'README.md'
SNIPPETS = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize('index', range(len(SNIPPETS)))
def test_readme_snippet_runs(index):
  exec(compile(SNIPPETS[index], f'README.md snippet {index}', 'exec'), {'__name__': 'readme'})


def test_readme_has_snippets():
  assert len(SNIPPETS) >= 3

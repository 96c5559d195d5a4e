"""Every Python snippet in the README runs as written."""

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

"""Executes every notebook in notebooks/ top to bottom at the small size.

The notebooks read ``EMBER_NOTEBOOK_SIZE``; here it is ``small``, so each runs in seconds on a CPU.
The kernel is this interpreter (a kernelspec written to a temporary folder), so the test works in
any virtual environment where ``pip install -e '.[test]'`` installed ipykernel and nbclient,
whatever other kernels the machine has.

To refresh the committed outputs from a full run (as the README's numbers are)::

    python tests/test_notebooks.py notebooks/*.ipynb        # full size, outputs saved in place
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile
import time

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / 'notebooks').glob('*.ipynb'))
KERNEL_NAME = 'ember-optax-notebook-test'


def _kernelspec_dir(root: Path) -> Path:
  """Writes a kernelspec that launches this interpreter; returns the folder for JUPYTER_PATH."""
  spec = root / 'kernels' / KERNEL_NAME
  spec.mkdir(parents=True, exist_ok=True)
  (spec / 'kernel.json').write_text(
    json.dumps(
      {
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'ember-optax test kernel',
        'language': 'python',
      }
    )
  )
  return root


def execute_notebook(path: Path, size: str, timeout: int = 900):
  """Runs ``path`` top to bottom at ``size`` in a fresh kernel; returns the executed notebook."""
  import nbclient
  import nbformat

  nb = nbformat.read(path, as_version=4)
  with tempfile.TemporaryDirectory() as tmp:
    saved = {k: os.environ.get(k) for k in ('JUPYTER_PATH', 'EMBER_NOTEBOOK_SIZE', 'MPLBACKEND')}
    os.environ['JUPYTER_PATH'] = os.pathsep.join(
      filter(None, [str(_kernelspec_dir(Path(tmp))), saved['JUPYTER_PATH']])
    )
    os.environ['EMBER_NOTEBOOK_SIZE'] = size
    # The kernel picks its inline backend itself; a non-interactive MPLBACKEND from the caller
    # would stop plots from being captured.
    os.environ.pop('MPLBACKEND', None)
    try:
      client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=timeout,
        # Run from the repository root, so `models` imports even without an install.
        resources={'metadata': {'path': str(REPO)}},
      )
      client.execute()
    finally:
      for key, value in saved.items():
        if value is None:
          os.environ.pop(key, None)
        else:
          os.environ[key] = value
  return nb


def test_there_are_notebooks():
  names = {p.name for p in NOTEBOOKS}
  assert {'quickstart.ipynb', 'token_geometry.ipynb', 'new_tokens_finetune.ipynb'} <= names


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_small_size(path):
  nb = execute_notebook(path, 'small', timeout=300)
  errors = [
    out
    for cell in nb.cells
    if cell.cell_type == 'code'
    for out in cell.get('outputs', [])
    if out.get('output_type') == 'error'
  ]
  assert not errors


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_carries_full_run_outputs(path):
  import nbformat

  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == 'code']
  # Every code cell but the Colab install cell ran, in order, in one session.
  counts = [c.get('execution_count') for c in code[1:]]
  assert all(counts), f'{path.name}: some cells have no outputs; re-run it at full size'
  assert counts == sorted(counts)
  assert any('image/png' in out.get('data', {}) for c in code for out in c.get('outputs', [])), (
    f'{path.name} has no plot in its outputs'
  )
  text = ''.join(
    out.get('text', '') if isinstance(out.get('text', ''), str) else ''.join(out['text'])
    for c in code
    for out in c.get('outputs', [])
  )
  assert 'size=small' not in text, f'{path.name} carries outputs of a small run'


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description='Execute notebooks and save their outputs.')
  parser.add_argument('notebooks', nargs='+', type=Path)
  parser.add_argument('--size', default='full', choices=('small', 'full'))
  args = parser.parse_args(argv)
  import nbformat

  for path in args.notebooks:
    start = time.perf_counter()
    nb = execute_notebook(path, args.size, timeout=1800)
    nbformat.write(nb, path)
    print(f'{path}: executed at size={args.size} in {time.perf_counter() - start:.0f}s', flush=True)


if __name__ == '__main__':
  main()

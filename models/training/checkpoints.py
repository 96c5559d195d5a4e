"""Saving and resuming training runs with Orbax, so that long runs survive being stopped.

A comparison's checkpoint folder holds ``settings.json`` (what the runs depend on; resuming with
other settings is refused) and one folder per run, ``<setup>-seed<seed>/``, with Orbax's step
folders (the parameters, the optimizer state and the run's progress so far) and, once the run has
finished, ``result.json``. The same command that started the comparison resumes it: finished
runs are read back, an unfinished one continues from its last checkpoint and ends bitwise equal
to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from models.cli import ConfigError
from models.reporting import results

SETTINGS_FILE = 'settings.json'
RESULT_FILE = 'result.json'


def open_folder(directory: str | os.PathLike, settings: dict) -> Path:
  """Creates (or reopens) a comparison's checkpoint folder for runs with ``settings``.

  Raises:
    ConfigError: if the folder holds checkpoints of runs with other settings.
  """
  root = Path(directory).expanduser().resolve()
  root.mkdir(parents=True, exist_ok=True)
  path = root / SETTINGS_FILE
  settings = json.loads(results.dumps(settings))  # As it reads back: tuples become lists.
  if path.exists():
    saved = results.read_json(path)
    if saved != settings:
      differing = sorted(
        k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k)
      )
      raise ConfigError(
        f'--checkpoint-dir {directory} holds runs with other settings ({", ".join(differing)}); '
        'resume with the same settings, or use another folder'
      )
  else:
    results.write_json(path, settings)
  return root


def load_saved_runs(folder: str | os.PathLike) -> list[dict]:
  """Every finished run kept in ``folder`` (``RunCheckpoints(..., results=folder)``), in name
  order; none if the folder does not exist."""
  folder = Path(folder)
  if not folder.is_dir():
    return []
  paths = sorted(p for p in folder.glob('*.json') if p.name != SETTINGS_FILE)
  return [results.read_json(path) for path in paths]


class RunCheckpoints:
  """The checkpoints of one run (one setup and seed) of a comparison.

  Args:
    root: the comparison's folder, from :func:`open_folder`.
    name: the run's name, such as ``"ember-seed0"``.
    every: steps between checkpoints.
    results: a folder (from :func:`open_folder`) for the finished run's results, kept as
      ``<results>/<name>.json`` apart from the Orbax steps; default ``<root>/<name>/result.json``.
      The scaling benchmark commits this folder, so that a sweep resumes on another machine.
  """

  def __init__(self, root: Path, name: str, every: int, results: Path | None = None):
    self.directory = root / name
    self.every = every
    self.result_path = (
      self.directory / RESULT_FILE if results is None else Path(results) / f'{name}.json'
    )
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False
      ),
    )

  def finished_result(self) -> dict | None:
    """The run's results if it has finished, else ``None``."""
    path = self.result_path
    return results.read_json(path) if path.exists() else None

  def restore(self, like: Any) -> tuple[Any, dict] | None:
    """``(state, progress)`` of the last checkpoint, or ``None`` if there is none.

    Args:
      like: a pytree of the state's structure, shapes and dtypes (the freshly initialized one).
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
      ),
    )
    return restored.state, restored.progress

  def save(self, step: int, state: Any, progress: dict) -> None:
    """Saves ``state`` (arrays) and ``progress`` (JSON) as of ``step``, if it is a save step."""
    if step % self.every:
      return
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(results.strict(progress))
      ),
    )

  def finish(self, result: dict) -> None:
    """Records the run's results; the run is skipped when the comparison is resumed."""
    results.write_json(self.result_path, result, indent=None)
    self._manager.close()

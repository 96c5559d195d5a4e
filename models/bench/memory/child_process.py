"""Runs a function in a fresh Python process: keyword arguments in, result out, both as JSON.

A measurement that depends on how its process started (JAX's device count, fixed when JAX starts;
the allocator's settings; a resident set that holds nothing else) runs in a :class:`ChildProcess`
of its own, and :func:`run_children` runs several at a time. The function is named as
``"package.module:function"`` and must return something ``json.dumps`` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import importlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any


class ChildProcess:
  """A fresh Python process calling one function; its JSON result on stdout.

  Its stderr (progress lines) is echoed as it comes, so that a long run shows where it is; both
  pipes are drained by threads, so that a child never blocks on a full pipe.

  Args:
    function: ``"package.module:function"``.
    kwargs: the function's keyword arguments (JSON-serializable).
    env: variables set in the child's environment, over this process's.
    prefix: put before every line the child writes to stderr.
  """

  def __init__(
    self, function: str, kwargs: dict, env: dict[str, str] | None = None, prefix: str = ''
  ):
    self.function = function
    self.process = subprocess.Popen(
      [sys.executable, '-m', __name__],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env={**os.environ, **(env or {})},
    )
    self.process.stdin.write(json.dumps({'function': function, 'kwargs': kwargs}))
    self.process.stdin.close()
    self.last_error_line = 'see its traceback above'
    self.stdout: list[str] = []
    self.readers = [
      threading.Thread(target=self._echo, args=(prefix,), daemon=True),
      threading.Thread(target=lambda: self.stdout.append(self.process.stdout.read()), daemon=True),
    ]
    for reader in self.readers:
      reader.start()

  def _echo(self, prefix: str) -> None:
    for line in self.process.stderr:
      if re.match(r'^[\w.]+(Error|Exception)\b', line):
        self.last_error_line = line.strip()
      sys.stderr.write(prefix + line)

  def done(self) -> bool:
    return self.process.poll() is not None

  def result(self) -> Any:
    """Waits for the child; its function's result. Raises ``RuntimeError`` if it failed."""
    self.process.wait()
    for reader in self.readers:
      reader.join()
    if self.process.returncode:
      name = self.function.rpartition(':')[2]
      raise RuntimeError(f'{name} failed in its subprocess: {self.last_error_line}')
    return json.loads(''.join(self.stdout).strip().splitlines()[-1])


def run_children(starts: Sequence[Callable[[], ChildProcess]], jobs: int) -> list[Any]:
  """Runs the children that ``starts`` start, at most ``jobs`` at a time; their results in order."""
  results: list[Any] = [None] * len(starts)
  pending = list(enumerate(starts))
  running: list[tuple[int, ChildProcess]] = []
  while pending or running:
    while pending and len(running) < jobs:
      index, start = pending.pop(0)
      running.append((index, start()))
    done = [(index, child) for index, child in running if child.done()]
    for index, child in done:
      results[index] = child.result()
      running.remove((index, child))
    if not done:
      time.sleep(0.2)
  return results


def _main() -> None:
  """Entry point of a :class:`ChildProcess`: the request on stdin, the result on stdout."""
  request = json.loads(sys.stdin.read())
  module, _, name = request['function'].partition(':')
  function = getattr(importlib.import_module(module), name)
  print(json.dumps(function(**request['kwargs'])))


if __name__ == '__main__':
  _main()

"""Keeps files that an earlier build left in ``build/`` out of the wheel; all else is in pyproject.

setuptools stages a wheel in ``build/lib`` and ships everything it finds there,
so a file that an older build put there (the compiled kernel that earlier
versions built at install time, a module since deleted) would reach the install.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithoutStaleFiles(build_py):
  """``build_py`` that removes from its staging folder every file it did not write."""

  def run(self) -> None:
    super().run()
    if self.editable_mode:
      return
    written = {os.path.abspath(path) for path in self.get_outputs(include_bytecode=True)}
    for folder, _, names in os.walk(self.build_lib):
      for name in names:
        path = os.path.abspath(os.path.join(folder, name))
        if path not in written:
          os.remove(path)


setup(cmdclass={'build_py': BuildPyWithoutStaleFiles})

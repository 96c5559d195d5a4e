"""Builds Ember's CPU statistics kernel; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
  ext_modules=[
    Extension(
      # A plain shared library that ember_optax._src.cpu_kernel loads with
      # ctypes and registers with XLA; it is not a Python module.
      'ember_optax._src._squared_sums_cpu',
      sources=['ember_optax/_src/csrc/squared_sums.cc'],
      include_dirs=['ember_optax/_src/csrc/third_party'],
      language='c++',
      extra_compile_args=[
        '-std=c++17',
        '-O3',
        # No fused multiply-adds, so every build sums bit for bit alike.
        '-ffp-contract=off',
        '-fvisibility=hidden',
        '-Wno-psabi',  # 32-byte vectors between inline helpers, never across an ABI.
        '-Wno-return-type',  # These two in the vendored XLA headers.
        '-Wno-sign-compare',
      ],
      # Without a C++17 compiler the package still installs, and Ember
      # computes its statistics with XLA reductions instead.
      optional=True,
    )
  ],
)

"""Runs Ember steps in a fresh process and reports which statistics path it took.

Run by ``tests/test_cpu_kernel_build.py``, with the environment under test
(``EMBER_OPTAX_CACHE_DIR``, ``CXX``, ``PATH``, ``EMBER_OPTAX_CPU_KERNEL``)::

  python tests/kernel_probe.py OUT_DIR [--include-dir DIR]

writes ``OUT_DIR/probe.json`` (the kernel's status, every warning ember_optax
gave, whether the compiled steps call the kernel) and ``OUT_DIR/steps.npz``.
``--include-dir`` makes ``jax.ffi.include_dir()`` return another folder of FFI
headers.
"""

import argparse
import json
import pathlib
import warnings

import numpy as np


def run_steps() -> tuple[dict[str, np.ndarray], bool]:
  """Two Ember steps on a float32 table and on stacked bfloat16 tables.

  Returns:
    The parameters and statistics after the steps, by name, as float32 arrays,
    and whether every compiled step calls the kernel.
  """
  import jax
  import jax.numpy as jnp
  import optax

  import ember_optax

  results, calls_kernel = {}, []
  for name, shape, dtype in (('f32', (600, 48), jnp.float32), ('bf16', (3, 200, 40), jnp.bfloat16)):
    params = jax.random.normal(jax.random.PRNGKey(0), shape, dtype)
    optimizer = ember_optax.ember(1e-2)
    state = optimizer.init(params)

    def step(params, state, grads, optimizer=optimizer):
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    step = jax.jit(step)
    calls_kernel.append('ember_squared_sums' in step.lower(params, state, params).as_text())
    for i in range(2):
      grads = (jax.random.normal(jax.random.PRNGKey(i + 1), shape) * (i + 1)).astype(dtype)
      params, state = step(params, state, grads)
    arrays = {'params': params, 'row': state[0].row, 'col': state[0].col, 'scale': state[0].scale}
    results.update({f'{name}/{k}': np.asarray(v, np.float32) for k, v in arrays.items()})
  return results, all(calls_kernel)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('out', type=pathlib.Path, help='folder for probe.json and steps.npz')
  parser.add_argument('--include-dir', help="FFI headers to build against (default: jaxlib's)")
  args = parser.parse_args()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import jax

    if args.include_dir:
      jax.ffi.include_dir = lambda: args.include_dir
    import ember_optax

    results, calls_kernel = run_steps()
    status = ember_optax.cpu_kernel_status()
  args.out.mkdir(parents=True, exist_ok=True)
  np.savez(args.out / 'steps.npz', **results)
  report = {
    'status': status._asdict(),
    'warnings': [str(w.message) for w in caught if 'ember_optax' in str(w.message)],
    'calls_kernel': calls_kernel,
  }
  (args.out / 'probe.json').write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
  main()

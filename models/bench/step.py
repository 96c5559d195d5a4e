"""Times one optimizer step on a token table: Ember against AdamW, Adafactor, row-wise and SGD.

Each optimizer runs the same jitted, donated step (``update`` then
``optax.apply_updates``) on the same table and gradient; the steps are
interleaved round by round so that a noisy machine slows them alike, and the
ratios are taken within each shape. Plain SGD reads the gradient and the table
and writes the table once: it is the memory-bandwidth yardstick. Ember's
statistics read the gradient twice on a CPU (XLA fuses no row and column
reduction into one pass) and its update once more: 5/3 of SGD; fused AdamW's
7/3. The single-table transforms are the table optimizers of
``models.optim.registry``; the whole-train-step comparison builds the main
job's ``adamw`` and ``ember`` setups with the GPT's own table labels, so it is
measured on the main job's routing.

Run::

  python -m models.bench.step                       # the default grid
  python -m models.bench.step --shapes 32768x512 --dtypes float32 --out /tmp/bench
"""

import argparse
from collections.abc import Sequence
import dataclasses
from pathlib import Path
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ember_optax.diagnostics import tree_bytes
from models import cli
from models.cli import option
from models.nets import gpt
from models.optim import registry
from models.reporting import results as results_lib
from models.reporting.tables import markdown_table
from models.training import step as step_lib
from models.training.presets import PRESETS

PROG = 'python -m models.bench.step'
DEFAULT_SHAPES = ('32768x512', '50304x768', '131072x1024')
DEFAULT_DTYPES = ('float32', 'bfloat16')
DTYPES = ('float32', 'bfloat16', 'float16')
LEARNING_RATE = 1e-3
# The registry's timed table optimizers, Ember first: every ratio is Ember's over another's.
TABLE_OPTIMIZERS = ('ember', *(n for n in registry.default_setups('step') if n != 'ember'))

# Table-sized memory accesses per step of each optimizer when fully fused; SGD reads the gradient
# and the table and writes the table.
TABLE_ACCESSES = {
  **{name: registry.TABLE_OPTIMIZERS[name].table_accesses for name in TABLE_OPTIMIZERS},
  'sgd': 3,
}
RATIOS = tuple(f'ember/{name}' for name in (*TABLE_OPTIMIZERS[1:], 'sgd'))

# HBM bandwidth (bytes/s) of accelerators we report against.
PEAK_BANDWIDTH = {
  'NVIDIA H100 80GB HBM3': 3.35e12,
  'NVIDIA H100': 3.35e12,
  'NVIDIA H200': 4.8e12,
  'NVIDIA A100-SXM4-80GB': 2.04e12,
  'NVIDIA A100-SXM4-40GB': 1.56e12,
  'TPU v4': 1.2e12,
  'TPU v5e': 8.2e11,
  'TPU v5p': 2.76e12,
}


def _shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(n) for n in text.lower().split('x'))
  except ValueError:
    shape = ()
  if len(shape) < 2 or min(shape) < 1:
    raise argparse.ArgumentTypeError(
      f'{text!r} is not a table shape: give positive sizes joined by x, such as 32768x512 '
      '(leading sizes stack tables: 4x16384x256)'
    )
  return shape


def _positive(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f'{text!r} is not a positive whole number')
  return int(text)


@dataclasses.dataclass(frozen=True)
class StepBenchConfig:
  """The step benchmark's settings."""

  shapes: tuple[tuple[int, ...], ...] = option(
    tuple(_shape(s) for s in DEFAULT_SHAPES),
    'table shapes VxD (leading sizes stack tables)',
    type=_shape,
    metavar='VxD',
  )
  dtypes: tuple[str, ...] = option(DEFAULT_DTYPES, 'table and gradient dtypes', choices=DTYPES)
  rounds: int = option(10, 'timed steps per optimizer, after two untimed ones', type=_positive)
  train_preset: str = option(
    'small',
    "GPT preset for the whole-train-step comparison ('' to skip it)",
    choices=(*PRESETS, ''),
  )
  out: str | None = option(None, 'folder to write bench_step.json into (default: not written)')


def optimizers(shape: tuple[int, ...]) -> dict[str, optax.GradientTransformation]:
  """The table optimizers of the main job's setups, and plain SGD, for a table of ``shape``."""
  hyper = registry.Hyperparameters()
  vocab_size = shape[-2]
  table = {
    name: registry.table_optimizer(name, LEARNING_RATE, hyper, vocab_size)
    for name in TABLE_OPTIMIZERS
  }
  return {**table, 'sgd': optax.sgd(LEARNING_RATE)}


@dataclasses.dataclass
class Measurement:
  optimizer: str
  median_ms: float
  state_bytes: int
  temp_bytes: int


def compile_step(optimizer: optax.GradientTransformation, params, grads) -> Any:
  """The jitted, donated step ``(params, state, grads) -> (params, state)``, compiled now."""

  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = jax.eval_shape(optimizer.init, params)
  return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()


def bench_table(shape: tuple[int, ...], dtype: str, rounds: int) -> list[Measurement]:
  """Median step times of each optimizer on one table, the optimizers interleaved."""
  key_params, key_grads = jax.random.split(jax.random.PRNGKey(0))
  params = (0.02 * jax.random.normal(key_params, shape)).astype(dtype)
  grads = jax.random.normal(key_grads, shape).astype(dtype)
  runs = {}
  for name, optimizer in optimizers(shape).items():
    step = compile_step(optimizer, params, grads)
    state = optimizer.init(params)
    runs[name] = {
      'step': step,
      'carry': (params.copy(), state),
      'state_bytes': tree_bytes(state),
      'temp_bytes': int(step.memory_analysis().temp_size_in_bytes),
      'times': [],
    }
  for round_index in range(rounds + 2):  # Two warm-up rounds, not recorded.
    for run in runs.values():
      start = time.perf_counter()
      run['carry'] = jax.block_until_ready(run['step'](*run['carry'], grads))
      if round_index >= 2:
        run['times'].append(time.perf_counter() - start)
  measurements = [
    Measurement(name, 1e3 * float(np.median(run['times'])), run['state_bytes'], run['temp_bytes'])
    for name, run in runs.items()
  ]
  for run in runs.values():
    run['carry'] = None
  return measurements


def bench_train_step(preset: str, rounds: int) -> dict[str, float]:
  """Median ms of a whole GPT train step under the main job's ``adamw`` and ``ember`` setups."""
  from flax import nnx  # Only this part of the benchmark needs Flax.

  settings = PRESETS[preset]
  config = dataclasses.replace(settings.model, vocab_size=settings.vocab_size)
  tokens = jax.random.randint(
    jax.random.PRNGKey(0), (settings.batch_size, settings.seq_len + 1), 0, config.vocab_size
  )
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  runs = {}
  for name in ('adamw', 'ember'):
    graphdef, params = nnx.split(gpt.GPT(config, rngs=nnx.Rngs(0)), nnx.Param)
    labels = gpt.table_labels(params, config)
    tx = registry.make_optimizer(registry.Setup(name), labels, learning_rate=LEARNING_RATE)
    step = jax.jit(step_lib.train_step(graphdef, tx), donate_argnums=(0, 1))
    runs[name] = {'step': step, 'carry': (params, tx.init(params)), 'times': []}
  for round_index in range(rounds + 2):
    for run in runs.values():
      start = time.perf_counter()
      params, opt_state, loss = run['step'](*run['carry'], inputs, targets)
      jax.block_until_ready(loss)
      run['carry'] = (params, opt_state)
      if round_index >= 2:
        run['times'].append(time.perf_counter() - start)
  return {name: 1e3 * float(np.median(run['times'])) for name, run in runs.items()}


def device_description() -> str:
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return f'CPU: {platform.processor() or platform.machine()}, {jax.local_device_count()} device'
  return f'{device.platform.upper()}: {device.device_kind}'


def summary_table(tables: Sequence[dict]) -> str:
  """The README's Performance table: milliseconds, ratios and scratch memory per table."""
  names = [m['optimizer'] for m in tables[0]['measurements']] if tables else []
  ratios = [r for r in RATIOS if tables and r in tables[0]['ratios']]
  temps = [n for n in ('ember',) if n in names]
  header = (
    ['table', 'dtype'] + [f'{n} ms' for n in names] + ratios + [f'{n} temp / table' for n in temps]
  )
  rows = []
  for entry in tables:
    by_name = {m['optimizer']: m for m in entry['measurements']}
    rows.append(
      ['×'.join(map(str, entry['shape'])), entry['dtype']]
      + [f'{by_name[n]["median_ms"]:.1f}' for n in names]
      + [f'{entry["ratios"][r]:.2f}' for r in ratios]
      + [f'{by_name[n]["temp_bytes"] / entry["table_bytes"]:.3f}' for n in temps]
    )
  return markdown_table(header, rows)


def run(args: StepBenchConfig) -> dict:
  """Runs the benchmark; returns (and, with ``args.out``, writes) its results."""
  if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
    raise cli.ConfigError(f'--out {args.out!r} is a file, not a folder')
  peak = PEAK_BANDWIDTH.get(jax.devices()[0].device_kind)
  results = {
    'device': device_description(),
    'jax': jax.__version__,
    'environment': results_lib.environment(),
    'tables': [],
  }
  print(f'{results["device"]}, jax {jax.__version__}')
  header = (
    f'{"table":>12} {"dtype":>8} {"optimizer":>9} {"median ms":>9} {"state MB":>9} '
    f'{"temp MB":>8} {"temp/table":>10} {"GB/s":>6}'
  )
  print(header)
  for shape in args.shapes:
    shape_text = 'x'.join(map(str, shape))
    for dtype in args.dtypes:
      table_bytes = int(np.prod(shape)) * jnp.dtype(dtype).itemsize
      measurements = bench_table(shape, dtype, args.rounds)
      by_name = {m.optimizer: m for m in measurements}
      for m in measurements:
        bandwidth = TABLE_ACCESSES[m.optimizer] * table_bytes / (m.median_ms * 1e-3)
        print(
          f'{shape_text:>12} {dtype:>8} {m.optimizer:>9} {m.median_ms:9.2f} '
          f'{m.state_bytes / 2**20:9.2f} {m.temp_bytes / 2**20:8.2f} '
          f'{m.temp_bytes / table_bytes:10.3f} {bandwidth / 1e9:6.1f}'
        )
      ratios = {}
      for ratio in RATIOS:
        numerator, denominator = ratio.split('/')
        if numerator in by_name:
          ratios[ratio] = by_name[numerator].median_ms / by_name[denominator].median_ms
      ember_ms = by_name['ember'].median_ms
      entry = {
        'shape': list(shape),
        'dtype': dtype,
        'table_bytes': table_bytes,
        'measurements': [dataclasses.asdict(m) for m in measurements],
        'ratios': ratios,
        'ember_bandwidth_bytes_per_s': TABLE_ACCESSES['ember'] * table_bytes / (ember_ms * 1e-3),
      }
      if peak:
        entry['ember_bandwidth_fraction_of_peak'] = entry['ember_bandwidth_bytes_per_s'] / peak
      results['tables'].append(entry)
      print(
        ' ' * 22
        + '  '.join(f'{k} {v:.2f}' for k, v in ratios.items())
        + (
          f'  ember at {entry["ember_bandwidth_fraction_of_peak"]:.0%} of peak HBM' if peak else ''
        )
      )
  print()
  print(summary_table(results['tables']))
  if args.train_preset:
    train = bench_train_step(args.train_preset, args.rounds)
    results['train_step'] = {
      'preset': args.train_preset,
      'median_ms': train,
      'ratio': train['ember'] / train['adamw'],
    }
    print(
      f'\nwhole GPT train step ({args.train_preset}): adamw {train["adamw"]:.1f} ms, '
      f'ember {train["ember"]:.1f} ms, ratio {results["train_step"]["ratio"]:.2f}'
    )
  if args.out:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results_lib.write_json(Path(args.out) / 'bench_step.json', results)
  return results


def build_parser() -> cli.Parser:
  return cli.parser_for(
    StepBenchConfig,
    PROG,
    __doc__.splitlines()[0],
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run(cli.from_args(args, StepBenchConfig)))


if __name__ == '__main__':
  main()

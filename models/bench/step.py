"""Times one optimizer step on a token table: Ember against AdamW, Adafactor and SGD.

Each optimizer runs the same jitted, donated step (``update`` then
``optax.apply_updates``) on the same table and gradient; the steps are
interleaved round by round so that a noisy machine slows them alike, and the
ratios are taken within each shape. Plain SGD reads the gradient and the table
and writes the table once: it is the memory-bandwidth yardstick. Ember's floor
is one more read of the gradient (4/3 of SGD), fused AdamW's 7/3.

On a CPU where Ember's compiled kernel is in use, ``ember_xla`` is Ember with
the kernel turned off (``ember_optax.use_cpu_kernel(False)``): the path of every
install without a C++ compiler, whose statistics read the gradient twice.

Run::

  python -m models.bench_step                       # the default grid
  python -m models.bench_step --shapes 32768x512 --dtypes float32 --out /tmp/bench
"""

import argparse
from collections.abc import Sequence
import dataclasses
import json
import pathlib
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ember_optax
from ember_optax.diagnostics import tree_bytes
from models.nets import gpt
from models.training.presets import PRESETS
from models.reporting.tables import markdown_table

DEFAULT_SHAPES = ('32768x512', '50304x768', '131072x1024')
DEFAULT_DTYPES = ('float32', 'bfloat16')
DTYPES = ('float32', 'bfloat16', 'float16')
LEARNING_RATE = 1e-3

# Table-sized memory accesses per step of each optimizer when fully fused. Without
# the kernel, Ember's row and column sums each read the gradient.
TABLE_ACCESSES = {'ember': 4, 'ember_xla': 5, 'adamw': 7, 'adafactor': 4, 'sgd': 3}
RATIOS = ('ember/adamw', 'ember/adafactor', 'ember/sgd', 'ember_xla/adamw', 'ember_xla/sgd')

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


def optimizers() -> dict[str, optax.GradientTransformation]:
  return {
    'ember': ember_optax.ember(LEARNING_RATE),
    'adamw': optax.adamw(LEARNING_RATE),
    'adafactor': optax.adafactor(LEARNING_RATE),
    'sgd': optax.sgd(LEARNING_RATE),
  }


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


def compile_kernel_off(optimizer: optax.GradientTransformation, params, grads) -> Any:
  """:func:`compile_step` with Ember's CPU kernel turned off, for this step only."""
  ember_optax.use_cpu_kernel(False)
  try:
    return compile_step(optimizer, params, grads)
  finally:
    ember_optax.use_cpu_kernel(None)


def bench_table(
  shape: tuple[int, ...], dtype: str, rounds: int, kernel_off: bool
) -> list[Measurement]:
  """Median step times of each optimizer (and of Ember without its kernel if ``kernel_off``)."""
  key_params, key_grads = jax.random.split(jax.random.PRNGKey(0))
  params = (0.02 * jax.random.normal(key_params, shape)).astype(dtype)
  grads = jax.random.normal(key_grads, shape).astype(dtype)
  setups = {name: (optimizer, compile_step) for name, optimizer in optimizers().items()}
  if kernel_off:
    setups = {
      'ember': setups.pop('ember'),
      'ember_xla': (ember_optax.ember(LEARNING_RATE), compile_kernel_off),
      **setups,
    }
  runs = {}
  for name, (optimizer, compile_fn) in setups.items():
    step = compile_fn(optimizer, params, grads)
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
  """Median ms of a whole GPT train step under optax.adamw and under ember_adamw."""
  from flax import nnx  # Only this part of the benchmark needs Flax.

  settings = PRESETS[preset]
  config = dataclasses.replace(settings.model, vocab_size=settings.vocab_size)
  tokens = jax.random.randint(
    jax.random.PRNGKey(0), (settings.batch_size, settings.seq_len + 1), 0, config.vocab_size
  )

  def loss_fn(model, tokens):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @nnx.jit(donate_argnums=(0, 1))
  def train_step(model, optimizer, tokens):
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens)
    optimizer.update(model, grads)
    return loss

  setups = {
    'adamw': optax.adamw(LEARNING_RATE),
    'ember_adamw': ember_optax.ember_adamw(LEARNING_RATE, vocab_size=config.vocab_size),
  }
  runs = {}
  for name, tx in setups.items():
    model = gpt.GPT(config, rngs=nnx.Rngs(0))
    runs[name] = (model, nnx.Optimizer(model, tx, wrt=nnx.Param), [])
  for round_index in range(rounds + 2):
    for model, optimizer, times in runs.values():
      start = time.perf_counter()
      jax.block_until_ready(train_step(model, optimizer, tokens))
      if round_index >= 2:
        times.append(time.perf_counter() - start)
  return {name: 1e3 * float(np.median(times)) for name, (_, _, times) in runs.items()}


def device_description() -> str:
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return f'CPU: {platform.processor() or platform.machine()}, {jax.local_device_count()} device'
  return f'{device.platform.upper()}: {device.device_kind}'


def summary_table(tables: Sequence[dict]) -> str:
  """The README's Performance table: milliseconds, ratios and scratch memory per table."""
  names = [m['optimizer'] for m in tables[0]['measurements']] if tables else []
  ratios = [r for r in RATIOS if tables and r in tables[0]['ratios']]
  temps = [n for n in ('ember', 'ember_xla') if n in names]
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


class _Parser(argparse.ArgumentParser):
  """Reports bad input as one line on stderr, without the usage text."""

  def error(self, message: str):
    self.exit(2, f'{self.prog}: error: {message}\n')


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = _Parser(
    prog='python -m models.bench_step',
    description=__doc__.splitlines()[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument(
    '--shapes',
    nargs='+',
    type=_shape,
    default=list(DEFAULT_SHAPES),
    metavar='VxD',
    help='table shapes (leading sizes stack tables)',
  )
  parser.add_argument(
    '--dtypes',
    nargs='+',
    choices=DTYPES,
    default=list(DEFAULT_DTYPES),
    help='table and gradient dtypes',
  )
  parser.add_argument(
    '--rounds', type=_positive, default=10, help='timed steps per optimizer, after two untimed ones'
  )
  parser.add_argument(
    '--train-preset',
    choices=[*PRESETS, ''],
    default='small',
    help="GPT preset for the whole-train-step comparison ('' to skip it)",
  )
  parser.add_argument(
    '--out',
    type=pathlib.Path,
    default=None,
    help='folder to write bench_step.json into; none: not written',
  )
  args = parser.parse_args(argv)
  # Defaults are strings, which argparse does not convert.
  args.shapes = [_shape(s) if isinstance(s, str) else s for s in args.shapes]
  if args.out is not None and args.out.exists() and not args.out.is_dir():
    parser.error(f'argument --out: {str(args.out)!r} is a file, not a folder')
  return args


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)

  peak = PEAK_BANDWIDTH.get(jax.devices()[0].device_kind)
  kernel = ember_optax.cpu_kernel_status()
  # Ember without its kernel is a row of its own only where the kernel is in use.
  kernel_off = kernel.available and jax.default_backend() == 'cpu' and jax.device_count() == 1
  results = {
    'device': device_description(),
    'jax': jax.__version__,
    'cpu_kernel': kernel._asdict(),
    'tables': [],
  }
  print(f'{results["device"]}, jax {jax.__version__}')
  print(f'CPU kernel: {kernel.reason}')
  header = (
    f'{"table":>12} {"dtype":>8} {"optimizer":>9} {"median ms":>9} {"state MB":>9} '
    f'{"temp MB":>8} {"temp/table":>10} {"GB/s":>6}'
  )
  print(header)
  for shape in args.shapes:
    shape_text = 'x'.join(map(str, shape))
    for dtype in args.dtypes:
      table_bytes = int(np.prod(shape)) * jnp.dtype(dtype).itemsize
      measurements = bench_table(shape, dtype, args.rounds, kernel_off)
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
      'ratio': train['ember_adamw'] / train['adamw'],
    }
    print(
      f'\nwhole GPT train step ({args.train_preset}): adamw {train["adamw"]:.1f} ms, '
      f'ember_adamw {train["ember_adamw"]:.1f} ms, '
      f'ratio {results["train_step"]["ratio"]:.2f}'
    )
  if args.out:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'bench_step.json').write_text(json.dumps(results, indent=1))
  return results


if __name__ == '__main__':
  main()

"""Times a table's update against its number of rows: sparse Ember, dense Ember, AdamW, row-wise.

Each optimizer takes the same batch's row gradients (a batch of ``8 x 128`` token ids, Zipf
distributed, hashed over the table's ``M`` rows as an n-gram table hashes them) and updates a
``(M, D)`` table in one jitted step with the table and the state donated:

* ``sparse_ember`` and ``sparse_rowwise`` (``models.optim.rowwise``, row-wise RMSprop with lazy
  decay) take the row gradients and update the touched rows;
* ``ember`` and ``adamw`` (``optax.adamw``) take the dense gradient JAX builds for ``table[ids]``:
  the row gradients scattered into a ``(M, D)`` zero table, inside the timed step.

Peak memory is the compiled step's: its arguments (table, state, the batch's row gradients), its
scratch, and its outputs that do not reuse a donated buffer. A dense setup is skipped where that
peak would not fit in the memory this machine has free (the line says how much it would need).
The optimizers run one after another at each size (the dense ones could not share the memory),
each for ``--rounds`` timed steps and ``--min-seconds`` at least; the times are medians
and the ratios are taken within one size.

Run::

  python -m models.bench.sparse                         # 2^16 .. 2^24 rows, D = 64
  python -m models.bench.sparse --log-rows 10 12 --rounds 2 --out /tmp/sparse
"""

from collections.abc import Callable, Sequence
import dataclasses
import functools
from pathlib import Path
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models import cli
from models.bench.memory.step_memory import StepMemory
from models.cli import option
from models.optim import registry
from models.reporting import results as results_lib
from models.reporting.tables import markdown_table
from models.training import step as step_lib

PROG = 'python -m models.bench.sparse'
LEARNING_RATE = 1e-3
# The registry's sparse forms, then the dense yardsticks: Ember's own dense step and AdamW.
SPARSE = {f'sparse_{name}': name for name in registry.sparse_tables()}
DENSE = ('ember', 'adamw')
OPTIMIZERS = (*SPARSE, *DENSE)
# Share of the free memory a step may plan to use: the process and its copies need the rest.
MEMORY_HEADROOM = 0.85
# Fast steps run for --min-seconds (up to MAX_STEPS), cycling through DISTINCT_BATCHES batches.
MAX_STEPS, DISTINCT_BATCHES = 2000, 32
# Knuth's multiplicative hash: odd, so ranks map to distinct rows of a power-of-two table.
HASH_MULTIPLIER = 2654435761


@dataclasses.dataclass(frozen=True)
class SparseBenchConfig:
  """The sparse-table benchmark's settings."""

  log_rows: tuple[int, ...] = option(
    (16, 18, 20, 22, 24), 'table sizes, as log2 of the number of rows', type=int, metavar='K'
  )
  width: int = option(64, 'row width D', type=int)
  batch: int = option(8, 'sequences per batch', type=int)
  seq_len: int = option(128, 'tokens per sequence', type=int)
  zipf: float = option(1.1, "exponent of the ids' Zipf distribution", type=float)
  rounds: int = option(
    20, 'timed steps per optimizer and size at least, after two untimed ones', type=int
  )
  min_seconds: float = option(
    2.0, 'timed seconds per optimizer and size at least (fast steps run more rounds)', type=float
  )
  optimizers: tuple[str, ...] = option(OPTIMIZERS, 'optimizers to compare', choices=OPTIMIZERS)
  out: str | None = option(
    'models/results/bench_sparse', "folder for bench_sparse.json and .md ('' for none)"
  )


def check(config: SparseBenchConfig) -> None:
  """Raises ``cli.ConfigError`` naming the first setting that cannot run."""
  for name in ('width', 'batch', 'seq_len', 'rounds'):
    if getattr(config, name) < 1:
      raise cli.ConfigError(f'{cli.flag(name)} {getattr(config, name)} must be at least 1')
  if not config.log_rows or not all(1 <= k <= 31 for k in config.log_rows):
    raise cli.ConfigError(f'--log-rows {config.log_rows} must be sizes from 1 to 31')
  if not config.min_seconds >= 0:
    raise cli.ConfigError(f'--min-seconds {config.min_seconds} must be at least 0')
  if not config.zipf > 1:
    raise cli.ConfigError(f'--zipf {config.zipf} must be above 1 (a Zipf exponent)')
  if not config.optimizers:
    raise cli.ConfigError('--optimizers names none')
  if config.out and Path(config.out).exists() and not Path(config.out).is_dir():
    raise cli.ConfigError(f'--out {config.out!r} is a file, not a folder')


def batches(config: SparseBenchConfig, rows: int, count: int) -> list[jax.Array]:
  """``count`` batches of ids: Zipf ranks, hashed over the table's rows."""
  rng = np.random.default_rng(0)
  shape = (count, config.batch, config.seq_len)
  ranks = np.minimum(rng.zipf(config.zipf, size=shape), 2**31 - 1).astype(np.uint64)
  ids = (ranks * HASH_MULTIPLIER) % rows
  return [jnp.asarray(batch, jnp.int32) for batch in ids]


def optimizer_step(name: str) -> tuple[Callable[..., Any], Callable[[Any], Any]]:
  """``(step, init)`` of optimizer ``name``: ``step(table, state, ids, row_grads)``.

  The sparse optimizers update the touched rows; the dense ones take the gradient JAX builds for
  ``table[ids]`` (``models.training.step.update_table``), inside the timed step.
  """
  if name in SPARSE:
    optimizer = registry.sparse_table_optimizer(SPARSE[name], LEARNING_RATE)
  else:
    optimizer = registry.table_optimizer(name, LEARNING_RATE, registry.Hyperparameters())
  return functools.partial(step_lib.update_table, optimizer), optimizer.init


def free_memory_bytes() -> int | None:
  """MemAvailable of /proc/meminfo, or None where there is none."""
  try:
    for line in Path('/proc/meminfo').read_text().splitlines():
      if line.startswith('MemAvailable:'):
        return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def bench_one(config: SparseBenchConfig, name: str, rows: int) -> dict:
  """One optimizer at one table size: compiled peak memory and median step time."""
  step, init = optimizer_step(name)
  table_spec = jax.ShapeDtypeStruct((rows, config.width), jnp.float32)
  ids_spec = jax.ShapeDtypeStruct((config.batch, config.seq_len), jnp.int32)
  grads_spec = jax.ShapeDtypeStruct((config.batch, config.seq_len, config.width), jnp.float32)
  state_spec = jax.eval_shape(init, table_spec)
  jitted = jax.jit(step, donate_argnums=(0, 1))
  compiled = jitted.lower(table_spec, state_spec, ids_spec, grads_spec).compile()
  peak = StepMemory.of(compiled).total
  result = {'optimizer': name, 'rows': rows, 'peak_bytes': peak}
  free = free_memory_bytes()
  if free is not None and peak > MEMORY_HEADROOM * free:
    result['skipped'] = (
      f'needs {peak / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free: does not fit this machine'
    )
    return result
  id_batches = batches(config, rows, DISTINCT_BATCHES)
  row_grads = jax.random.normal(jax.random.PRNGKey(1), grads_spec.shape, jnp.float32)
  table = jnp.zeros(table_spec.shape, jnp.float32)
  state = jax.jit(init)(table)
  times: list[float] = []
  index = 0
  # Fast steps run for min_seconds at least, so that their median is not a few noisy samples.
  enough_time = lambda: sum(times) >= config.min_seconds or len(times) >= MAX_STEPS  # noqa: E731
  while len(times) < config.rounds or not enough_time():
    start = time.perf_counter()
    ids = id_batches[index % len(id_batches)]
    table, state = jax.block_until_ready(compiled(table, state, ids, row_grads))
    if index >= 2:  # Two untimed steps first.
      times.append(time.perf_counter() - start)
    index += 1
  touched = [len(np.unique(np.asarray(ids))) for ids in id_batches]
  del table, state
  result.update(
    median_ms=1e3 * float(np.median(times)),
    steps=len(times),
    touched_rows=float(np.mean(touched)),
  )
  return result


def ratios(measurements: Sequence[dict]) -> dict[str, dict[str, float]]:
  """Per size: each optimizer's time and peak memory over sparse Ember's."""
  by_size: dict[int, dict[str, dict]] = {}
  for m in measurements:
    by_size.setdefault(m['rows'], {})[m['optimizer']] = m
  out = {}
  for rows, found in sorted(by_size.items()):
    base = found.get('sparse_ember')
    if base is None or 'median_ms' not in base:
      continue
    entry = {}
    for name, m in found.items():
      if name != 'sparse_ember' and 'median_ms' in m:
        entry[f'{name}/sparse_ember time'] = m['median_ms'] / base['median_ms']
        entry[f'{name}/sparse_ember peak memory'] = m['peak_bytes'] / base['peak_bytes']
    out[str(rows)] = entry
  return out


def targets(measurements: Sequence[dict]) -> dict[str, Any]:
  """The issue's three targets, as measured: flatness, speed-up and memory at 2^22 rows."""
  sparse = {m['rows']: m['median_ms'] for m in measurements if m['optimizer'] == 'sparse_ember'}
  found: dict[str, Any] = {}
  if len(sparse) >= 2:
    found['sparse_ember slowest/fastest over sizes'] = max(sparse.values()) / min(sparse.values())
  adamw = {m['rows']: m for m in measurements if m['optimizer'] == 'adamw' and 'median_ms' in m}
  sparse_peaks = {
    m['rows']: m['peak_bytes'] for m in measurements if m['optimizer'] == 'sparse_ember'
  }
  rows = 1 << 22
  if rows in adamw and rows in sparse:
    found['adamw/sparse_ember time at 2^22 rows'] = adamw[rows]['median_ms'] / sparse[rows]
    found['adamw/sparse_ember peak memory at 2^22 rows'] = (
      adamw[rows]['peak_bytes'] / sparse_peaks[rows]
    )
  return found


def report(results: dict) -> str:
  """The Markdown table of results: one line per size, times, memory and ratios."""
  names = results['config']['optimizers']
  by_size: dict[int, dict[str, dict]] = {}
  for m in results['measurements']:
    by_size.setdefault(m['rows'], {})[m['optimizer']] = m
  header = ['rows', 'touched'] + [f'{n} ms' for n in names] + [f'{n} peak' for n in names]
  rows = []
  for size, found in sorted(by_size.items()):
    touched = next((m['touched_rows'] for m in found.values() if 'touched_rows' in m), None)
    times = [
      f'{found[n]["median_ms"]:.2f}' if 'median_ms' in found.get(n, {}) else 'does not fit'
      for n in names
    ]
    peaks = [f'{found[n]["peak_bytes"] / 2**20:,.0f} MiB' if n in found else '' for n in names]
    rows.append([f'2^{size.bit_length() - 1}', f'{touched:.0f}' if touched else ''] + times + peaks)
  lines = [markdown_table(header, rows), '']
  for name, value in results['targets'].items():
    lines.append(f'- {name}: {value:.2f}')
  return '\n'.join(lines) + '\n'


def run(config: SparseBenchConfig) -> dict:
  """Runs the benchmark; returns (and, with ``config.out``, writes) its results."""
  check(config)
  environment = results_lib.environment()
  print(f'{environment["cpu_model"]}, {environment["cpu_count"]} cores, jax {jax.__version__}')
  print(f'{"rows":>10} {"optimizer":>15} {"median ms":>10} {"peak MiB":>10}  touched')
  measurements = []
  for log_rows in config.log_rows:
    for name in config.optimizers:
      m = bench_one(config, name, 1 << log_rows)
      measurements.append(m)
      timing = f'{m["median_ms"]:10.3f}' if 'median_ms' in m else f'{"-":>10}'
      detail = f'{m["touched_rows"]:.0f}' if 'touched_rows' in m else m['skipped']
      print(
        f'{"2^" + str(log_rows):>10} {name:>15} {timing} {m["peak_bytes"] / 2**20:10.1f}  {detail}',
        flush=True,
      )
  results = {
    'config': dataclasses.asdict(config),
    'environment': environment,
    'measurements': measurements,
    'ratios': ratios(measurements),
    'targets': targets(measurements),
  }
  text = report(results)
  print()
  print(text)
  if config.out:
    results_lib.write_report(config.out, 'bench_sparse', results, text)
  return results


def build_parser() -> cli.Parser:
  return cli.parser_for(SparseBenchConfig, PROG, __doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run(cli.from_args(args, SparseBenchConfig)))


if __name__ == '__main__':
  main()
